"""`seed evaluate`: POPE and CHAIR for a base model and its SEED adapters, side by side."""

from __future__ import annotations

import json
from typing import Any

import typer

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.evaluate import EvaluateConfig

HELP = (
    "Evaluate hallucination (POPE, CHAIR) of a model and its adapters on the same items, with deltas and "
    "exact McNemar p-values. With no --model/--adapter: the newest run under runs/ against its base model. "
    "Score-only: --pope-file Q --answers A, or --captions C. Rerun with the same --out to resume. "
    "--gpus N / --nproc N shard the questions over N processes."
)


@config_command(app, EvaluateConfig, name="evaluate", help=HELP, extra=(json_option(),))
def evaluate(cfg: EvaluateConfig, as_json: bool) -> None:
    """Run the evaluation, print its results, exit 1 if any part failed."""
    import dataclasses

    from seedcli import distributed
    from seedcli.cli.options import config_argv
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.evals.runner import default_out, summary_tables
    from seedcli.evals.runner import evaluate as run_evaluate

    if cfg.processes > 1 and not distributed.under_launcher():
        distributed.check_gpus(cfg.gpus)
        # Every worker must write into the same results directory, so the timestamped default is fixed here.
        fixed = cfg if cfg.out is not None else dataclasses.replace(cfg, out=default_out())
        distributed.relaunch_cli(
            config_argv("evaluate", fixed, as_json=as_json), nproc=cfg.processes, master_port=cfg.master_port
        )
        return
    try:
        results = run_evaluate(cfg, make_reporter(as_json))
    except Exception as exc:
        distributed.record_failure(exc)
        raise
    if results.get("worker"):
        return  # ranks other than 0 print nothing; rank 0 prints the merged results
    _after_evaluation(cfg, results)
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


def _after_evaluation(cfg: EvaluateConfig, results: dict[str, Any]) -> None:
    """Refresh the model cards of the evaluated runs; write the --html page."""
    from seedcli.cards import record_evaluation

    try:
        record_evaluation(results)
    except OSError as exc:  # the results stand; only the runs' cards could not be refreshed
        typer.echo(f"warning: could not note the results in the evaluated runs ({exc}).", err=True)
    if cfg.html is not None:
        from seedcli.html_report import write_evaluation_report

        typer.echo(f"report: {write_evaluation_report(results, cfg.html)}", err=True)
