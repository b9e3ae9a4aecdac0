"""`seed evaluate` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="evaluate", help="(not implemented yet)")
def evaluate() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed evaluate is not implemented yet.")
