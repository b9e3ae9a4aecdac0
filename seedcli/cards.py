"""Model cards in the Hugging Face Hub's format (README.md with YAML metadata) for adapters and merges.

`seed distill` writes RUN/adapter/README.md; `seed merge` adds the same provenance to the card of the
merged directory. Metadata: `base_model` when the base is a hub id, `library_name` (peft for an
adapter), tags, `datasets` from the data directory's manifest, and `license` copied from the base
model's own card when a copy is on this machine (a local base directory or the hub cache); nothing
is guessed. The body gives the method and its settings and, when `seed evaluate` has evaluated the
run, the newest results: `seed evaluate` appends a line to RUN/evaluations.jsonl and refreshes the
adapter's card.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic, rundir

EVALUATIONS = "evaluations.jsonl"
CARD = "README.md"
TAGS = ("seedcli", "seed", "hallucination", "vision-language", "lora")
# What each kind of training data is on the hub.
DATASETS = {"llava-instruct": ("liuhaotian/LLaVA-Instruct-150K",)}
SETTING_KEYS = (
    "method", "noise_alpha", "noise_step", "identify", "beta_mode", "beta_values", "beta_quantiles", "purify_space",
    "divergence", "temperature", "distill_weight", "rounds", "epochs", "max_steps", "lr", "warmup_ratio", "batch_size",
    "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "seed",
)  # fmt: skip
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CHAIR_KEYS = ("chair_s_pct", "chair_i_pct", "recall_pct")
DETECTOR_KEYS = ("flagged_pct", "object_pct", "attribute_pct", "relation_pct", "captions_flagged_pct")


def base_hub_id(model: str) -> str | None:
    """The hub id of a base model name (alias or owner/name), None for tiny models and local directories."""
    from seedcli.models.families import ALIASES, TINY_MODELS

    if model in ALIASES:
        return ALIASES[model]
    if (
        model in TINY_MODELS
        or Path(model).expanduser().exists()
        or model.count("/") != 1
        or model.startswith((".", "/", "~"))
    ):
        return None
    return model


def _base_card_metadata(model: str, source: str | None) -> dict[str, Any]:
    """Metadata of the base model's own card, if a copy is on this machine (never downloads)."""
    candidates = [Path(source) / CARD] if source and Path(source).is_dir() else []
    hub_id = base_hub_id(model)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hub_id, CARD)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # an unusable cache is the same as no cache here
            pass
    for path in candidates:
        if path.is_file():
            from huggingface_hub import ModelCard

            try:
                return ModelCard.load(path).data.to_dict()
            except Exception:
                continue
    return {}


def _datasets(data: str) -> list[str]:
    manifest = Path(data) / "manifest.json"
    if not manifest.is_file():
        return []
    kind = json.loads(manifest.read_text(encoding="utf-8")).get("source", {}).get("kind")
    return list(DATASETS.get(kind, ()))


def metadata(run: rundir.Run, *, library: str) -> dict[str, Any]:
    """Card metadata for a run's adapter (library peft) or its merge (library transformers)."""
    settings = run.settings
    resolved = run.config.get("resolved", {})
    data: dict[str, Any] = {}
    hub_id = base_hub_id(run.base_model)
    if hub_id:
        data["base_model"] = hub_id
    license_ = _base_card_metadata(run.base_model, resolved.get("model_source")).get("license")
    if license_:
        data["license"] = license_
    data["library_name"] = library
    data["pipeline_tag"] = "image-text-to-text"
    data["tags"] = [*TAGS, "sft-baseline"] if settings.get("method") == "sft" else list(TAGS)
    datasets = _datasets(str(settings.get("data", "")))
    if datasets:
        data["datasets"] = datasets
    return data


def newest_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The newest `seed evaluate` results that include this run (from RUN/evaluations.jsonl), or None."""
    path = Path(run_dir) / EVALUATIONS
    if not path.is_file():
        return None
    for entry in reversed(atomic.read_jsonl(path)):
        results = Path(entry["results"])
        if results.is_file():
            return {"entry": entry, "results": json.loads(results.read_text(encoding="utf-8"))}
    return None


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def evaluation_section(run_dir: Path, subject: str = "this adapter") -> str:
    """Markdown with the newest evaluation of the run against its base, or a line saying there is none."""
    found = newest_evaluation(run_dir)
    if found is None:
        return (
            "## Evaluation\n\nNot evaluated yet: `seed evaluate --adapter RUN --pope all --chair` adds results here.\n"
        )
    entry, results = found["entry"], found["results"]
    label = entry["label"]
    protocol = (results.get("protocol") or {}).get("label", "")
    lines = [
        "## Evaluation",
        "",
        f"`seed evaluate` ({protocol}), {entry.get('created', '')}: `{entry['results']}`.",
        "",
    ]
    pope = results.get("pope") or {}
    if label in pope:
        lines += ["| POPE split | model | " + " | ".join(POPE_KEYS) + " |", "|---|---|" + "---|" * len(POPE_KEYS)]
        for split in pope[label]:
            for model in ("base", label):
                scored = pope.get(model, {}).get(split)
                if scored:
                    cells = " | ".join(_pct(scored["official"].get(k)) for k in POPE_KEYS)
                    lines.append(f"| {split} | {subject if model == label else 'base'} | {cells} |")
        lines.append("")
    chair = results.get("chair") or {}
    if label in chair:
        lines += ["| CHAIR | " + " | ".join(CHAIR_KEYS) + " |", "|---|" + "---|" * len(CHAIR_KEYS)]
        for model in ("base", label):
            if model in chair:
                cells = " | ".join(f"{chair[model][k]:.2f}" for k in CHAIR_KEYS)
                lines.append(f"| {subject if model == label else 'base'} | {cells} |")
        lines.append("")
    detector = results.get("detector") or {}
    flagged = detector.get("models") or {}
    if label in flagged:
        lines += [
            f"| detector `{detector['label']}` | " + " | ".join(DETECTOR_KEYS) + " |",
            "|---|" + "---|" * len(DETECTOR_KEYS),
        ]
        for model in ("base", label):
            if model in flagged:
                values = [flagged[model][k] for k in DETECTOR_KEYS]
                cells = " | ".join("-" if v is None else f"{v:.2f}" for v in values)
                lines.append(f"| {subject if model == label else 'base'} | {cells} |")
        lines.append("")
    note = "; detector: percent of caption options (or captions) flagged, lower is better." if label in flagged else "."
    lines.append("POPE in percent (official parser); CHAIR_s / CHAIR_i: lower is better" + note)
    return "\n".join(lines) + "\n"


def _settings_table(run: rundir.Run) -> str:
    settings, resolved = run.settings, run.config.get("resolved", {})
    rows = [f"| `{key}` | `{json.dumps(settings[key])}` |" for key in SETTING_KEYS if key in settings]
    for key in ("global_batch", "train_records", "noise_alpha"):
        if key in resolved:
            rows.append(f"| resolved `{key}` | `{json.dumps(resolved[key])}` |")
    return "| setting | value |\n|---|---|\n" + "\n".join(rows)


def _method(settings: Mapping[str, Any]) -> str:
    if settings.get("method") == "sft":
        return "the SFT baseline of SEED: the same LoRA adapter trained with cross-entropy only"
    return (
        "SEED (Self-Evolving Distillation, arXiv 2507.04680): the frozen model's logits on the clean image are "
        "purified with those on a noised image, (1 + beta) z(v) - beta z(v'), beta chosen from the model's "
        "confidence, and distilled back into a LoRA adapter with a mode-seeking reverse KL plus cross-entropy"
    )


def adapter_card(run_dir: Path) -> str:
    """The README.md of RUN/adapter: hub metadata, method, settings, newest evaluation, usage."""
    from huggingface_hub import ModelCard, ModelCardData

    run = rundir.open_run(run_dir, flag="RUN", require_complete=False)
    data = metadata(run, library="peft")
    settings = run.settings
    base = data.get("base_model", run.base_model)
    final = ((run.summary or {}).get("final") or {}).get("last") or {}
    trained = f"{final.get('step', '?')} optimizer steps per round" if final else "training not finished"
    rounds = int(settings.get("rounds", 1))
    chain = (
        f"\nThis directory holds round {rounds} of {rounds}: the evolved model is the base with rounds 1..{rounds - 1} "
        "merged in, then this adapter (the run's rounds/ directory; `seed merge RUN` builds it).\n"
        if rounds > 1
        else ""
    )
    body = f"""
# SEED adapter for {base}

A LoRA adapter that makes `{base}` hallucinate less, trained by seedcli {__version__} with
{_method(settings)}. {trained}.
{chain}
## Usage

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base}")
processor = AutoProcessor.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/or/repo/of/this/adapter")
```

`seed merge RUN --out DIR` folds it into the base model's weights; `seed evaluate --adapter RUN` measures it.

## Training settings

{_settings_table(run)}

{evaluation_section(run_dir)}"""
    return str(ModelCard("---\n" + ModelCardData(**data).to_yaml() + "\n---\n" + body))


def write_adapter_card(run_dir: Path) -> Path:
    """Write RUN/adapter/README.md (atomically) and return its path."""
    path = Path(run_dir) / rundir.ADAPTER / CARD
    atomic.write_text(path, adapter_card(run_dir))
    return path


def enrich_merged_card(card: str, run_dir: Path | None) -> str:
    """The merged model's card plus the run's license, datasets and newest evaluation (unchanged without a run)."""
    if run_dir is None:
        return card
    from huggingface_hub import ModelCard

    run = rundir.open_run(run_dir, flag="RUN_DIR", require_complete=False)
    parsed = ModelCard(card)
    extra = metadata(run, library="transformers")
    for key in ("license", "datasets"):
        if key in extra:
            setattr(parsed.data, key, extra[key])
    parsed.text = parsed.text.rstrip() + "\n\n" + evaluation_section(run_dir, "the adapter (merged here)")
    return str(parsed)


def record_evaluation(results: Mapping[str, Any]) -> list[Path]:
    """After `seed evaluate`: note the results in each evaluated run and refresh its adapter card."""
    written = []
    path = str(Path(results["out"]).resolve() / "results.json")
    for model in results.get("models") or []:
        run = model.get("run")
        if not run or not (Path(run) / rundir.SUMMARY).is_file():
            continue
        created = results.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic.append_jsonl(Path(run) / EVALUATIONS, {"results": path, "label": model["label"], "created": created})
        if (Path(run) / rundir.ADAPTER / "adapter_config.json").is_file():
            written.append(write_adapter_card(Path(run)))
    return written
