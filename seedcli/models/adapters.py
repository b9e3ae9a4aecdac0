"""Checks on a run's adapter before it is applied: readable weights, and the base model it was trained on.

PEFT attaches an adapter to any model whose module names match its target regex and copies the
weights in, so an adapter trained on another base can load without a word (same module names, same
sizes) or fail deep inside a processor. `merge`, `evaluate` and `demo` check first, with a message
that names the run and the model: the family recorded by `seed distill` against the given model's
family (from its config, before weights load), then every LoRA matrix against the module it targets
(names and in/out sizes, once the base is loaded).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from seedcli.errors import DataError, ModelError

WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# LoRA matrix suffix -> which size of the target module it must match: A is [r, in], B is [out, r].
LORA_MATRICES = {".lora_A.weight": ("in_features", 1), ".lora_B.weight": ("out_features", 0)}


def adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of an adapter's safetensors; an empty, truncated or garbled file is a DataError naming it."""
    from safetensors import safe_open

    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise DataError(f"{path}: adapter weights missing (interrupted? resume it with `seed distill --resume`).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for bad files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: corrupt adapter weights ({detail}); retrain or restore the run.") from None


def check_readable(chain: Iterable[Path]) -> None:
    """Fail before any model loads when an adapter of the chain cannot be read."""
    for adapter_dir in chain:
        adapter_shapes(adapter_dir)


def recorded_family(run: Any) -> str | None:
    """The model family a `seed distill` run recorded (None for runs that did not record one)."""
    family = run.config.get("resolved", {}).get("family")
    return str(family) if family else None


def trained_base(adapter_dir: Path) -> str | None:
    """The base model PEFT recorded in an adapter's adapter_config.json (a hub id or a path), if any."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def _local_config(name: str) -> Any | None:
    """The config of `name` when it is readable offline (a local directory or the hub cache), else None."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # unknown name, not cached, custom code: nothing to compare with
        return None


def _architecture(config: Any) -> tuple[str, tuple[str, ...]]:
    return str(getattr(config, "model_type", "")), tuple(getattr(config, "architectures", None) or ())


SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _size_pairs(theirs: Any, ours: Any) -> list[tuple[str, Any, Any]]:
    """(field, their size, our size) of the two configs' language models: two bases of one architecture can
    still differ there (a model family's sizes), and an adapter of the attention only may fit both."""
    a, b = (c.get_text_config() if hasattr(c, "get_text_config") else c for c in (theirs, ours))
    return [(field, getattr(a, field, None), getattr(b, field, None)) for field in SHAPE_FIELDS]


def check_base(chain: Sequence[Path], *, model: str, config: Any, run: Any) -> None:
    """Refuse `model` (with its loaded `config`) for adapters trained on a base of another architecture or size.

    Compared, without loading weights: the family the run recorded, and the architecture and language-model
    sizes of the base each adapter names in its adapter_config.json (when that base's config is readable
    offline).
    """
    from seedcli.models.families import family_for

    family = family_for(config.model_type).name
    trained = recorded_family(run) if run is not None else None
    where = run.root if run is not None else (chain[0].parent if chain else model)
    if trained is not None and trained != family:
        raise ModelError(
            f"{model!r} is a {family} model, but the adapter in {where} was trained on {run.base_model!r} "
            f"({trained}); pass that base model (or a local copy of it)."
        )
    given = _architecture(config)
    for adapter_dir in chain:
        base = trained_base(adapter_dir)
        other = _local_config(base) if base and base != model else None
        if other is None:
            continue
        if _architecture(other) != given:
            theirs, ours = _architecture(other), given
            raise ModelError(
                f"the adapter {adapter_dir} was trained on {base} ({'/'.join(theirs[1]) or theirs[0]}), but "
                f"{model!r} is a {'/'.join(ours[1]) or ours[0]}; pass the base model the adapter was trained on."
            )
        differ = ", ".join(f"{k} {a} vs {b}" for k, a, b in _size_pairs(other, config) if a != b)
        if differ:
            raise ModelError(
                f"the adapter {adapter_dir} was trained on another base model, {base}, whose sizes differ from "
                f"{model!r} ({differ}); pass the base model the adapter was trained on."
            )


def _sizes(model: Any) -> dict[str, tuple[int | None, int | None]]:
    return {
        name: (getattr(module, "in_features", None), getattr(module, "out_features", None))
        for name, module in model.named_modules()
    }


def check_fits(model: Any, chain: Sequence[Path], *, base: str, run: Path | str) -> None:
    """Refuse a loaded base whose modules do not match every LoRA matrix of the chain (name and size)."""
    sizes = _sizes(model)
    for adapter_dir in chain:
        for key, shape in adapter_shapes(adapter_dir).items():
            suffix = next((s for s in LORA_MATRICES if key.endswith(s)), None)
            if suffix is None or len(shape) != 2:
                continue
            name = key[: -len(suffix)].removeprefix(PEFT_PREFIX)
            attribute, axis = LORA_MATRICES[suffix]
            if name not in sizes:
                raise ModelError(
                    f"the adapter in {run} targets {name}, which {base!r} does not have: it was trained on "
                    "another base model; pass the run's base model."
                )
            expected = sizes[name][0 if attribute == "in_features" else 1]
            if expected is not None and expected != shape[axis]:
                raise ModelError(
                    f"the adapter in {run} was trained on another base model: {name} has {attribute}={expected} "
                    f"in {base!r} but {shape[axis]} in the adapter; pass the run's base model."
                )
