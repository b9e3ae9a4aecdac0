"""`seed prepare` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="prepare", help="(not implemented yet)")
def prepare() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed prepare is not implemented yet.")
