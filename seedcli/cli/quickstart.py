"""`seed quickstart`: the offline first command - a synthetic world, SFT vs SEED, side by side."""

from __future__ import annotations

import json
from typing import Any

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.quickstart import QuickstartConfig

HELP = (
    "Build a synthetic world with a controlled co-occurrence prior (and, by default, the yes-bias and "
    "hallucinated annotations of machine-generated instruction data), train a tiny base model on it, "
    "train SFT and SEED adapters with the same data, steps and seed, and compare hallucination "
    "(POPE, CHAIR) of all three and of the base model with VCD decoding. Offline, CPU, a few minutes; "
    "--fast for CI. Prints the output directory as the last line (--json: the results)."
)
ROWS = (
    ("POPE adversarial F1", "pope_adversarial_f1"),
    ("POPE popular F1", "pope_popular_f1"),
    ("POPE random F1", "pope_random_f1"),
    ("POPE adversarial accuracy", "pope_adversarial_accuracy"),
    ("POPE adversarial yes-ratio", "pope_adversarial_yes_ratio"),
    ("CHAIR_i (lower is better)", "chair_chair_i_pct"),
    ("CHAIR_s (lower is better)", "chair_chair_s_pct"),
    ("CHAIR recall", "chair_recall_pct"),
)


def _rows(table: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: base, SFT, SEED (and base+VCD when evaluated), then SEED's differences."""
    vcd = any("vcd" in row for row in table.values())
    header = ["metric", "base", "SFT", "SEED", *(["base+VCD"] if vcd else []), "SEED-base", "SEED-SFT"]
    header += ["SEED-VCD"] if vcd else []
    rows = []
    for title, key in ROWS:
        if key in table:
            v = table[key]
            cells = [title, *(f"{v[m]:.1f}" for m in ("base", "sft", "seed", *(["vcd"] if vcd else [])))]
            cells += [f"{v['seed'] - v['base']:+.1f}", f"{v['seed'] - v['sft']:+.1f}"]
            cells += [f"{v['seed'] - v['vcd']:+.1f}"] if vcd else []
            rows.append(cells)
    return header, rows


@config_command(app, QuickstartConfig, name="quickstart", help=HELP, extra=(json_option(),))
def quickstart(cfg: QuickstartConfig, as_json: bool) -> None:
    """Run the quickstart and show the comparison."""
    from seedcli.cli.render import make_reporter, print_table
    from seedcli.quickstart import quickstart as run

    results = run(cfg, make_reporter(as_json))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    header, rows = _rows(results["table"])
    world = results["world"].get("preset") or "synthetic"
    print_table(f"base vs SFT vs SEED on the {world} world (%, {results['evaluation']['protocol']})", rows, header)
    for example in results["examples"]:
        where = "CHAIR caption" if example["benchmark"] == "chair" else f"POPE {example['split']}"
        answers = [
            [name, example["answers"][key]] for name, key in (("base", "base"), ("SFT", "sft"), ("SEED", "seed"))
        ]
        print_table(
            f"{where}, {example['image']}: usual partner '{example['partner']}' is NOT in the image",
            [["prompt", example["prompt"].splitlines()[0]], *answers],
        )
    if not results["examples"]:
        print_table("examples", [["no item where the base model names an absent usual partner and SEED does not"]])
    seconds = results["seconds"]
    print_table("time (s)", [[k, f"{v:.1f}"] for k, v in seconds.items()])
    print(results["out"])
