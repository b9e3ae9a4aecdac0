"""`seed detect run`, `evaluate` and `import` as library calls over a trained run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from seedcli import atomic, rundir
from seedcli.config.detect import DetectEvaluateConfig, DetectImportConfig, DetectRunConfig
from seedcli.detect.infer import DEFAULT_THRESHOLD, uniform
from seedcli.detect.items import Item, import_items, read_items, write_items
from seedcli.errors import ConfigError, DataError
from seedcli.reporting import Reporter

FLAG = "--model"


def detector_path(
    spec: str | Path, stage: str | None = None, *, flag: str = FLAG
) -> tuple[Path, str, dict[str, float]]:
    """The model directory of a detector given as RUN or RUN@STAGE, a label and its dev-calibrated thresholds."""
    text = str(spec)
    if stage is None and "@" in text:
        text, stage = text.rsplit("@", 1)
    run = rundir.open_run(text, flag=flag)
    if run.config.get("command") != "detect train":
        raise DataError(f"{flag} {text}: not a `seed detect train` run (command {run.config.get('command')!r}).")
    assert run.summary is not None
    stages = run.summary["stages"]
    final = list(stages)[-1]
    if stage is not None and stage not in stages:
        raise ConfigError(f"{flag} {text}: no stage {stage!r} (stages: {', '.join(stages)}).")
    chosen = stage or final
    thresholds = run.summary.get("thresholds", {}).get(chosen, uniform(DEFAULT_THRESHOLD))
    label = run.root.name if stage is None else f"{run.root.name}@{stage}"
    return run.root / stages[chosen], label, thresholds


def lora_base(path: Path) -> tuple[str, str] | None:
    """(base model, quantization) of a LoRA rung's stage directory (its rung.json); None for a full model."""
    import json

    from seedcli.detect.train import RUNG

    rung = Path(path) / RUNG
    if not rung.is_file():
        return None
    try:
        meta = json.loads(rung.read_text(encoding="utf-8"))
        return str(meta["base"]), str(meta.get("quantization", "none"))
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{rung}: unreadable; retrain the run or restore the file.") from None


def load_detector(path: Path, dtype: str, device: str) -> Any:
    """A trained rung from `detector_path`: its saved model, or (a LoRA rung) its base with the adapter applied."""
    import dataclasses

    from seedcli.models.adapters import check_base, check_fits
    from seedcli.models.loading import load

    lora = lora_base(path)
    if lora is None:
        return load(str(path), dtype=dtype, device=device)
    base, quantization = lora
    loaded = load(base, dtype=dtype, device=device, quantization=quantization)
    # Rungs of one family can share the adapted modules' shapes: compare the bases' sizes too.
    check_base([Path(path)], model=base, config=loaded.model.config, run=None)
    check_fits(loaded.model, [Path(path)], base=base, run=path)
    # Merged for speed; a 4/8-bit base keeps the adapter beside it.
    model = rundir.apply_adapters(loaded.model, [Path(path)], merge_last=quantization == "none")
    return dataclasses.replace(loaded, model=model)


def run(cfg: DetectRunConfig, reporter: Reporter) -> list[dict[str, Any]]:
    """Flag the options of every item in --input; returns the output records (written to --output if set)."""
    from seedcli.detect.infer import flagged, predict

    items = read_items(cfg.input)
    path, _, calibrated = detector_path(cfg.model, cfg.stage)
    loaded = load_detector(path, cfg.dtype, cfg.device)
    probs = predict(loaded, loaded.model, items, shifts=cfg.shifts, batch_size=cfg.batch_size, reporter=reporter)
    records = flagged(items, probs, calibrated if cfg.threshold is None else uniform(cfg.threshold))
    if cfg.output is not None:
        atomic.write_jsonl(cfg.output, records)
    return records


def eval_items(cfg: DetectEvaluateConfig) -> list[Item]:
    """The labelled items to score: --input files or the data directory's split."""
    from seedcli.detect.train import data_files, load_items

    files = list(cfg.input) or data_files(cfg.data, cfg.split, (), "--input")
    if not files:
        raise DataError(
            f"--data {cfg.data}: no detect/track1-{cfg.split}.jsonl or track2-{cfg.split}.jsonl; pass --input."
        )
    return load_items(files)


def evaluate(cfg: DetectEvaluateConfig, reporter: Reporter) -> dict[str, Any]:
    """Score every --model on the same items; McNemar of each against the first on per-question correctness."""
    from seedcli.detect.infer import flagged, predict, score
    from seedcli.evals.stats import paired_mcnemar

    started = time.monotonic()
    from seedcli.detect.infer import calibrate
    from seedcli.detect.train import data_files, load_items

    items = eval_items(cfg)
    dev: list[Item] = []
    if cfg.threshold is None and cfg.calibrate:
        dev = load_items(list(cfg.dev_input) or data_files(cfg.data, "dev", (), "--dev-input"))
        if not dev:
            raise DataError(
                f"--calibrate: no dev items (no detect/track*-dev.jsonl in --data {cfg.data}); "
                "pass --dev-input or --no-calibrate."
            )
    models: list[dict[str, Any]] = []
    vectors: list[list[bool]] = []
    for spec in cfg.model:
        path, label, stored = detector_path(spec)
        loaded = load_detector(path, cfg.dtype, cfg.device)
        if cfg.threshold is not None:
            thresholds = uniform(cfg.threshold)
        elif dev:
            dev_probs = predict(
                loaded, loaded.model, dev, shifts=cfg.shifts, batch_size=cfg.batch_size, reporter=reporter
            )
            thresholds = calibrate(dev, dev_probs)
        else:
            thresholds = stored
        probs = predict(loaded, loaded.model, items, shifts=cfg.shifts, batch_size=cfg.batch_size, reporter=reporter)
        scores, correct = score(items, probs, thresholds)
        entry: dict[str, Any] = {
            "model": str(spec),
            "label": label,
            "path": str(path),
            "thresholds": thresholds,
            **scores,
        }
        if vectors:
            entry["vs_reference"] = paired_mcnemar(correct, vectors[0])
        vectors.append(correct)
        models.append(entry)
        if cfg.out is not None:
            atomic.write_jsonl(
                Path(cfg.out) / f"predictions-{len(models) - 1}.jsonl", flagged(items, probs, thresholds)
            )
    results = {
        "items": len(items),
        "shifts": cfg.shifts,
        "threshold": cfg.threshold,
        "calibrated_on_dev": bool(dev),
        "models": models,
        "seconds": round(time.monotonic() - started, 1),
    }
    if cfg.out is not None:
        atomic.write_json(Path(cfg.out) / "results.json", results)
    return results


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and one row per model for the side-by-side table."""
    columns = ["model", "T1 F1", "T1 macro", "object", "attribute", "relation", "T1 AUC"]
    columns += ["T2 acc", "T2 F1", "T2 AUC", "p vs first"]
    rows = []
    for entry in results["models"]:
        t1, t2 = entry.get("track1"), entry.get("track2")
        row: list[Any] = [entry["label"]]
        if t1:
            row += [f"{t1['options']['f1']:.1f}", f"{t1['macro_f1']:.1f}"]
            row += [
                f"{t1['kinds'][k]['f1']:.1f}" if t1["kinds"][k]["n"] else "-"
                for k in ("object", "attribute", "relation")
            ]
            row.append(_percent(t1.get("macro_auc")))
        else:
            row += ["-"] * 6
        row += [f"{t2['accuracy']:.1f}", f"{t2['f1']:.1f}", _percent(t2.get("auc"))] if t2 else ["-"] * 3
        row.append(f"{entry['vs_reference']['p_value']:.3g}" if "vs_reference" in entry else "")
        rows.append(row)
    return columns, rows


def import_set(cfg: DetectImportConfig) -> dict[str, Any]:
    """Copy a validated external file (and its images) to DATA/detect/NAME.jsonl."""
    dest = Path(cfg.data) / "detect" / f"{cfg.name}.jsonl"
    if not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: no such directory; create it with `seed prepare` first.")
    if dest.exists() and not cfg.overwrite:
        raise ConfigError(f"--name {cfg.name}: {dest} exists; pass --overwrite to replace it.")
    if cfg.from_chair:
        from seedcli.detect.coco import items_from_chair_samples

        items, skipped = items_from_chair_samples(cfg.input, cfg.data, model=cfg.chair_model)
        write_items(dest, items)
        return {"out": str(dest), "items": len(items), "skipped": skipped}
    count = import_items(cfg.input, dest, image_root=cfg.images)
    return {"out": str(dest), "items": count}
