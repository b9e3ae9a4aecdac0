"""`seed distill`: train the Hallucination Elimination Adapter with SEED (or the SFT baseline)."""

from __future__ import annotations

import json

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.distill import DistillConfig

HELP = """Train a LoRA adapter with SEED: purify the frozen model's logits with a noised-image teacher
and distill them back with a mode-seeking reverse KL (or --method sft for the CE-only baseline).

Writes a run directory (config.json, env.json, metrics.jsonl, adapter/, checkpoints/, summary.json);
its path is the last line on stdout, so scripts can capture it:  RUN=$(seed distill ... | tail -n 1)"""


@config_command(app, DistillConfig, name="distill", help=HELP, extra=(json_option(),))
def distill(cfg: DistillConfig, as_json: bool) -> None:
    """Run the engine and print the run directory (or the summary JSON)."""
    from seedcli.cli.render import make_reporter
    from seedcli.core.distill import distill as run

    summary = run(cfg, make_reporter(as_json))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["run_dir"])
