"""`seed distill`: train the Hallucination Elimination Adapter with SEED (or the SFT baseline)."""

from __future__ import annotations

import dataclasses
import json

from seedcli.cli.app import app
from seedcli.cli.options import config_argv, config_command, given_fields, json_option
from seedcli.config.distill import DistillConfig

HELP = """Train a LoRA adapter with SEED: purify the frozen model's logits with a noised-image teacher
and distill them back with a mode-seeking reverse KL (or --method sft for the CE-only baseline).

Writes a run directory (config.json, env.json, metrics.jsonl, adapter/, checkpoints/, summary.json);
its path is the last line on stdout, so scripts can capture it:  RUN=$(seed distill ... | tail -n 1)

--gpus N / --nproc N start N worker processes through torch's elastic launcher (docs/distributed.md)."""


@config_command(app, DistillConfig, name="distill", help=HELP, extra=(json_option(),))
def distill(cfg: DistillConfig, as_json: bool) -> None:
    """Run the engine (relaunched in N workers when asked) and print the run directory or the summary JSON."""
    from seedcli import distributed
    from seedcli.cli.render import make_reporter
    from seedcli.core.distill import distill as run
    from seedcli.rundir import default_out

    given = given_fields()
    if cfg.resume and cfg.out and not distributed.under_launcher():
        cfg, given = _saved_processes(cfg, given)
    processes = cfg.gpus or cfg.nproc or 1
    if (processes > 1 or cfg.nnodes > 1) and not distributed.under_launcher():
        distributed.check_gpus(cfg.gpus)
        # Every worker must agree on the run directory, so the timestamped default is fixed here.
        fixed = cfg if cfg.out or cfg.resume else dataclasses.replace(cfg, out=str(default_out(cfg.model, cfg.method)))
        argv = config_argv("distill", fixed, as_json=as_json, given=given)  # workers see the same explicit flags
        distributed.relaunch_cli(
            argv,
            nproc=processes,
            nnodes=cfg.nnodes,
            node_rank=cfg.node_rank,
            master_addr=cfg.master_addr,
            master_port=cfg.master_port,
        )
        return
    # Which flags were typed matters only on --resume: they override the run's config.json.
    explicit = {"given": given} if cfg.resume else {}
    try:
        summary = run(cfg, make_reporter(as_json), **explicit)
    except Exception as exc:
        distributed.record_failure(exc)
        raise
    if distributed.process_rank() != 0:
        return
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["run_dir"])


def _saved_processes(cfg: DistillConfig, given: frozenset[str]) -> tuple[DistillConfig, frozenset[str]]:
    """A plain --resume runs on as many processes as the run did (--gpus/--nproc given now win)."""
    from pathlib import Path

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
