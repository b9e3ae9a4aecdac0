"""The one table of model-family quirks, and name resolution (alias, hub id, local dir, tiny)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from seedcli.errors import ModelError


@dataclass(frozen=True)
class Family:
    """What seedcli must know about a vision-language model family."""

    name: str
    model_types: tuple[str, ...]
    # Regex (re.search) that matches module names inside the language model's decoder layers.
    language_layers: str
    # Attention projections that take the adapter, inside the language model only.
    attention_projections: tuple[str, ...]
    # Modules kept out of 4/8-bit quantization (vision tower, projector, head).
    skip_quantization: tuple[str, ...]
    # Whether an EOS token is appended to assistant turns whose template ends them without one.
    append_eos_to_assistant: bool
    # Processor outputs that are per-token (padded with the batch), besides input_ids/attention_mask.
    token_inputs: tuple[str, ...] = ()
    # The processor output that carries the image (the tensor VCD and SEED add noise to).
    vision_key: str = "pixel_values"
    # Whether the model takes multimodal RoPE positions [3, B, L] from its `get_rope_index` (Qwen2-VL),
    # rather than one position per token.
    multimodal_rope: bool = False

    def lora_target_regex(self, projections: tuple[str, ...] | None = None) -> str:
        """PEFT `target_modules` regex (full match) for the language model's attention projections."""
        names = "|".join(re.escape(p) for p in (projections or self.attention_projections))
        return rf".*{self.language_layers}\.\d+\.self_attn\.({names})"


FAMILIES: dict[str, Family] = {
    "llava": Family(
        name="llava",
        model_types=("llava",),
        language_layers=r"language_model\.layers",
        attention_projections=("q_proj", "k_proj", "v_proj", "o_proj"),
        skip_quantization=("vision_tower", "multi_modal_projector", "lm_head"),
        append_eos_to_assistant=True,
    ),
    "qwen2-vl": Family(
        name="qwen2-vl",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        language_layers=r"language_model\.layers",
        attention_projections=("q_proj", "k_proj", "v_proj", "o_proj"),
        skip_quantization=("visual", "lm_head"),
        append_eos_to_assistant=False,
        token_inputs=("mm_token_type_ids",),
        multimodal_rope=True,
    ),
    "internvl": Family(
        name="internvl",
        model_types=("internvl",),
        language_layers=r"language_model\.layers",
        attention_projections=("q_proj", "k_proj", "v_proj", "o_proj"),
        skip_quantization=("vision_tower", "multi_modal_projector", "lm_head"),
        append_eos_to_assistant=False,
    ),
    "idefics3": Family(
        name="idefics3",
        model_types=("idefics3", "smolvlm"),
        language_layers=r"text_model\.layers",
        attention_projections=("q_proj", "k_proj", "v_proj", "o_proj"),
        skip_quantization=("vision_model", "connector", "lm_head"),
        append_eos_to_assistant=False,
    ),
}

TINY_MODELS = (
    "tiny-llava",
    "tiny-qwen2-vl",
    "tiny-qwen2-vl-s",  # the three rungs of the detection pyramid (seed detect)
    "tiny-qwen2-vl-m",
    "tiny-qwen2-vl-l",
    "tiny-qwen2-vl-s-world",  # the same rungs after world pretraining (seedcli.detect.pretrain)
    "tiny-qwen2-vl-m-world",
    "tiny-qwen2-vl-l-world",
    "tiny-qwen2-vl-m-grown-world",  # a medium rung grown from tiny-qwen2-vl-s-world, then pretrained again
)

ALIASES: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-32b": "Qwen/Qwen2.5-VL-32B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
    "internvl3-1b": "OpenGVLab/InternVL3-1B-hf",
    "internvl3-2b": "OpenGVLab/InternVL3-2B-hf",
    "internvl3-8b": "OpenGVLab/InternVL3-8B-hf",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-2b": "HuggingFaceTB/SmolVLM-Instruct",
    "idefics3-8b": "HuggingFaceM4/Idefics3-8B-Llama3",
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: what the user typed and what `from_pretrained` receives."""

    name: str
    source: str  # hub id or local directory
    kind: str  # "alias" | "tiny" | "local" | "hub"


def resolve(name: str) -> ModelRef:
    """Resolve an alias, a tiny model, a local directory or a hub id (no network here)."""
    if not name or not name.strip():
        raise ModelError("--model is empty; pass an alias (e.g. llava-1.5-7b), a hub id or a local directory.")
    if name in TINY_MODELS:
        from seedcli.models.tiny import ensure_tiny

        return ModelRef(name=name, source=str(ensure_tiny(name)), kind="tiny")
    if name in ALIASES:
        return ModelRef(name=name, source=ALIASES[name], kind="alias")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"--model {name}: the directory has no config.json; "
                "is it a model directory (a run directory goes to --adapter)?"
            )
        return ModelRef(name=name, source=str(path.resolve()), kind="local")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        known = ", ".join([*ALIASES, *TINY_MODELS])
        raise ModelError(
            f"--model {name!r} is neither an existing directory, a hub id (owner/name) nor an alias ({known})."
        )
    return ModelRef(name=name, source=name, kind="hub")


def family_for(model_type: str) -> Family:
    """The family of a config's `model_type`."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ModelError(f"model_type {model_type!r} is not supported yet (supported: {supported}).")
