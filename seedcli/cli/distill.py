"""`seed distill` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="distill", help="(not implemented yet)")
def distill() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed distill is not implemented yet.")
