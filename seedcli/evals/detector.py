"""`seed evaluate --detector RUN`: the share of caption options a trained detector flags, beyond CHAIR's objects.

After the CHAIR captions are generated and scored, every caption of this invocation is read into a
Track 1 item (objects, attributes and relations, `seedcli.detect.extract`), the detector flags its
options with the caption's image, and each model gets the share of flagged options per kind and
overall and the share of captions with at least one flagged option (`seedcli.detect.screen.rates`),
averaged over sampling seeds like CHAIR. The CHAIR rows of samples.jsonl get a `detector` field with
each option, its P(hallucinated) and its flag.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.config.evaluate import EvaluateConfig
from seedcli.detect.screen import Detector
from seedcli.reporting import Reporter

FLAG = "--detector"
# Flat names of the rates a model block holds (percent; None where nothing was counted).
RATES = ("flagged_pct", "object_pct", "attribute_pct", "relation_pct", "captions_flagged_pct")
TABLE_ROWS = (
    ("flagged_pct", "options flagged %"),
    ("object_pct", "objects flagged %"),
    ("attribute_pct", "attributes flagged %"),
    ("relation_pct", "relations flagged %"),
    ("captions_flagged_pct", "captions flagged %"),
)


def open_for(cfg: EvaluateConfig) -> Detector | None:
    """The checked --detector of this run (before anything is written), or None without one."""
    if cfg.detector is None:
        return None
    from seedcli.detect.screen import open_detector

    return open_detector(cfg.detector, flag=FLAG, shifts=cfg.detector_shifts, threshold=cfg.detector_threshold)


def _flat(scored: dict[str, Any]) -> dict[str, float | None]:
    kinds = scored["kinds"]
    return {
        "flagged_pct": scored["flagged_pct"],
        "object_pct": kinds["object"]["flagged_pct"],
        "attribute_pct": kinds["attribute"]["flagged_pct"],
        "relation_pct": kinds["relation"]["flagged_pct"],
        "captions_flagged_pct": scored["captions_flagged_pct"],
    }


def _mean(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), (statistics.stdev(known) if len(known) > 1 else 0.0)


def block(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed-averaged rates of one model with their spread; each seed's full counts kept."""
    flats = [_flat(s) for s in per_seed]
    out: dict[str, Any] = {"n_captions": per_seed[0]["n_captions"], "seeds": [s["seed"] for s in per_seed]}
    out.update({key: _mean([f[key] for f in flats])[0] for key in RATES})
    out["spread"] = {key: _mean([f[key] for f in flats])[1] for key in RATES}
    out["n_no_options"] = statistics.fmean(s["n_no_options"] for s in per_seed)
    out["n_options"] = statistics.fmean(s["n_options"] for s in per_seed)
    out["per_seed"] = per_seed
    return out


def screen_captions(
    detector: Detector,
    cfg: EvaluateConfig,
    labels: Sequence[str],
    chair: Sequence[dict[str, Any]],
    data: Any,
    samples: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    """Flag the options of every CHAIR caption of this invocation; annotate samples.jsonl; per-model blocks."""
    from seedcli.detect.screen import load_detector, rates, screen
    from seedcli.evals.runner import decodings

    seeds = [str(d.seed) for d in decodings(cfg, cfg.max_new_tokens_chair)]
    ids = [str(r["image_id"]) for r in chair]
    wanted = {(label, seed, i) for label in labels for seed in seeds for i in ids}
    rows = atomic.read_jsonl(samples)
    chosen = [
        n
        for n, row in enumerate(rows)
        if row.get("benchmark") == "chair" and (str(row["model"]), str(row["seed"]), str(row["id"])) in wanted
    ]
    texts = [(str(rows[n]["output"]), data.resolve_image("chair", str(rows[n]["image"]))) for n in chosen]
    loaded = load_detector(detector, dtype=cfg.dtype, device=cfg.device)
    records = screen(detector, loaded, texts, batch_size=cfg.batch_size, reporter=reporter)
    del loaded
    got: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for n, record in zip(chosen, records):
        rows[n]["detector"] = {"label": detector.label, **record}
        got.setdefault((str(rows[n]["model"]), str(rows[n]["seed"])), {})[str(rows[n]["id"])] = record
    atomic.write_jsonl(samples, rows)
    models: dict[str, Any] = {}
    for label in labels:
        per_seed = []
        for seed in seeds:
            found = got.get((label, seed), {})
            if all(i in found for i in ids):  # an incomplete part is an error CHAIR already records
                per_seed.append({"seed": int(seed), **rates([found[i] for i in ids])})
        if per_seed:
            models[label] = block(per_seed)
    return {**detector.describe(), "models": models}


def add_comparisons(comparisons: dict[str, Any], detector: dict[str, Any] | None, baseline: str) -> None:
    """Each adapter's detector rates minus the base model's (None where either is None)."""
    models = (detector or {}).get("models", {})
    for label, entry in comparisons.items():
        new, old = models.get(label), models.get(baseline)
        entry["detector"] = (
            {
                "delta": {
                    key: None if new[key] is None or old[key] is None else new[key] - old[key] for key in RATES
                }
            }
            if new and old
            else None
        )


def _cell(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" ±{spread:.2f}" if spread else "")


def summary_table(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The detector table (models side by side, then each adapter's delta), or none without --detector."""
    detector = results.get("detector") or {}
    models = detector.get("models") or {}
    if not models:
        return []
    labels = list(models)
    comparisons = results.get("comparisons") or {}
    adapters = [label for label in labels if (comparisons.get(label) or {}).get("detector")]
    rows = []
    for key, name in TABLE_ROWS:
        cells = [_cell(models[label][key], models[label]["spread"][key]) for label in labels]
        deltas = [comparisons[a]["detector"]["delta"][key] for a in adapters]
        rows.append([name, *cells, *(f"{d:+.2f}" if d is not None else "-" for d in deltas)])
    for key, name in (("n_options", "options"), ("n_no_options", "captions without options")):
        rows.append([name, *(f"{models[label][key]:g}" for label in labels), *([""] * len(adapters))])
    title = f"Detector {detector['label']} ({detector['shifts']} shift(s))"
    return [(title, ["metric", *labels, *(f"Δ {a}" for a in adapters)], rows)]
