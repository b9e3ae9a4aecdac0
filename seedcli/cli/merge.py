"""`seed merge`: fold a run's adapter into its base and save a plain transformers model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.merge import MergeConfig

HELP = (
    "Merge a run's adapter (all rounds) into its base model, verify the merged logits against the "
    "attached adapter, and save a directory that AutoModelForImageTextToText loads. "
    "Prints the output path as the last line."
)


@config_command(app, MergeConfig, name="merge", help=HELP, extra=(json_option(),))
def merge(cfg: MergeConfig, as_json: bool) -> None:
    """Run the merge and print its summary."""
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.merge import merge as run_merge

    if cfg.push_to_hub:
        from seedcli.hub import check_push

        check_push(cfg.push_to_hub)
    summary = run_merge(cfg, make_reporter(as_json))
    if cfg.push_to_hub and summary["status"] == "merged":
        from seedcli.hub import push

        message = f"SEED model merged by seedcli from {summary['source']}"
        summary["pushed_to"] = push(Path(summary["out"]), cfg.push_to_hub, message=message)
        print(f"uploaded to the hub: {summary['pushed_to']}", file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if summary["status"] == "merged":
        check = summary["verification"]
        rows = [
            ("base model", summary["base_model"]),
            ("adapters", len(summary["adapters"])),
            ("dtype", summary["dtype"]),
            ("max |merged - attached| logit", f"{check['max_abs_diff']:.3g} (bound {check['bound']:.3g})"),
            ("adapter effect (max |logit change|)", f"{check['adapter_effect']:.3g}"),
            ("files", len(summary["files"])),
        ]
        print_table("seed merge: verified", rows)
    print(summary["out"])
