"""`seed distill`: train the Hallucination Elimination Adapter with SEED (or the SFT baseline)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from seedcli.cli.app import app
from seedcli.cli.options import config_command, given_fields, json_option
from seedcli.config.distill import DistillConfig

HELP = """Train a LoRA adapter with SEED: purify the frozen model's logits with a noised-image teacher
and distill them back with a mode-seeking reverse KL (or --method sft for the CE-only baseline).

Writes a run directory (config.json, env.json, metrics.jsonl, adapter/, checkpoints/, summary.json);
its path is the last line on stdout, so scripts can capture it:  RUN=$(seed distill ... | tail -n 1)
At the end it writes adapter/README.md (a model card) and report.html (training curves).

--gpus N / --nproc N start N worker processes through torch's elastic launcher (docs/distributed.md)."""


@config_command(app, DistillConfig, name="distill", help=HELP, extra=(json_option(),))
def distill(cfg: DistillConfig, as_json: bool) -> None:
    """Run the engine (relaunched in N workers when asked) and print the run directory or the summary JSON."""
    from seedcli import distributed, trackers
    from seedcli.cli.render import make_reporter
    from seedcli.cli.workers import relaunch
    from seedcli.core.distill import distill as run
    from seedcli.rundir import default_out

    # Before any work (and before a relaunch): a missing tracker or an impossible upload fails here.
    tracker = trackers.open_trackers(cfg.report_to)
    if cfg.push_to_hub and distributed.process_rank() == 0:
        from seedcli.hub import check_push

        check_push(cfg.push_to_hub)
    given = given_fields()
    if cfg.resume and cfg.out and not distributed.under_launcher():
        cfg, given = _saved_processes(cfg, given)
    if relaunch(
        ("distill",), cfg, as_json=as_json, given=given, default_out=lambda: str(default_out(cfg.model, cfg.method))
    ):
        return
    try:
        # Which flags were typed matters on --resume: only they override the run's config.json.
        summary = run(cfg, make_reporter(as_json), tracker=tracker, given=given)
    except Exception as exc:
        distributed.record_failure(exc)
        raise
    if distributed.process_rank() != 0:
        return
    _after_training(cfg, Path(summary["run_dir"]), summary, tracker)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["run_dir"])


def _after_training(cfg: DistillConfig, run_dir: Path, summary: dict[str, Any], tracker: Any) -> None:
    """The adapter's model card, report.html, the trackers' summary, and the upload when asked."""
    from seedcli.cards import write_adapter_card
    from seedcli.html_report import write_run_report

    write_adapter_card(run_dir)
    write_run_report(run_dir)
    if tracker is not None:
        tracker.finish(run_dir, summary)
    if cfg.push_to_hub:
        from seedcli.hub import push

        url = push(run_dir / "adapter", cfg.push_to_hub, message=f"SEED adapter from seedcli run {run_dir.name}")
        print(f"uploaded to the hub: {url}", file=sys.stderr)


def _saved_processes(cfg: DistillConfig, given: frozenset[str]) -> tuple[DistillConfig, frozenset[str]]:
    """A plain --resume runs on as many processes as the run did (--gpus/--nproc given now win)."""
    from seedcli.rundir import CONFIG

    path = Path(cfg.out or "") / CONFIG
    if given & {"gpus", "nproc"} or not path.is_file():
        return cfg, given
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError, TypeError):
        return cfg, given  # the engine names a damaged config.json
    counts = {k: saved.get(k) for k in ("gpus", "nproc") if isinstance(saved.get(k), int)}
    return (dataclasses.replace(cfg, **counts), given | set(counts)) if counts else (cfg, given)
