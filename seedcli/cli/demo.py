"""`seed demo` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="demo", help="(not implemented yet)")
def demo() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed demo is not implemented yet.")
