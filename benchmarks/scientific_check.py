"""The scientific check of issue #8: does SEED reduce hallucination on a world we control?

For each seed, the full quickstart (`seedcli.quickstart.quickstart`) runs with that seed: a fresh
synthetic world, a base model trained on it, SFT and SEED adapters with identical data and steps,
and the POPE (greedy) and CHAIR evaluation of all three on the world's held-out images. Then, for
every metric, the mean and sample standard deviation over seeds of base, SFT and SEED and of the
paired differences SEED - base and SEED - SFT are printed (and written as JSON), with the targets:

    POPE-adversarial F1: SEED - base >= +3 points and SEED - SFT >= +1 point (mean over seeds);
    CHAIR_i: SEED below both base and SFT (mean over seeds).

Targets are reported, never enforced, and nothing here changes how anything is evaluated.
Quickstart flags pass through unchanged (e.g. --steps 120), so a variant is one command:

    python benchmarks/scientific_check.py --seeds 1,2,3 --out bench-science [QUICKSTART FLAGS]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.config.base import flag_name, to_dict
from seedcli.config.quickstart import QuickstartConfig
from seedcli.quickstart import MODELS, quickstart
from seedcli.reporting import PlainReporter

TARGETS = {
    "pope_adversarial_f1": {"seed-base": 3.0, "seed-sft": 1.0},
    "chair_chair_i_pct": {"seed-base": 0.0, "seed-sft": 0.0},
}
LOWER_IS_BETTER = ("chair_chair_i_pct", "chair_chair_s_pct")


def _parse(argv: list[str]) -> tuple[list[int], Path, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (>= 3 for the check)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-science"), help="one quickstart directory per seed, plus science.json"
    )
    known, rest = parser.parse_known_args(argv)
    overrides: dict[str, Any] = {}
    types = {f.name: f for f in dataclasses.fields(QuickstartConfig)}
    flags = {flag_name(f): f for f in types.values()}
    i = 0
    while i < len(rest):
        field = flags.get(rest[i])
        if field is None or field.name in ("out", "seed"):
            parser.error(f"unknown or reserved quickstart flag {rest[i]!r}")
        default = field.default
        if isinstance(default, bool):
            overrides[field.name] = True
            i += 1
            continue
        raw = rest[i + 1]
        if isinstance(default, tuple):
            overrides[field.name] = tuple(float(v) for v in raw.split(","))
        else:
            overrides[field.name] = type(default)(raw) if default is not None else int(raw)
        i += 2
    return [int(s) for s in known.seeds.split(",")], known.out, overrides


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> {base, sft, seed, seed-base, seed-sft} -> {mean, std, min, max} over seeds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for metric in tables[0]:
        columns = {m: [t[metric][m] for t in tables] for m in MODELS}
        columns["seed-base"] = [t[metric]["seed"] - t[metric]["base"] for t in tables]
        columns["seed-sft"] = [t[metric]["seed"] - t[metric]["sft"] for t in tables]
        summary[metric] = {name: _stats(values) for name, values in columns.items()}
    return summary


def verdicts(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, bool]:
    """Whether each target holds for the mean over seeds."""
    out = {}
    for metric, targets in TARGETS.items():
        for column, threshold in targets.items():
            mean = summary[metric][column]["mean"]
            out[f"{metric} {column}"] = mean < -threshold if metric in LOWER_IS_BETTER else mean >= threshold
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the quickstart per seed and print the multi-seed table."""
    seeds, root, overrides = _parse(sys.argv[1:] if argv is None else argv)
    reporter = PlainReporter(every_s=30.0)
    tables, runs = [], []
    for seed in seeds:
        cfg = QuickstartConfig(out=root / f"seed-{seed}", seed=seed, **overrides)
        started = time.monotonic()
        reporter.info(f"=== seed {seed} ===")
        results = quickstart(cfg, reporter)
        tables.append(results["table"])
        runs.append(
            {
                "seed": seed,
                "out": results["out"],
                "seconds": results["seconds"],
                "wall_s": round(time.monotonic() - started, 1),
                "table": results["table"],
            }
        )
    summary = summarise(tables)
    checks = verdicts(summary)
    command = "python benchmarks/scientific_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic.write_json(
        root / "science.json",
        {
            "command": command,
            "seeds": seeds,
            "config": to_dict(QuickstartConfig(out=root, **overrides)),
            "summary": summary,
            "targets": TARGETS,
            "verdicts": checks,
            "runs": runs,
        },
    )

    print(f"{command}\nseeds {seeds}; mean ± sample std over seeds (percent points)")
    print(f"{'metric':30s} " + " ".join(f"{c:>15s}" for c in (*MODELS, "seed-base", "seed-sft")))
    for metric, columns in summary.items():
        print(
            f"{metric:30s} "
            + " ".join(
                f"{columns[c]['mean']:8.2f} ±{columns[c]['std']:5.2f}" for c in (*MODELS, "seed-base", "seed-sft")
            )
        )
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
