"""`seed quickstart` as a library call: a synthetic world, a base model that learned it, SFT vs SEED.

Steps, all offline on CPU:
1. `seed prepare --synthetic` into OUT/data (held-out POPE and CHAIR images, training conversations);
2. the tiny base model trained on the world's conversations (seedcli.world_model; cached);
3. `seed distill --method sft` and `--method seed` on identical data, steps and seed, into
   OUT/runs/sft and OUT/runs/seed (SEED last, so `seed demo` finds it as the newest run);
4. `seed evaluate`: base, SFT and SEED on the three POPE splits (greedy protocol) and CHAIR, into
   OUT/eval;
5. a side-by-side table, the examples where the base model names an object's usual partner that
   is not there and SEED does not, and OUT/quickstart.json with everything.

OUT belongs to the quickstart: a rerun replaces what a previous quickstart wrote there.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic
from seedcli.config.base import to_dict
from seedcli.config.quickstart import QuickstartConfig
from seedcli.errors import ConfigError
from seedcli.reporting import Reporter

RESULTS = "quickstart.json"
DATA_DIR = "data"
RUNS_DIR = "runs"
EVAL_DIR = "eval"
MODELS = ("base", "sft", "seed")
VCD = "vcd"
"""The base model with Visual Contrastive Decoding: the fourth column."""
LABELS = {"base": "base", "sft": "SFT", "seed": "SEED", VCD: "base+VCD"}
VCD_EVAL_DIR = "eval-vcd"
POPE_SPLITS = ("random", "popular", "adversarial")
POPE_METRICS = ("f1", "accuracy", "precision", "recall", "yes_ratio")
CHAIR_METRICS = ("chair_i_pct", "chair_s_pct", "recall_pct", "mean_length_words")
POPE_QUESTION = re.compile(r"^Is there an? (.+?) in the image\?")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` torch CPU threads (0: leave torch's default), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _claim_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a directory the quickstart did not write (unless --overwrite)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a directory.")
    if (
        out.is_dir()
        and any(out.iterdir())
        and not (out / RESULTS).is_file()
        and not (out / DATA_DIR).is_dir()
        and not overwrite
    ):
        raise ConfigError(
            f"--out {out} exists and was not written by `seed quickstart`; choose another --out or pass --overwrite."
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS, EVAL_DIR, VCD_EVAL_DIR, RUNS_DIR):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_world(cfg: QuickstartConfig, out: Path, reporter: Reporter) -> dict[str, Any]:
    """`seed prepare --synthetic` into OUT/data with the quickstart's world settings; returns its summary."""
    from seedcli.config.prepare import PrepareConfig
    from seedcli.data.prepare import prepare

    prepare_cfg = PrepareConfig(
        synthetic=True,
        out=out / DATA_DIR,
        overwrite=True,
        seed=cfg.seed,
        synthetic_images=cfg.synthetic_images,
        cooccurrence=cfg.cooccurrence,
        world=cfg.world,
        yes_rate=cfg.yes_rate,
        label_noise=cfg.label_noise,
        partner_negatives=cfg.partner_negatives,
    )
    return prepare(prepare_cfg, reporter)


def distill_config(cfg: QuickstartConfig, base: Path, data: Path, method: str, out: Path) -> Any:
    """The DistillConfig of one quickstart run; SFT and SEED differ only in `method`."""
    from seedcli.config.distill import DistillConfig

    return DistillConfig(
        model=str(base),
        data=str(data),
        out=str(out),
        overwrite=True,
        device="cpu",
        dtype="fp32",
        method=method,
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        seed=cfg.seed,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        noise_alpha=cfg.noise_alpha,
        distill_weight=cfg.distill_weight,
        temperature=cfg.temperature,
        beta_values=cfg.beta_values,
        log_every=max(1, cfg.steps // 5),
        save_every=cfg.steps,  # no intermediate checkpoints: runs take seconds
    )


def evaluate_config(
    cfg: QuickstartConfig, base: Path, data: Path, runs: dict[str, Path], out: Path, decode: str = "plain"
) -> Any:
    """The EvaluateConfig comparing the base model with the given adapters (none: the base model alone)."""
    from seedcli.config.evaluate import EvaluateConfig

    return EvaluateConfig(
        model=str(base),
        adapter=tuple(str(path) for path in runs.values()),
        decode=decode,
        data=data,
        pope="all",
        chair=True,
        protocol="greedy",
        device="cpu",
        dtype="fp32",
        limit=cfg.limit,
        max_new_tokens_chair=cfg.max_new_tokens_chair,
        batch_size=64,
        out=out,
    )


def comparison_table(results: dict[str, Any], rename: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """metric name -> {model: value} in percent (official POPE parser; CHAIR as reported).

    `rename` maps a model label of `results` to its column (the VCD evaluation's "base" is "vcd").
    """
    names = rename or {m: m for m in MODELS}
    table: dict[str, dict[str, float]] = {}
    pope, chair = results.get("pope", {}), results.get("chair", {})
    for split in POPE_SPLITS:
        for metric in POPE_METRICS:
            row = {c: 100.0 * pope[m][split]["official"][metric] for m, c in names.items() if split in pope.get(m, {})}
            if row:
                table[f"pope_{split}_{metric}"] = row
    for metric in CHAIR_METRICS:
        row = {c: float(chair[m][metric]) for m, c in names.items() if m in chair}
        if row:
            table[f"chair_{metric}"] = row
    return table


def merge_tables(*tables: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Metric-wise union of comparison tables (columns of later tables added to earlier rows)."""
    merged: dict[str, dict[str, float]] = {}
    for table in tables:
        for metric, row in table.items():
            merged.setdefault(metric, {}).update(row)
    return merged


def _partners() -> dict[str, str]:
    from seedcli.data.synthetic import PAIRS

    return dict(PAIRS)


def partner_hallucinations(present: set[str], mentioned: set[str]) -> list[str]:
    """Mentioned objects that are absent from the image but are the usual partner of a present one."""
    partner_of = _partners()
    return sorted({partner_of[a] for a in present if a in partner_of} & (mentioned - present))


def examples(samples: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Items where the base model names an absent usual partner and SEED does not (CHAIR first, then POPE)."""
    partner_of = _partners()
    by_item: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for row in samples:
        by_item.setdefault((row["benchmark"], str(row["split"]), str(row["id"])), {})[row["model"]] = row
    found: list[dict[str, Any]] = []
    for (benchmark, split, _), rows in sorted(by_item.items(), key=lambda kv: (kv[0][0] != "chair", kv[0])):
        if not all(m in rows for m in MODELS):
            continue
        base = rows["base"]
        if benchmark == "chair":
            present = set(base["label"])
            flagged = {
                m: partner_hallucinations(present, {c for _, c in rows[m]["parsed"]["mentions"]}) for m in MODELS
            }
            if not flagged["base"] or flagged["seed"]:
                continue
            partner = flagged["base"][0]
        else:
            # POPE: a "no" question about the absent partner of an object in the image, answered "yes".
            match = POPE_QUESTION.match(base["input"])
            asked = match.group(1) if match else None
            if base["label"] != "no" or asked not in partner_of.values():
                continue
            if base["parsed"]["official"] != "yes" or rows["seed"]["parsed"]["official"] != "no":
                continue
            partner = asked
        found.append(
            {
                "benchmark": benchmark,
                "split": None if split == "None" else split,
                "image": base["image"],
                "prompt": base["input"],
                "truth": base["label"],
                "partner": partner,
                "answers": {m: rows[m]["output"] for m in MODELS},
            }
        )
        if len(found) >= limit:
            break
    return found


def quickstart(cfg: QuickstartConfig, reporter: Reporter) -> dict[str, Any]:
    """Run the whole quickstart and write OUT/quickstart.json; returns its content."""
    from seedcli.core.distill import distill
    from seedcli.data.datadir import open_data_dir
    from seedcli.evals.runner import evaluate
    from seedcli.world_model import WorldRecipe, ensure_world_model

    r = cfg.resolved()
    out = Path(r.out)
    _claim_out(out, r.overwrite)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with torch_threads(r.threads):
        reporter.info(
            f"[1/4] synthetic world '{r.world}': {r.synthetic_images} images, co-occurrence {r.cooccurrence}, "
            f"seed {r.seed}"
        )
        clock = time.monotonic()
        prepared = prepare_world(r, out, reporter)
        data = out / DATA_DIR
        seconds["prepare"] = time.monotonic() - clock

        reporter.info("[2/4] base model: tiny-llava trained on the world's conversations")
        clock = time.monotonic()
        recipe = WorldRecipe(epochs=r.base_epochs, lr=r.base_lr, batch_size=r.base_batch_size, seed=r.seed)
        base, base_stats = ensure_world_model(data, recipe, reporter)
        seconds["base_model"] = time.monotonic() - clock

        reporter.info(f"[3/4] distill: SFT and SEED, {r.steps} steps each, same data and seed")
        runs: dict[str, Path] = {}
        summaries: dict[str, Any] = {}
        for method in ("sft", "seed"):
            clock = time.monotonic()
            runs[method] = out / RUNS_DIR / method
            summaries[method] = distill(distill_config(r, base, data, method, runs[method]), reporter)
            seconds[f"distill_{method}"] = time.monotonic() - clock

        columns = "base, SFT, SEED" + (" and base with VCD decoding" if r.vcd else "")
        reporter.info(f"[4/4] evaluate: {columns} on POPE (greedy) and CHAIR")
        clock = time.monotonic()
        evaluation = evaluate(evaluate_config(r, base, data, runs, out / EVAL_DIR), reporter)
        seconds["evaluate"] = time.monotonic() - clock
        table = comparison_table(evaluation)
        vcd_eval: dict[str, Any] | None = None
        if r.vcd:
            clock = time.monotonic()
            vcd_eval = evaluate(evaluate_config(r, base, data, {}, out / VCD_EVAL_DIR, decode="vcd"), reporter)
            seconds["evaluate_vcd"] = time.monotonic() - clock
            table = merge_tables(table, comparison_table(vcd_eval, {"base": VCD}))

    samples = atomic.read_jsonl(Path(evaluation["samples"]))
    world = open_data_dir(data).manifest["source"]
    results = {
        "seedcli_version": __version__,
        "out": str(out),
        "config": to_dict(cfg),
        "resolved": to_dict(r),
        "world": {
            "data": str(data),
            "preset": world.get("world_preset"),
            "knobs": world.get("knobs"),
            "realised": world.get("realised"),
            "counts": prepared["counts"],
            "notes": prepared["notes"],
        },
        "base_model": {"path": str(base), "recipe": to_dict(recipe), "training": base_stats},
        "runs": {
            m: {
                "run_dir": str(runs[m]),
                "mean_kl": summaries[m].get("final", {}).get("mean_kl"),
                "last": summaries[m].get("final", {}).get("last"),
            }
            for m in runs
        },
        "evaluation": {
            "out": evaluation["out"],
            "ok": evaluation["ok"] and (vcd_eval is None or vcd_eval["ok"]),
            "errors": evaluation["errors"] + (vcd_eval["errors"] if vcd_eval is not None else []),
            "protocol": evaluation["protocol"]["label"],
            "vcd": None if vcd_eval is None else {"out": vcd_eval["out"], "protocol": vcd_eval["protocol"]["label"]},
        },
        "table": table,
        "examples": examples(samples, r.examples),
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.monotonic() - started}.items()},
    }
    atomic.write_json(out / RESULTS, results)
    return results
