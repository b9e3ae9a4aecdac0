"""`seed prepare`: LLaVA-Instruct, POPE and CHAIR (or the synthetic world) -> a data directory."""

from __future__ import annotations

import json
import sys

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.prepare import PrepareConfig

HELP = (
    "Convert LLaVA-Instruct conversations and build the POPE and CHAIR sets into a data directory "
    "(--synthetic: an offline world instead). Missing inputs are fetched into --data-root. "
    "Prints the directory path as the last line."
)


def _confirm(question: str) -> bool:
    """Ask on the terminal (the prompt goes to stderr: stdout carries results)."""
    import typer

    return typer.confirm(question, default=False, err=True)


@config_command(app, PrepareConfig, name="prepare", help=HELP, extra=(json_option(),))
def prepare(cfg: PrepareConfig, as_json: bool) -> None:
    """Run the preparation and print its summary."""
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.data.prepare import prepare as run_prepare

    confirm = _confirm if sys.stdin.isatty() and not as_json else None
    summary = run_prepare(cfg, make_reporter(as_json), confirm=confirm)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if cfg.fetch_only:
        rows = [(name, path) for name, path in summary["inputs"].items()]
        rows += [(f"fetched: {item['name']}", item["path"]) for item in summary["fetched"]]
        print_table("seed prepare --fetch-only", rows)
        print(summary["data_root"])
        return
    rows = [(name, count) for name, count in summary["counts"].items()]
    rows += [(f"dropped: {reason}", count) for reason, count in summary["dropped"].items()]
    print_table(f"seed prepare ({summary['source']}, seed {summary['seed']})", rows)
    print(summary["out"])
