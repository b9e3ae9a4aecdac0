"""`seed quickstart` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="quickstart", help="(not implemented yet)")
def quickstart() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed quickstart is not implemented yet.")
