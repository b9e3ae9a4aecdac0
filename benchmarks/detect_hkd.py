"""HKD4VLM on the synthetic world: the pyramid's student against direct fine-tuning, and the ablations.

For every seed: `seed prepare --synthetic --detect --seed S`, then `seed detect train` for
    hkd         the full method (online pyramid L -> M -> S, ternary refinement, augmentation)
    offline     --offline (frozen teachers)
    no-pyramid  --no-pyramid (S distilled from L directly; refinement with labels + L)
    no-augment  --no-augment
    transfer    --transfer (the unlabelled split in the stages with frozen teachers: here the refinement)
    offline-no-pyramid  --offline --no-pyramid (S learns from the frozen, fine-tuned L alone)
    offline-no-pyramid-transfer  the same with --transfer (in its kd stage and the refinement)
    direct-S    --models S alone, trained for as many epochs as the HKD student (kd + refinement)
and `seed detect evaluate` on the test split with --shifts K, plus the hkd run at --shifts 1. With
--transfer every run of the method (hkd and its ablations) also learns from the transfer set, whose
size --unlabelled sets (seed prepare --detect-unlabelled). Two rows come from stages of the hkd run:
direct-L (its SFT stage: the largest rung fine-tuned directly) and no-refine (its student before
refinement). Prints a Markdown table (mean and std over seeds; AUC columns:
the per-kind ranking AUC of P(hallucinated) on the test options, threshold-free) and
writes every result under --out.

    python benchmarks/detect_hkd.py --seeds 4,5,6 --ablation-seeds 4,5,6 --jobs 2 --out runs/detect-hkd

The default ladder is the world-pretrained tiny rungs with the medium rung grown from the smallest
(tiny-qwen2-vl-m-grown-world; built and cached on first use, minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seedcli.config.prepare import DEFAULT_UNLABELLED

# World-pretrained tiny rungs (seedcli.detect.pretrain), largest first; --ladder picks others (docs/detect.md).
LADDER = "tiny-qwen2-vl-l-world,tiny-qwen2-vl-m-grown-world,tiny-qwen2-vl-s-world"
VARIANTS = {
    "hkd": [],
    "offline": ["--offline"],
    "no-pyramid": ["--no-pyramid"],
    "no-augment": ["--no-augment"],
    "transfer": ["--transfer"],
    "offline-no-pyramid": ["--offline", "--no-pyramid"],
    "offline-no-pyramid-transfer": ["--offline", "--no-pyramid", "--transfer"],
}
ROWS = (
    ("hkd", "HKD student (S), K shifts"),
    ("hkd-k1", "HKD student (S), single pass"),
    ("direct-S", "S fine-tuned directly"),
    ("direct-L", "L fine-tuned directly"),
    ("offline", "ablation: offline KD"),
    ("no-pyramid", "ablation: no pyramid (L -> S)"),
    ("no-refine", "ablation: no refinement"),
    ("no-augment", "ablation: no augmentation"),
    ("transfer", "with the transfer set"),
    ("offline-no-pyramid", "offline, no pyramid (frozen L -> S)"),
    ("offline-no-pyramid-transfer", "offline, no pyramid, with the transfer set"),
)


def seed_cli(*args: str) -> str:
    """Run `python -m seedcli ARGS`; return stdout, fail loudly with stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "seedcli", *args], capture_output=True, text=True, env=os.environ.copy()
    )
    if done.returncode != 0:
        raise SystemExit(f"seed {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def train_args(cfg: argparse.Namespace, data: Path, out: Path, seed: int) -> list[str]:
    return [
        "detect", "train", "--data", str(data), "--out", str(out), "--overwrite", "--seed", str(seed),
        "--epochs", str(cfg.epochs), "--refine-epochs", str(cfg.refine_epochs), "--device", "cpu", "--json",
        "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--models", ",".join(cfg.ladder),
    ]  # fmt: skip


def run_seed(cfg: argparse.Namespace, seed: int, pool: ThreadPoolExecutor) -> dict[str, dict]:
    root = Path(cfg.out) / f"seed-{seed}"
    data = root / "data"
    manifest = data / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text())["counts"].get("track1_unlabelled") != cfg.unlabelled:
        args = ["prepare", "--synthetic", "--detect", "--detect-unlabelled", str(cfg.unlabelled), "--seed", str(seed)]
        seed_cli(*args, "--out", str(data), "--overwrite", "--json")
    variants = {k: v for k, v in VARIANTS.items() if k == "hkd" or (seed in cfg.ablation_seeds and k in cfg.ablations)}
    # --transfer makes the transfer set part of the method: the full method and every ablation use it.
    recipe = ["--transfer"] if cfg.transfer else []
    jobs = {
        name: train_args(cfg, data, root / name, seed) + extra + [f for f in recipe if f not in extra]
        for name, extra in variants.items()
    }
    student_epochs = cfg.epochs + cfg.refine_epochs
    jobs["direct-S"] = train_args(cfg, data, root / "direct-S", seed) + [
        "--models",
        cfg.ladder[-1],
        "--epochs",
        str(student_epochs),
    ]
    futures = {
        name: pool.submit(lambda a=args, n=name: None if (root / n / "summary.json").is_file() else seed_cli(*a))
        for name, args in jobs.items()
    }
    for future in futures.values():
        future.result()
    specs = {
        "hkd": str(root / "hkd"),
        "direct-S": str(root / "direct-S"),
        "direct-L": f"{root / 'hkd'}@sft",
        "no-refine": f"{root / 'hkd'}@kd-{len(cfg.ladder) - 1}",
    }
    specs |= {name: str(root / name) for name in variants if name != "hkd"}
    base = ["detect", "evaluate", "--data", str(data), "--split", "test", "--device", "cpu", "--json"]
    args = [*base]
    for spec in specs.values():
        args += ["--model", spec]
    shifted = pool.submit(seed_cli, *args, "--shifts", str(cfg.shifts), "--out", str(root / "eval"))
    single = pool.submit(seed_cli, *base, "--model", specs["hkd"], "--shifts", "1", "--out", str(root / "eval-k1"))
    results = {name: entry for name, entry in zip(specs, json.loads(shifted.result())["models"])}
    results["hkd-k1"] = json.loads(single.result())["models"][0]
    (root / "summary.json").write_text(json.dumps(results, indent=2))
    return results


def build_ladder(names: list[str]) -> None:
    """Build (pretrain) every rung once, in parallel, before the trainings race to the same cache entries."""
    code = "import sys; from seedcli.models.families import resolve; resolve(sys.argv[1])"

    def build(name: str) -> None:
        subprocess.run([sys.executable, "-c", code, name], check=True)

    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(build, names))


def headline(entry: dict) -> dict[str, float]:
    t1, t2 = entry["track1"], entry["track2"]
    out = {"T1 F1": t1["options"]["f1"], "T1 macro": t1["macro_f1"]}
    out |= {k: t1["kinds"][k]["f1"] for k in ("object", "attribute", "relation")}
    out |= {f"AUC {k[:3]}": round(t1["kinds"][k]["auc"], 1) for k in ("object", "attribute", "relation")}
    return out | {"T2 acc": t2["accuracy"], "T2 F1": t2["f1"]}


def table(per_seed: dict[int, dict[str, dict]]) -> str:
    columns = list(headline(next(iter(per_seed.values()))["hkd"]))
    lines = ["| system | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key, label in ROWS:
        values = [headline(results[key]) for results in per_seed.values() if key in results]
        if not values:  # an ablation row when no run seed is in --ablation-seeds
            continue
        cells = []
        for column in columns:
            xs = [v[column] for v in values]
            spread = f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
            cells.append(f"{statistics.mean(xs):.1f}{spread}")
        lines.append(f"| {label} ({len(values)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default="runs/detect-hkd")
    parser.add_argument("--epochs", type=int, default=6, help="as judged (chosen on seed 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--refine-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4, help="as judged (chosen on seed 0)")
    parser.add_argument("--ladder", default=LADDER, help="rungs, largest first (--models of seed detect train)")
    parser.add_argument("--shifts", type=int, default=3)
    parser.add_argument(
        "--unlabelled", type=int, default=DEFAULT_UNLABELLED, help="captions in each seed's transfer set (--transfer)"
    )
    parser.add_argument("--transfer", action="store_true", help="the method and every ablation use the transfer set")
    parser.add_argument("--jobs", type=int, default=4, help="trainings run at once")
    parser.add_argument("--ablation-seeds", default="1,2,3", help="seeds that also train the ablations")
    parser.add_argument("--ablations", default=",".join(list(VARIANTS)[1:]), help="which ablations they train")
    cfg = parser.parse_args()
    seeds = [int(s) for s in cfg.seeds.split(",")]
    cfg.ladder = cfg.ladder.split(",")
    cfg.ablation_seeds = {int(s) for s in cfg.ablation_seeds.split(",") if s}
    cfg.ablations = {a for a in cfg.ablations.split(",") if a}
    unknown = cfg.ablations - set(VARIANTS)
    if cfg.transfer:
        cfg.ablations -= {"transfer", "offline-no-pyramid"}  # already the method; the same as its -transfer row
    if unknown:
        parser.error(f"--ablations: unknown {', '.join(sorted(unknown))}; choose from {', '.join(list(VARIANTS)[1:])}")
    build_ladder(cfg.ladder)  # after the checks: a first build is minutes of CPU per rung
    with ThreadPoolExecutor(cfg.jobs) as pool, ThreadPoolExecutor(len(seeds)) as outer:
        per_seed = dict(zip(seeds, outer.map(lambda s: run_seed(cfg, s, pool), seeds)))
    text = table(per_seed)
    (Path(cfg.out) / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
