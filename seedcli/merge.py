"""`seed merge`: fold a run's adapter chain into its base model and ship a plain transformers model.

What is written to `--out` (through a staged directory, renamed only after verification):
safetensors weights (sharded above `--max-shard-size`), config.json (with a `seedcli_merge`
marker), generation_config.json, the processor with tokenizer and chat template, and a model card
README.md with the run's SEED settings. The directory loads with
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.

Verification: on a probe batch (two synthetic images, two prompts, rendered with the chat template
and the processor), logits of the base with the adapter chain attached are compared with logits of
the saved directory reloaded from disk, at every attended position. The merge passes when
max |merged - attached| <= atol + rtol * max |attached| with (atol, rtol) from `TOLERANCES` for
the merge dtype: the float rounding of W + BA versus W x + B(A x) grows with the precision's epsilon.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic
from seedcli.config.merge import MergeConfig
from seedcli.errors import ConfigError, DataError, ModelError
from seedcli.reporting import Reporter

# (atol, rtol) of the logit check per merge dtype; see the module docstring.
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 2e-2)}
PROBE_PROMPTS = ("Please describe this image in detail.", "Is there a dog in the image?")
PROBE_IMAGE_SIZE = 64
MARKER_KEY = "seedcli_merge"
CARD_TAG = "seedcli-merged"
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# Adapter-config fields shown in the model card of a foreign PEFT adapter.
PEFT_CARD_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path")


@dataclass(frozen=True)
class Source:
    """What is merged: a base model and the adapters applied to it, in order."""

    kind: str  # "run" | "peft"
    root: Path
    base_model: str
    chain: tuple[Path, ...]
    settings: dict[str, Any]
    quantization: str  # what the adapter was trained on: none | 4bit | 8bit
    trust_remote_code: bool
    chat_template: str | None
    run: Any | None = None  # seedcli.rundir.Run when kind == "run"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}.") from None


def merged_marker(path: Path) -> dict[str, Any] | None:
    """The seedcli merge marker of a model directory (config.json or model card), None if it has none."""
    path = Path(path)
    config = path / "config.json"
    if config.is_file():
        marker = _read_json(config).get(MARKER_KEY)
        if isinstance(marker, dict):
            return marker
    card = path / "README.md"
    if card.is_file():
        head = card.read_text(encoding="utf-8").split("\n---", 1)[0]
        if head.startswith("---") and f"- {CARD_TAG}" in head:
            return {"source": None}
    return None


def _chat_template(resolved: dict[str, Any]) -> str | None:
    """The template text a run recorded, when it recorded text (not just a name)."""
    template = resolved.get("chat_template")
    if isinstance(template, str) and ("{%" in template or "{{" in template):
        return template
    return None


def resolve_source(cfg: MergeConfig) -> Source:
    """Identify RUN_DIR as a seedcli run or a foreign PEFT adapter directory."""
    from seedcli.rundir import CONFIG, open_run

    root = Path(cfg.run_dir)  # type: ignore[arg-type]
    if not root.is_dir():
        raise DataError(f"RUN_DIR {root}: no such directory.")
    config_path = root / CONFIG
    if config_path.is_file() and "command" in _read_json(config_path):
        run = open_run(root, flag="RUN_DIR")
        settings = run.settings
        return Source(
            kind="run",
            root=root,
            base_model=cfg.model or run.base_model,
            chain=tuple(run.adapter_chain()),
            settings=settings,
            quantization=str(settings.get("quantization", "none")),
            trust_remote_code=cfg.trust_remote_code or bool(settings.get("trust_remote_code", False)),
            chat_template=_chat_template(run.config.get("resolved", {})),
            run=run,
        )
    adapter_config = root / "adapter_config.json"
    if adapter_config.is_file():
        peft_settings = _read_json(adapter_config)
        if cfg.model is None:
            named = peft_settings.get("base_model_name_or_path")
            hint = f" (its adapter_config.json names {named!r})" if named else ""
            raise ConfigError(f"--model is required for the PEFT adapter directory {root}: pass its base model{hint}.")
        return Source(
            kind="peft",
            root=root,
            base_model=cfg.model,
            chain=(root,),
            settings={k: peft_settings[k] for k in PEFT_CARD_FIELDS if k in peft_settings},
            quantization="none",
            trust_remote_code=cfg.trust_remote_code,
            chat_template=None,
        )
    raise DataError(
        f"RUN_DIR {root} is neither a seedcli run directory (config.json of `seed distill`) nor a PEFT adapter "
        "directory (adapter_config.json)."
    )


def _checkpoint_quantization(base_config: Any) -> str:
    """none | 4bit | 8bit for a checkpoint stored quantized (its config has a quantization_config)."""
    quant = getattr(base_config, "quantization_config", None)
    if not quant:
        return "none"
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    if quant.get("load_in_4bit"):
        return "4bit"
    if quant.get("load_in_8bit"):
        return "8bit"
    method = quant.get("quant_method", "unknown")
    raise ModelError(
        f"the base checkpoint is quantized with {method!r}; seed merge can dequantize only bitsandbytes 4/8-bit "
        "bases; pass --model with a full-precision base."
    )


def quantization_to_load(source: Source, base_config: Any, dequantize: bool) -> str:
    """How the base must be loaded for the merge; refuses a 4/8-bit base without --dequantize."""
    stored = _checkpoint_quantization(base_config)
    quant = stored if stored != "none" else source.quantization
    if quant == "none":
        return "none"
    if not dequantize:
        where = "the base checkpoint is stored" if stored != "none" else "the run trained its adapter on a base loaded"
        raise ConfigError(
            f"{where} in {quant}; merging into {quant} weights would round the adapter away. "
            "Pass --dequantize to load it as trained, dequantize to --dtype and merge there."
        )
    return quant


def _stored_dtype(base_config: Any) -> str:
    """The dtype name the checkpoint records (fp32 when it records none)."""
    dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return DTYPE_NAMES.get(name, "fp32")


def probe_images() -> list[Any]:
    """Two deterministic, visibly different RGB images (gradients and blocks)."""
    import numpy as np
    from PIL import Image

    size = PROBE_IMAGE_SIZE
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    first = np.stack(
        [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 96.0)], axis=-1
    )
    second = np.zeros((size, size, 3))
    half = size // 2
    second[:half, :half] = (220, 40, 40)
    second[half:, half:] = (40, 40, 220)
    second[:half, half:] = (40, 200, 60)
    return [Image.fromarray(img.astype(np.uint8), "RGB") for img in (first, second)]


def probe_batch(processor: Any, family: Any, device: Any) -> dict[str, Any]:
    """The probe prompts with their images, rendered and collated (left padding) on `device`."""
    from seedcli.models.chat import collate, encode_prompt

    samples = [encode_prompt(processor, family, prompt, image) for prompt, image in zip(PROBE_PROMPTS, probe_images())]
    batch = collate(samples, pad_id=processor.tokenizer.pad_token_id or 0, padding_side="left")
    batch.pop("labels")
    return {k: v.to(device) for k, v in batch.items()}


def probe_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Float32 logits [N, V] at the attended positions of the probe batch (on CPU)."""
    import torch

    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits  # [B, L, V]
    return logits[batch["attention_mask"].bool()].float().cpu()


def compare_logits(merged: Any, attached: Any, base: Any, dtype: str) -> dict[str, Any]:
    """The verification readout: deviation of merged from attached, its bound, and the adapter's effect."""
    atol, rtol = TOLERANCES[dtype]
    deviation = float((merged - attached).abs().max())
    bound = atol + rtol * float(attached.abs().max())
    effect = float((attached - base).abs().max())
    return {
        "max_abs_diff": deviation,
        "bound": bound,
        "atol": atol,
        "rtol": rtol,
        "adapter_effect": effect,
        "positions": int(attached.shape[0]),
        "passed": deviation <= bound,
    }


def _dequantized(model: Any, torch_dtype: Any) -> Any:
    """A bitsandbytes model with its weights dequantized to `torch_dtype`."""
    try:
        model = model.dequantize()
    except Exception as exc:  # bitsandbytes raises several types
        raise ModelError(
            f"--dequantize failed ({type(exc).__name__}: {exc}); pass --model with a full-precision base instead."
        ) from None
    return model.to(torch_dtype)


def _settings_rows(source: Source) -> list[tuple[str, Any]]:
    """Model-card settings: the run's SEED, adapter and training fields, or the adapter config."""
    if source.kind != "run":
        return list(source.settings.items())
    from seedcli.config.distill import LORA, SEED_PANEL, TRAIN, DistillConfig

    shown = {f.name for f in dataclasses.fields(DistillConfig) if f.metadata.get("panel") in (SEED_PANEL, LORA, TRAIN)}
    keep = ("model", "method", "data", "dtype", "quantization")
    return [(k, v) for k, v in source.settings.items() if k in shown or k in keep]


def model_card(
    source: Source,
    *,
    base_hub_id: str | None,
    dtype: str,
    verification: dict[str, Any],
    processor_class: str,
    date: str,
) -> str:
    """The README.md of a merged model: metadata, provenance, SEED settings, verification, usage."""
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text"]
    if base_hub_id:
        front.append(f"base_model: {base_hub_id}")
    front += ["tags:", "- seedcli", f"- {CARD_TAG}", "- seed", "- hallucination", "---", ""]
    adapters = "\n".join(f"  - `{path}`" for path in source.chain)
    rows = "\n".join(f"| `{key}` | `{json.dumps(value)}` |" for key, value in _settings_rows(source))
    origin = "seedcli run" if source.kind == "run" else "PEFT adapter directory"
    note = ""
    if processor_class.startswith("Qwen2VLImageOnly"):
        note = (
            "\nThe processor is seedcli's image-only Qwen2-VL processor: "
            "`import seedcli.models.qwen2vl_processor` before `AutoProcessor.from_pretrained`.\n"
        )
    body = f"""# {source.base_model} + SEED (merged)

`{source.base_model}` with its SEED (Self-Evolving Distillation, arXiv 2507.04680) hallucination
elimination adapter merged into the weights by seedcli {__version__} on {date}. It has the base
model's architecture and cost at inference.

## Source

- {origin}: `{source.root.resolve()}`
- base model: `{source.base_model}`
- adapters, applied in order:
{adapters}
- merged dtype: {dtype}

## Settings

| setting | value |
|---|---|
{rows}

## Verification

On a probe batch ({verification["positions"]} attended positions), the logits of this directory,
reloaded from disk, differ from the base with the adapter attached by at most
{verification["max_abs_diff"]:.3g} (bound {verification["bound"]:.3g} = {verification["atol"]:g} + \
{verification["rtol"]:g} x max |logit|);
the adapter itself moves the logits by up to {verification["adapter_effect"]:.3g}.

## Usage

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("path/to/this/directory")
processor = AutoProcessor.from_pretrained("path/to/this/directory")
```
{note}"""
    return "\n".join(front) + body


def _check_no_adapter_keys(out: Path) -> None:
    """Refuse a saved directory that still holds adapter tensors (a merge that did not unload)."""
    from safetensors import safe_open

    for shard in out.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            leftover = [key for key in handle.keys() if "lora_" in key]
        if leftover:
            raise ModelError(
                f"the merged weights still hold adapter tensors ({leftover[0]}, ...); nothing was written to --out."
            )


def _merge_and_save(
    cfg: MergeConfig, source: Source, dtype: str, quant: str, stage: Path, reporter: Reporter
) -> tuple[Any, Any, Any, Any]:
    """Load, attach, merge and save into `stage`; returns (probe batch, attached and base logits, processor class)."""
    from seedcli.models.adapters import check_fits
    from seedcli.models.loading import load
    from seedcli.rundir import apply_adapters

    reporter.info(
        f"loading base {source.base_model} ({dtype}{', ' + quant + ' then dequantized' if quant != 'none' else ''})"
    )
    loaded = load(
        source.base_model,
        dtype=dtype,
        device=cfg.device,
        quantization=quant,
        trust_remote_code=source.trust_remote_code,
    )
    model = _dequantized(loaded.model, loaded.dtype) if quant != "none" else loaded.model
    if quant != "none":
        reporter.warn(
            f"the adapter was trained on a {quant} base; the merged model carries that base's dequantized weights."
        )
    batch = probe_batch(loaded.processor, loaded.family, loaded.device)
    base = probe_logits(model, batch)
    check_fits(model, source.chain, base=source.base_model, run=source.root)
    reporter.info(f"applying {len(source.chain)} adapter(s): {', '.join(str(p) for p in source.chain)}")
    attached_model = apply_adapters(model, list(source.chain), merge_last=False)
    attached = probe_logits(attached_model, batch)
    merged = attached_model.merge_and_unload()
    reporter.info(f"saving to {stage.name} (shards up to {cfg.max_shard_size})")
    merged.save_pretrained(stage, max_shard_size=cfg.max_shard_size)
    processor = loaded.processor
    if source.chat_template:
        processor.chat_template = source.chat_template
    processor.save_pretrained(stage)
    return {k: v.cpu() for k, v in batch.items()}, attached, base, type(processor).__name__


def _write_marker(stage: Path, marker: dict[str, Any]) -> None:
    config = _read_json(stage / "config.json")
    config[MARKER_KEY] = marker
    atomic.write_json(stage / "config.json", config)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merge(cfg: MergeConfig, reporter: Reporter) -> dict[str, Any]:
    """Merge RUN_DIR's adapter chain into its base, verify the saved directory, return a summary."""
    from seedcli.models.adapters import check_base, check_readable
    from seedcli.models.families import resolve
    from seedcli.models.loading import load, model_config

    started = time.monotonic()
    run_dir, out = Path(cfg.run_dir), Path(cfg.out)  # type: ignore[arg-type]
    marker = merged_marker(run_dir) if run_dir.is_dir() else None
    if marker is not None:
        reporter.info(f"{run_dir} is already a merged model (seedcli merge marker); nothing to do.")
        return {
            "status": "already-merged",
            "out": str(run_dir.resolve()),
            "merged_from": marker.get("source"),
            "seconds": round(time.monotonic() - started, 3),
        }
    source = resolve_source(cfg)
    check_readable(source.chain)
    atomic.prepare_output_dir(out, overwrite=cfg.overwrite)
    ref = resolve(source.base_model)
    base_config = model_config(ref.source, trust_remote_code=source.trust_remote_code)
    check_base(source.chain, model=source.base_model, config=base_config, run=source.run)
    quant = quantization_to_load(source, base_config, cfg.dequantize)
    if cfg.dequantize and quant == "none":
        reporter.info("--dequantize: the base is not quantized; merging in full precision as usual.")
    dtype = _stored_dtype(base_config) if cfg.dtype == "base" else cfg.dtype
    date = _dt.datetime.now(_dt.timezone.utc).date().isoformat()

    with atomic.staged_dir(out, overwrite=cfg.overwrite) as stage:
        batch, attached, base, processor_class = _merge_and_save(cfg, source, dtype, quant, stage, reporter)
        _free_memory()
        _write_marker(
            stage,
            {
                "seedcli_version": __version__,
                "source": str(source.root.resolve()),
                "kind": source.kind,
                "base_model": source.base_model,
                "adapters": [str(p.resolve()) for p in source.chain],
                "dtype": dtype,
                "date": date,
            },
        )
        _check_no_adapter_keys(stage)
        reporter.info("verifying the saved directory against the attached adapter")
        reloaded = load(str(stage), dtype=dtype, device=cfg.device, trust_remote_code=source.trust_remote_code)
        again = probe_batch(reloaded.processor, reloaded.family, "cpu")
        if set(again) != set(batch) or not all(
            again[k].shape == batch[k].shape and bool((again[k] == batch[k]).all()) for k in batch
        ):
            raise ModelError(
                "the saved processor encodes the probe differently from the base's; nothing was written to --out."
            )
        merged = probe_logits(reloaded.model, {k: v.to(reloaded.device) for k, v in batch.items()})
        del reloaded
        verification = compare_logits(merged, attached, base, dtype)
        if not verification["passed"]:
            raise ModelError(
                "verification failed: merged logits differ from the attached adapter by "
                f"{verification['max_abs_diff']:.3g} "
                f"(> {verification['bound']:.3g} allowed for {dtype}); nothing was written to --out."
            )
        if verification["adapter_effect"] <= verification["bound"]:
            reporter.warn(
                f"the adapter moves the probe logits by only {verification['adapter_effect']:.3g}, within the {dtype} "
                "tolerance; the check cannot tell merged from base (use --dtype fp32 for a sharper check)."
            )
        base_hub_id = ref.source if ref.kind in ("hub", "alias") else None
        card = model_card(
            source,
            base_hub_id=base_hub_id,
            dtype=dtype,
            verification=verification,
            processor_class=processor_class,
            date=date,
        )
        from seedcli.cards import enrich_merged_card

        atomic.write_text(stage / "README.md", enrich_merged_card(card, source.root if source.kind == "run" else None))
        files = sorted(p.name for p in stage.iterdir())
    return {
        "status": "merged",
        "out": str(out.resolve()),
        "source": str(source.root),
        "kind": source.kind,
        "base_model": source.base_model,
        "adapters": [str(p) for p in source.chain],
        "dtype": dtype,
        "dequantized_from": quant if quant != "none" else None,
        "verification": verification,
        "files": files,
        "seconds": round(time.monotonic() - started, 3),
    }
