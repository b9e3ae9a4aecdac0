"""`seed evaluate`: POPE and CHAIR for a base model and its SEED adapters, side by side."""

from __future__ import annotations

import json

import typer

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.evaluate import EvaluateConfig

HELP = (
    "Evaluate hallucination (POPE, CHAIR) of a model and its adapters on the same items, with deltas and "
    "exact McNemar p-values. With no --model/--adapter: the newest run under runs/ against its base model. "
    "Score-only: --pope-file Q --answers A, or --captions C. Rerun with the same --out to resume."
)


@config_command(app, EvaluateConfig, name="evaluate", help=HELP, extra=(json_option(),))
def evaluate(cfg: EvaluateConfig, as_json: bool) -> None:
    """Run the evaluation, print its results, exit 1 if any part failed."""
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.evals.runner import evaluate as run_evaluate
    from seedcli.evals.runner import summary_tables

    results = run_evaluate(cfg, make_reporter(as_json))
    if as_json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for title, columns, rows in summary_tables(results):
            print_table(title, rows, columns)
        for error in results["errors"]:
            typer.echo(f"failed: {error['model']} {error['part']} (seed {error['seed']}): {error['error']}", err=True)
        print(results["out"])
    if not results["ok"]:
        raise typer.Exit(1)
