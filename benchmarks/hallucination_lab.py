"""The hallucination lab: worlds with named hallucination sources x methods, on the quickstart's recipe.

A cell is one world at one seed: the world is prepared (`seed prepare --synthetic` with the world's
knobs), the base model is trained on it (or loaded from the world-model cache), SFT, SEED and SEED
with two self-evolution rounds are distilled with identical data, steps and seed, and all of them,
plus the base model with VCD decoding, are evaluated on the world's held-out POPE splits and CHAIR.
Each finished cell is one JSON file under OUT/cells/; a cell whose file exists is skipped, so an
interrupted lab resumes where it stopped, and `--shard i/n` runs every n-th cell (start one process
per shard). After the cells it aggregates every cell file present into OUT/lab.json and OUT/lab.md:
per world and method the mean and sample standard deviation over seeds, and the paired 95% interval
(Student t over the per-seed differences) of SEED - base, SEED - SFT and SEED - VCD.

    python benchmarks/hallucination_lab.py --out lab-out/lab                      # the whole plan
    python benchmarks/hallucination_lab.py --out lab-out/lab --worlds llava-like --shard 0/2
    python benchmarks/hallucination_lab.py --out lab-out/lab --aggregate-only

Quickstart flags pass through unchanged (e.g. `--steps 240`); they are recorded in every cell, and
cells made with other flags are refused at aggregation. Seeds 1-5 (clean, llava-like) and 1-3 (the
single-source sweeps) are evaluation seeds: nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.config.base import flag_name, to_dict
from seedcli.config.quickstart import QuickstartConfig

METHODS = ("base", "sft", "seed", "seed-r2", "vcd")
LABELS = {"base": "base", "sft": "SFT", "seed": "SEED", "seed-r2": "SEED r2", "vcd": "base+VCD"}
CONTRASTS = (("seed", "base"), ("seed", "sft"), ("seed", "vcd"))
METRICS = {
    "pope_random_f1": "POPE random F1",
    "pope_popular_f1": "POPE popular F1",
    "pope_adversarial_f1": "POPE adversarial F1",
    "pope_random_yes_ratio": "POPE random yes-ratio",
    "pope_adversarial_yes_ratio": "POPE adversarial yes-ratio",
    "chair_chair_i_pct": "CHAIR_i (lower is better)",
    "chair_chair_s_pct": "CHAIR_s (lower is better)",
}
# World name -> quickstart settings. Each sweep changes one source of the clean world.
WORLDS: dict[str, dict[str, Any]] = {
    "llava-like": {"world": "llava-like"},
    "clean": {"world": "clean"},
    "yes-rate-0.7": {"world": "clean", "yes_rate": 0.7},
    "yes-rate-0.85": {"world": "clean", "yes_rate": 0.85},
    "label-noise-0.1": {"world": "clean", "label_noise": 0.1},
    "label-noise-0.2": {"world": "clean", "label_noise": 0.2},
    "label-noise-0.4": {"world": "clean", "label_noise": 0.4},
    "partner-negatives-0.25": {"world": "clean", "partner_negatives": 0.25},
    "partner-negatives-0.1": {"world": "clean", "partner_negatives": 0.1},
    "cooccurrence-0.5": {"world": "clean", "cooccurrence": 0.5},
    "cooccurrence-0.7": {"world": "clean", "cooccurrence": 0.7},
}
FULL_SEEDS = (1, 2, 3, 4, 5)
SWEEP_SEEDS = (1, 2, 3)
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def plan(worlds: list[str], seeds: list[int] | None) -> list[tuple[str, int]]:
    """Cells in run order: worlds in the given order, seeds ascending (default seeds per world)."""
    cells = []
    for world in worlds:
        default = FULL_SEEDS if world in ("clean", "llava-like") else SWEEP_SEEDS
        cells += [(world, seed) for seed in (seeds or default)]
    return cells


def shard(cells: list[tuple[str, int]], spec: str) -> list[tuple[str, int]]:
    """The cells of shard "i/n": every n-th cell starting at i."""
    index, count = (int(part) for part in spec.split("/"))
    if not 0 <= index < count:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return cells[index::count]


def cell_path(root: Path, world: str, seed: int) -> Path:
    """Where a finished cell is stored."""
    return root / "cells" / world / f"seed-{seed}.json"


def run_cell(root: Path, world: str, seed: int, overrides: dict[str, Any], reporter: Any) -> dict[str, Any]:
    """Prepare, train (or load) the base model, distill SFT / SEED / SEED r2, evaluate all and VCD."""
    from seedcli.core.distill import distill
    from seedcli.data.datadir import open_data_dir
    from seedcli.evals.runner import evaluate
    from seedcli.quickstart import (
        comparison_table,
        distill_config,
        evaluate_config,
        merge_tables,
        prepare_world,
        torch_threads,
    )
    from seedcli.world_model import WorldRecipe, ensure_world_model

    work = root / "work" / world / f"seed-{seed}"
    cfg = QuickstartConfig(out=work, overwrite=True, seed=seed, **(WORLDS[world] | overrides))
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with torch_threads(cfg.threads):
        prepare_world(cfg, work, reporter)
        data = work / "data"
        recipe = WorldRecipe(epochs=cfg.base_epochs, lr=cfg.base_lr, batch_size=cfg.base_batch_size, seed=seed)
        clock = time.monotonic()
        base, base_stats = ensure_world_model(data, recipe, reporter)
        seconds["base_model"] = time.monotonic() - clock
        runs, kl = {}, {}
        for method, rounds in (("sft", 1), ("seed", 1), ("seed-r2", 2)):
            clock = time.monotonic()
            runs[method] = work / "runs" / method
            dcfg = distill_config(cfg, base, data, "sft" if method == "sft" else "seed", runs[method])
            summary = distill(dataclasses.replace(dcfg, rounds=rounds), reporter)
            kl[method] = summary.get("final", {}).get("mean_kl")
            seconds[f"distill_{method}"] = time.monotonic() - clock
        clock = time.monotonic()
        plain = evaluate(evaluate_config(cfg, base, data, runs, work / "eval"), reporter)
        vcd = evaluate(evaluate_config(cfg, base, data, {}, work / "eval-vcd", decode="vcd"), reporter)
        seconds["evaluate"] = time.monotonic() - clock
    table = merge_tables(comparison_table(plain, {m: m for m in METHODS[:4]}), comparison_table(vcd, {"base": "vcd"}))
    source = open_data_dir(data).manifest["source"]
    cell = {
        "world": world,
        "seed": seed,
        "settings": WORLDS[world],
        "overrides": overrides,
        "config": to_dict(cfg),
        "knobs": source.get("knobs"),
        "realised": source.get("realised"),
        "base_model": {"path": str(base), "seconds": base_stats.get("seconds")},
        "mean_kl": kl,
        "ok": plain["ok"] and vcd["ok"],
        "table": table,
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.monotonic() - started}.items()},
    }
    atomic.write_json(cell_path(root, world, seed), cell)
    return cell


def t_quantile(df: int) -> float:
    """Student t 97.5% quantile (normal beyond 30 degrees of freedom)."""
    return T975[df - 1] if df <= len(T975) else 1.96


def describe(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and n."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def paired_interval(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of the per-seed differences a - b with its two-sided 95% t interval (nan bounds below 2 pairs)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    out = describe(diffs)
    if len(diffs) < 2:
        return out | {"low": math.nan, "high": math.nan}
    half = t_quantile(len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
    return out | {"low": out["mean"] - half, "high": out["mean"] + half}


def aggregate(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """world -> metric -> {method stats, contrasts with paired intervals, seeds} from finished cells."""
    out: dict[str, Any] = {}
    for world in dict.fromkeys(c["world"] for c in cells):
        mine = sorted((c for c in cells if c["world"] == world), key=lambda c: c["seed"])
        per_metric: dict[str, Any] = {}
        for metric in METRICS:
            rows = [c for c in mine if metric in c["table"]]
            if not rows:
                continue
            entry: dict[str, Any] = {"seeds": [c["seed"] for c in rows]}
            for method in METHODS:
                values = [c["table"][metric][method] for c in rows if method in c["table"][metric]]
                if values:
                    entry[method] = describe(values)
            for a, b in CONTRASTS:
                paired = [c["table"][metric] for c in rows if a in c["table"][metric] and b in c["table"][metric]]
                if paired:
                    entry[f"{a}-{b}"] = paired_interval([p[a] for p in paired], [p[b] for p in paired])
            per_metric[metric] = entry
        out[world] = per_metric
    return out


def targets(metrics: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets on one world's summary (means over seeds; never used to choose anything)."""
    adv = metrics["pope_adversarial_f1"]
    chair = metrics["chair_chair_i_pct"]
    checks = {
        "POPE-adversarial F1 SEED - base >= +3": adv["seed-base"]["mean"] >= 3.0,
        "POPE-adversarial F1 SEED - SFT >= +1": adv["seed-sft"]["mean"] >= 1.0,
        "POPE-adversarial F1 SEED - SFT paired 95% interval above 0": adv["seed-sft"].get("low", math.nan) > 0.0,
        "CHAIR_i SEED below base": chair["seed"]["mean"] < chair["base"]["mean"],
        "CHAIR_i SEED below SFT": chair["seed"]["mean"] < chair["sft"]["mean"],
    }
    for split in ("random", "popular", "adversarial"):
        f1 = metrics[f"pope_{split}_f1"]
        if "seed-vcd" in f1:
            checks[f"POPE {split} F1 SEED >= VCD - 1"] = f1["seed-vcd"]["mean"] >= -1.0
    return checks


def _fmt_interval(stats: dict[str, float]) -> str:
    if math.isnan(stats["low"]):
        return f"{stats['mean']:+.2f}"
    return f"{stats['mean']:+.2f} [{stats['low']:+.2f}, {stats['high']:+.2f}]"


def markdown(summary: dict[str, Any], command: str) -> str:
    """Per world: mean ± std per method, then the paired mean [95% interval] of each contrast."""
    lines = ["# Hallucination lab", "", f"Command: `{command}`", ""]
    for world, metrics in summary.items():
        seeds = next(iter(metrics.values()))["seeds"] if metrics else []
        lines += [f"## {world} (seeds {', '.join(map(str, seeds))})", ""]
        header = ["metric", *(LABELS[m] for m in METHODS)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for metric, entry in metrics.items():
            cells = [METRICS[metric]]
            cells += [f"{entry[m]['mean']:.2f} ± {entry[m]['std']:.2f}" if m in entry else "-" for m in METHODS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        header = ["metric", *(f"{LABELS[a]} - {LABELS[b]}" for a, b in CONTRASTS)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for metric, entry in metrics.items():
            cells = [METRICS[metric]]
            cells += [_fmt_interval(entry[f"{a}-{b}"]) if f"{a}-{b}" in entry else "-" for a, b in CONTRASTS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        needed = ("pope_adversarial_f1", "chair_chair_i_pct", "pope_random_f1", "pope_popular_f1")
        if all(m in metrics for m in needed) and all("seed-sft" in metrics[m] for m in needed):
            lines += [f"- target {name}: {'met' if ok else 'NOT met'}" for name, ok in targets(metrics).items()]
            lines.append("")
    return "\n".join(lines)


def load_cells(root: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every finished cell under root/cells, refusing cells made with other pass-through flags."""
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((root / "cells").glob("*/seed-*.json"))]
    other = [f"{c['world']}/seed-{c['seed']}" for c in cells if c["overrides"] != overrides]
    if other:
        raise SystemExit(f"cells made with other quickstart flags than {overrides}: {', '.join(other)}")
    order = {w: i for i, w in enumerate(WORLDS)}
    return sorted(cells, key=lambda c: (order.get(c["world"], len(order)), c["world"], c["seed"]))


def _overrides(rest: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Quickstart flags given after the lab's own (the world's knobs and out/seed are the lab's)."""
    reserved = {"out", "seed", "world", "yes_rate", "label_noise", "partner_negatives", "cooccurrence", "vcd"}
    flags = {flag_name(f): f for f in dataclasses.fields(QuickstartConfig)}
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        field = flags.get(rest[i])
        if field is None or field.name in reserved:
            parser.error(f"unknown or reserved quickstart flag {rest[i]!r}")
        if isinstance(field.default, bool):
            overrides[field.name] = True
            i += 1
            continue
        raw = rest[i + 1]
        if isinstance(field.default, tuple):
            overrides[field.name] = tuple(float(v) for v in raw.split(","))
        else:
            overrides[field.name] = type(field.default)(raw) if field.default is not None else int(raw)
        i += 2
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Run the selected cells (skipping finished ones), then aggregate every finished cell."""
    from seedcli.reporting import PlainReporter

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("lab"), help="cells/, work/, lab.json and lab.md")
    parser.add_argument("--worlds", default=",".join(WORLDS), help=f"comma-separated, from: {', '.join(WORLDS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds for every world (default: 1-5 / 1-3)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th cell starting at i")
    parser.add_argument("--aggregate-only", action="store_true", help="only aggregate the finished cells")
    known, rest = parser.parse_known_args(argv)
    overrides = _overrides(rest, parser)
    worlds = [w for w in known.worlds.split(",") if w]
    unknown = [w for w in worlds if w not in WORLDS]
    if unknown:
        parser.error(f"unknown world(s) {unknown}; choose from {', '.join(WORLDS)}")
    seeds = [int(s) for s in known.seeds.split(",")] if known.seeds else None
    reporter = PlainReporter(every_s=60.0)
    if not known.aggregate_only:
        for world, seed in shard(plan(worlds, seeds), known.shard):
            if cell_path(known.out, world, seed).is_file():
                reporter.info(f"cell {world}/seed-{seed}: done, skipped")
                continue
            reporter.info(f"=== cell {world}/seed-{seed} ===")
            cell = run_cell(known.out, world, seed, overrides, reporter)
            reporter.info(f"cell {world}/seed-{seed}: {cell['seconds']['total']} s")
    cells = load_cells(known.out, overrides)
    summary = aggregate(cells)
    command = "python benchmarks/hallucination_lab.py " + " ".join(argv)
    record = {"command": command, "overrides": overrides, "worlds": WORLDS, "summary": summary, "cells": cells}
    atomic.write_json(known.out / "lab.json", record)
    text = markdown(summary, command)
    atomic.write_text(known.out / "lab.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
