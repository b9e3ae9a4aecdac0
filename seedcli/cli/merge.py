"""`seed merge` (placeholder until its issue lands)."""

from __future__ import annotations

from seedcli.cli.app import app
from seedcli.errors import NotImplementedYet


@app.command(name="merge", help="(not implemented yet)")
def merge() -> None:
    """Placeholder."""
    raise NotImplementedYet("seed merge is not implemented yet.")
