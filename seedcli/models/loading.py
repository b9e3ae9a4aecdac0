"""Loading a model and its processor: dtype, device, 4/8-bit, adapter targets, offline tiny models."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from seedcli.core.choices import DEVICES, DTYPES, QUANTIZATION  # noqa: F401  (DEVICES re-exported)
from seedcli.errors import ConfigError, ModelError
from seedcli.models.families import Family, ModelRef, family_for, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A loaded model with everything the engine needs to drive it."""

    model: Any
    processor: Any
    family: Family
    ref: ModelRef
    dtype: Any  # torch.dtype of the weights
    device: Any  # torch.device of the inputs
    quantization: str


def resolve_dtype(name: str, device: str) -> Any:
    """`auto` = bf16 on GPUs that support it, else fp32; explicit names map directly."""
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} (got {name!r}).")
    return table[name]


def resolve_device(name: str) -> str:
    """`auto` = cuda when available else cpu; asking for cuda without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was requested but torch sees no CUDA device; use --device cpu or check `seed env`."
        )
    return name


def _quantization_config(quantization: str, family: Family, dtype: Any) -> Any:
    if quantization == "none":
        return None
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - transformers always has it
        raise ModelError(f"--quantization {quantization} needs bitsandbytes: {exc}") from None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise ModelError(
            f"--quantization {quantization} needs a working bitsandbytes ({type(exc).__name__}: {exc}); install it or "
            "use --quantization none."
        ) from None
    # Recent transformers match skip patterns from the start of the module name (regex) or as a
    # suffix, older ones as substrings: give each name in both forms so every version skips it.
    skip = [form for name in family.skip_quantization for form in (name, f".*{name}")]
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_processor(source: str, family: Family, *, trust_remote_code: bool = False) -> Any:
    """AutoProcessor, falling back to the image-only Qwen2-VL processor where torchvision is absent."""
    from transformers import AutoProcessor

    if family.name == "qwen2-vl":
        import seedcli.models.qwen2vl_processor  # noqa: F401  (registers the image-only class)
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ImportError, AttributeError) as exc:
        if family.name != "qwen2-vl":
            raise ModelError(f"cannot load the processor of {source}: {exc}") from None
        from transformers import AutoImageProcessor, AutoTokenizer

        from seedcli.models.qwen2vl_processor import Qwen2VLImageOnlyProcessor

        log.warning("stock Qwen2-VL processor unavailable (%s); using the image-only processor", exc)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        return Qwen2VLImageOnlyProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=getattr(tokenizer, "chat_template", None),
        )


def model_config(source: str, *, trust_remote_code: bool = False) -> Any:
    """The checkpoint's config (from a local directory or the local hub cache)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(
            f"cannot read the config of {source!r}: {str(exc).splitlines()[0]} (offline? download it first or pass a "
            "local directory)."
        ) from None
    except ValueError as exc:
        raise ModelError(
            f"cannot read the config of {source!r}: {str(exc).splitlines()[0]} (custom code needs --trust-remote-code)."
        ) from None


def load(
    name: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    quantization: str = "none",
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
) -> Loaded:
    """Load model + processor from an alias, hub id, local directory or tiny model name."""
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText

    transformers.logging.disable_progress_bar()
    ref = resolve(name)
    device_name = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device_name)
    config = model_config(ref.source, trust_remote_code=trust_remote_code)
    family = family_for(config.model_type)
    if quantization not in QUANTIZATION:
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATION)} (got {quantization!r}).")
    quant = _quantization_config(quantization, family, torch_dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device_name if device_name != "cuda" else 0}
    try:
        model = AutoModelForImageTextToText.from_pretrained(ref.source, **kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load weights of {ref.source!r}: {str(exc).splitlines()[0]}") from None
    if quant is None:
        model.to(device_name)
    model.eval()
    processor = load_processor(ref.source, family, trust_remote_code=trust_remote_code)
    return Loaded(
        model=model,
        processor=processor,
        family=family,
        ref=ref,
        dtype=torch_dtype,
        device=torch.device(device_name),
        quantization=quantization,
    )
