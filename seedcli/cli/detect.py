"""`seed detect`: hallucination detection by progressive hybrid knowledge distillation (HKD4VLM)."""

from __future__ import annotations

import json

import typer

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.detect import DetectEvaluateConfig, DetectImportConfig, DetectRunConfig, DetectTrainConfig

detect_app = typer.Typer(
    help="Detect hallucinated objects, attributes and relations in captions (Track 1) and non-factual claims "
    "(Track 2) with a small model distilled from larger ones (HKD4VLM). See docs/detect.md.",
    no_args_is_help=True,
)
app.add_typer(detect_app, name="detect")

TRAIN_HELP = (
    "Train the pyramid: fine-tune the largest of --models, distil each smaller rung from the one above "
    "(online by default), then refine the smallest with labels + largest + medium teachers. Prints the run directory. "
    "Rerun with --resume --out RUN to continue. --gpus/--nproc N train data-parallel in N processes."
)
RUN_HELP = "Flag the hallucinated options (or non-factual claims) of a JSONL file with a trained detector; JSONL out."
EVALUATE_HELP = (
    "Option-level precision/recall/F1 per kind and macro (Track 1), accuracy and F1 (Track 2), and the "
    "threshold-free ranking AUC of both, of one or more detectors on the same items, with exact McNemar p-values "
    "against the first."
)
IMPORT_HELP = "Validate an external detection file and copy it with its images into a data directory."


@config_command(
    detect_app, DetectTrainConfig, name="train", key="detect train", help=TRAIN_HELP, extra=(json_option(),)
)
def train(cfg: DetectTrainConfig, as_json: bool) -> None:
    """Train (relaunched in N workers for --gpus/--nproc N) and print the summary on rank 0."""
    from seedcli import distributed
    from seedcli.cli.options import given_fields
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.cli.workers import relaunch
    from seedcli.detect.train import default_out
    from seedcli.detect.train import train as run_train

    if relaunch(
        ("detect", "train"), cfg, as_json=as_json, given=given_fields(), default_out=lambda: str(default_out())
    ):
        return
    try:
        summary = run_train(cfg, make_reporter(as_json))
    except Exception as exc:
        distributed.record_failure(exc)  # the launcher reports this rank's message
        raise
    if distributed.process_rank() != 0:
        return
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    rows = []
    for stage, scores in summary["dev"].items():
        t1, t2 = scores.get("track1"), scores.get("track2")
        rows.append((stage, f"{t1['options']['f1']:.1f}" if t1 else "-", f"{t2['accuracy']:.1f}" if t2 else "-"))
    if rows:
        print_table("dev scores after each stage (single pass)", rows, ["stage", "T1 option F1", "T2 accuracy"])
    print(summary["out"])


@config_command(detect_app, DetectRunConfig, name="run", key="detect run", help=RUN_HELP)
def run(cfg: DetectRunConfig) -> None:
    """Run the detector; JSONL on stdout unless --output is given."""
    from seedcli.cli.render import make_reporter
    from seedcli.detect.runner import run as run_detector

    records = run_detector(cfg, make_reporter(cfg.output is None))
    if cfg.output is None:
        for record in records:
            print(json.dumps(record))
    else:
        print(cfg.output)


@config_command(
    detect_app, DetectEvaluateConfig, name="evaluate", key="detect evaluate", help=EVALUATE_HELP, extra=(json_option(),)
)
def evaluate(cfg: DetectEvaluateConfig, as_json: bool) -> None:
    """Score the detectors and print them side by side."""
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.detect.runner import evaluate as run_evaluate
    from seedcli.detect.runner import summary_rows

    results = run_evaluate(cfg, make_reporter(as_json))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    columns, rows = summary_rows(results)
    print_table(f"seed detect evaluate ({results['items']} items, {cfg.shifts} shift(s))", rows, columns)
    if cfg.out is not None:
        print(cfg.out)


@config_command(
    detect_app, DetectImportConfig, name="import", key="detect import", help=IMPORT_HELP, extra=(json_option(),)
)
def import_(cfg: DetectImportConfig, as_json: bool) -> None:
    """Import and print where the set was written."""
    from seedcli.detect.runner import import_set

    result = import_set(cfg)
    print(json.dumps(result, indent=2) if as_json else f"imported {result['items']} items -> {result['out']}")
