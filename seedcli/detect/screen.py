"""Screening generated texts with a trained detector: options read from each text, flagged with its image.

Shared by `seed evaluate --detector` (CHAIR captions) and `seed prepare --filter-with` (training
answers). A detector is checked before anything is written (`open_detector`: a `seed detect train`
run whose tokenizer and processor load), loaded once, and run over Track 1 items built by
`seedcli.detect.extract` with the same inference as `seed detect run` (mapping shifts, the run's
dev-calibrated threshold unless one is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli.detect.items import OPTION_KINDS
from seedcli.errors import ModelError, SeedError
from seedcli.reporting import Reporter


@dataclass(frozen=True)
class Detector:
    """A checked detector: where its model is, how it is named, and how it flags."""

    spec: str
    label: str
    path: Path
    thresholds: dict[str, float]
    shifts: int
    flag: str

    def describe(self) -> dict[str, Any]:
        """What results and manifests record about the detector."""
        return {
            "run": self.spec,
            "label": self.label,
            "path": str(self.path),
            "shifts": self.shifts,
            "threshold": self.thresholds["track1"],
            # Per option kind where calibration found one (else "threshold" applies).
            "thresholds": {k: v for k, v in self.thresholds.items() if k in OPTION_KINDS},
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def open_detector(spec: str | Path, *, flag: str, shifts: int, threshold: float | None) -> Detector:
    """Check RUN or RUN@STAGE (a `seed detect train` run, exit 3 otherwise) and that its processor loads (exit 4)."""
    from seedcli.detect.infer import uniform
    from seedcli.detect.runner import detector_path, lora_base

    path, label, stored = detector_path(spec, flag=flag)
    lora = lora_base(path)  # a LoRA rung keeps only its adapter: the tokenizer and processor are its base's
    try:
        from seedcli.models.families import family_for, resolve
        from seedcli.models.loading import load_processor, model_config

        source = str(path) if lora is None else resolve(lora[0]).source
        load_processor(source, family_for(model_config(source).model_type))
    except Exception as exc:  # noqa: BLE001 - any failure to read the tokenizer/processor is the same error
        reason = str(exc) if isinstance(exc, SeedError) else _first_line(exc)
        raise ModelError(
            f"{flag} {spec}: cannot load the detector's tokenizer/processor in {path} ({reason})."
        ) from None
    return Detector(str(spec), label, path, stored if threshold is None else uniform(threshold), shifts, flag)


def load_detector(detector: Detector, *, dtype: str, device: str) -> Any:
    """The detector's model (a LoRA rung: its base with the adapter) and processor, as `seed detect run` loads them."""
    from seedcli.detect import runner

    try:
        return runner.load_detector(detector.path, dtype, device)
    except SeedError:
        raise
    except Exception as exc:  # noqa: BLE001 - broken weights end the command with one line
        raise ModelError(f"{detector.flag} {detector.spec}: cannot load the detector ({_first_line(exc)}).") from None


def screen(
    detector: Detector,
    loaded: Any,
    texts: list[tuple[str, Path]],
    *,
    batch_size: int,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """Flag the options of every (text, image): one `seed detect run` record per text, plus `truncated`.

    Each record is {"options": [{id, text, kind, p_hallucinated, hallucinated}], "hallucinated": [ids],
    "truncated": n}; a text without options gets empty lists and is not sent to the model.
    """
    from seedcli.detect.extract import MAX_OPTIONS, extract_options
    from seedcli.detect.infer import flagged, predict
    from seedcli.detect.items import Item

    items, where, truncated = [], [], []
    for index, (text, image) in enumerate(texts):
        extraction = extract_options(text, limit=MAX_OPTIONS)
        truncated.append(extraction.truncated)
        if extraction.options:
            items.append(Item(str(index), Path(image), 1, text, None, extraction.options))
            where.append(index)
    records: list[dict[str, Any]] = [{"options": [], "hallucinated": [], "truncated": n} for n in truncated]
    if items:
        probs = predict(
            loaded, loaded.model, items, shifts=detector.shifts, batch_size=batch_size, reporter=reporter
        )
        for index, record in zip(where, flagged(items, probs, detector.thresholds)):
            records[index] = {
                "options": record["options"],
                "hallucinated": record["hallucinated"],
                "truncated": truncated[index],
            }
    return records


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def rates(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of flagged options (per kind and overall) and of texts with a flagged option, in percent.

    Texts without options count in `n_captions` and `n_no_options` (and as not flagged); a share over
    nothing is None.
    """
    kinds: dict[str, dict[str, Any]] = {}
    for kind in OPTION_KINDS:
        options = [o for r in records for o in r["options"] if o["kind"] == kind]
        flagged = sum(o["hallucinated"] for o in options)
        kinds[kind] = {"n": len(options), "flagged": flagged, "flagged_pct": _pct(flagged, len(options))}
    n_options = sum(k["n"] for k in kinds.values())
    n_flagged = sum(k["flagged"] for k in kinds.values())
    flagged_captions = sum(1 for r in records if r["hallucinated"])
    return {
        "n_captions": len(records),
        "n_no_options": sum(1 for r in records if not r["options"]),
        "n_truncated_options": sum(r["truncated"] for r in records),
        "n_options": n_options,
        "n_flagged": n_flagged,
        "flagged_pct": _pct(n_flagged, n_options),
        "kinds": kinds,
        "n_flagged_captions": flagged_captions,
        "captions_flagged_pct": _pct(flagged_captions, len(records)),
    }
