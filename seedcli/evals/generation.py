"""Batched generation with left padding and a KV cache: greedy, sampling and VCD (docs/protocols.md, VCD).

One small decoding loop serves every mode, through public model APIs only (a forward with
`past_key_values`, `position_ids` and `logits_to_keep`):

- prefill: the left-padded prompt batch; positions count real tokens only (cumsum of the attention
  mask), or come from the model's own `get_rope_index` for multimodal-RoPE models (Qwen2-VL), so a
  sample's positions do not depend on how much padding its batch needed;
- each step feeds the chosen token with the grown attention mask and the next position.

VCD runs two such streams, each with its own KV cache: the clean image v and the noised image
v' = sqrt(a) v + sqrt(1 - a) eps, a = abar_k of VCD's schedule. Per step
    logits_cd = (1 + alpha) z(v) - alpha z(v'),
and tokens whose CLEAN log-prob is below log(beta) + max clean log-prob are set to -inf (adaptive
plausibility); then the usual warpers (temperature, top_p) and sampling, or argmax when
`vcd_sample` is False.

Randomness is per sample: every sample draws its tokens (and its VCD noise) from its own
generator, seeded from `Decoding.seed` and a hash of its exact inputs (token ids and pixels). So a
rerun is identical, and a sample's output does not depend on its batch or on a resumed run
skipping earlier samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli.errors import ConfigError, DataError, ModelError
from seedcli.reporting import NullReporter, Reporter

MODES = ("greedy", "sample", "vcd")
PIXEL_KEY = "pixel_values"
# Bits of the sha256 digest used as a torch seed (torch seeds are unsigned 64-bit).
SEED_BYTES = 8


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen; every field is recorded with the results it produced."""

    mode: str  # "greedy" | "sample" | "vcd"
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    vcd_alpha: float = 1.0
    vcd_beta: float = 0.1
    vcd_noise_step: int = 500
    vcd_sample: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--decode must be one of {', '.join(MODES)} (got {self.mode!r}).")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1 (got {self.max_new_tokens}).")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0 (got {self.temperature}).")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p}).")
        if not 0 < self.vcd_beta <= 1:
            raise ConfigError(f"--vcd-beta must be in (0, 1] (got {self.vcd_beta}).")
        if self.vcd_alpha < 0:
            raise ConfigError(f"--vcd-alpha must be >= 0 (got {self.vcd_alpha}).")

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (sample mode, or VCD with vcd_sample)."""
        return self.mode == "sample" or (self.mode == "vcd" and self.vcd_sample)


def sample_seed(seed: int, encoded: Any, purpose: str = "tokens") -> int:
    """Seed of one sample's generator: sha256 of the base seed, `purpose` and the exact inputs."""
    import torch

    digest = hashlib.sha256(f"{seed}:{purpose}:".encode())
    digest.update(torch.tensor(encoded.input_ids, dtype=torch.int64).numpy().tobytes())
    for key in sorted(encoded.vision):
        value = encoded.vision[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            value = value.to(torch.float32) if value.is_floating_point() else value.to(torch.int64)
            digest.update(key.encode())
            digest.update(value.numpy().tobytes())
    return int.from_bytes(digest.digest()[:SEED_BYTES], "little")


def noised_encoding(encoded: Any, decoding: Decoding) -> Any:
    """The sample with VCD's noised pixels v' (noise step `vcd_noise_step`, per-sample seeded)."""
    import torch

    from seedcli.core.noise import add_diffusion_noise, vcd_alpha_bar

    if PIXEL_KEY not in encoded.vision:
        raise ModelError(f"VCD needs {PIXEL_KEY!r} from the processor; this model's processor gives {sorted(encoded.vision)}.")
    try:
        alpha = vcd_alpha_bar(decoding.vcd_noise_step)
    except ValueError as exc:
        raise ConfigError(f"--vcd-noise-step: {exc}.") from None
    generator = torch.Generator().manual_seed(sample_seed(decoding.seed, encoded, purpose="vcd-noise"))
    pixels = add_diffusion_noise(encoded.vision[PIXEL_KEY], alpha, generator)
    return dataclasses.replace(encoded, vision={**encoded.vision, PIXEL_KEY: pixels})


def vcd_logits(clean: Any, noised: Any, alpha: float, beta: float) -> Any:
    """(1 + alpha) z(v) - alpha z(v'), -inf where log p(w|v) < log(beta) + max log p(.|v). [B, V] float32."""
    import torch

    clean = clean.float()  # [B, V]
    noised = noised.float()  # [B, V]
    log_probs = torch.log_softmax(clean, dim=-1)
    cutoff = math.log(beta) + log_probs.max(dim=-1, keepdim=True).values  # [B, 1]
    contrast = (1.0 + alpha) * clean - alpha * noised
    return contrast.masked_fill(log_probs < cutoff, float("-inf"))


def warp(scores: Any, temperature: float, top_p: float) -> Any:
    """Temperature, then nucleus filtering (smallest set of tokens with mass >= top_p; -inf elsewhere)."""
    import torch

    scores = scores / temperature
    if top_p >= 1.0:
        return scores
    ordered, index = scores.sort(dim=-1, descending=True)  # [B, V]
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    ordered = ordered.masked_fill(before >= top_p, float("-inf"))
    return torch.full_like(scores, float("-inf")).scatter(-1, index, ordered)


def _select(scores: Any, decoding: Decoding, generators: Sequence[Any]) -> Any:
    """Next token per row (CPU long [B]): argmax, or a draw from each row's own generator."""
    import torch

    if not decoding.sampling:
        return scores.argmax(dim=-1).cpu()
    probs = warp(scores, decoding.temperature, decoding.top_p).softmax(dim=-1).cpu()  # [B, V]
    return torch.stack([torch.multinomial(probs[i], 1, generator=generators[i])[0] for i in range(probs.shape[0])])


def model_device_dtype(model: Any) -> tuple[Any, Any]:
    """Where inputs go and which float dtype pixels take (the first floating parameter's)."""
    import torch

    device, dtype = None, torch.float32
    for parameter in model.parameters():
        device = device or parameter.device
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return device or torch.device("cpu"), dtype


def pad_id(processor: Any) -> int:
    """The padding token id (pad, else eos)."""
    tokenizer = processor.tokenizer
    value = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if value is None:
        raise ModelError("the tokenizer has neither a pad nor an eos token; batched generation cannot pad.")
    return int(value)


def eos_ids(model: Any, processor: Any) -> set[int]:
    """Token ids that end a generation: the generation config's eos ids and the tokenizer's eos."""
    found: set[int] = set()
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if isinstance(value, int):
        found.add(value)
    elif value:
        found.update(int(v) for v in value)
    if processor.tokenizer.eos_token_id is not None:
        found.add(int(processor.tokenizer.eos_token_id))
    return found


def as_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image or a path."""
    if isinstance(image, (str, Path)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image {image}: no such file.") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"image {image}: cannot be decoded ({exc}).") from None
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def encode_all(processor: Any, family: Any, prompts: Sequence[str], images: Sequence[Any]) -> list[Any]:
    """Encode (prompt, image) pairs with the chat template and a generation prompt."""
    from seedcli.models.chat import encode_prompt

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    return [encode_prompt(processor, family, prompt, as_image(image)) for prompt, image in zip(prompts, images)]


def to_batch(encoded: Sequence[Any], *, pad: int, device: Any, dtype: Any) -> dict[str, Any]:
    """Left-padded model inputs on `device`, floating tensors in `dtype` (no labels)."""
    from seedcli.models.chat import collate

    batch = collate(list(encoded), pad_id=pad, padding_side="left")
    batch.pop("labels")
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def prefill_positions(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """Positions of the prompt ([B, L], or [3, B, L] for multimodal RoPE) and each row's next position [B]."""
    from seedcli.models.forward import unwrap

    mask = inputs["attention_mask"]  # [B, L], 0 on the left padding
    rope_index = getattr(getattr(unwrap(model), "model", None), "get_rope_index", None)
    if rope_index is not None and "image_grid_thw" in inputs:
        positions, _ = rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask,
        )  # [3, B, L]
        return positions, positions.amax(dim=(0, 2)) + 1
    positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # [B, L]
    return positions, positions[:, -1] + 1


class CachedStream:
    """One KV-cached decoding stream: prefill once, then one token per `advance`."""

    def __init__(self, model: Any, inputs: dict[str, Any]) -> None:
        self.model = model
        self.mask = inputs["attention_mask"]
        positions, self.next_position = prefill_positions(model, inputs)
        self.multimodal_rope = positions.dim() == 3
        out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1, return_dict=True)
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1, :].float()  # [B, V]

    def advance(self, tokens: Any) -> None:
        """Feed one token per row (long [B]) and compute the next logits."""
        import torch

        batch = tokens.shape[0]
        tokens = tokens.to(self.mask.device).view(batch, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], dim=-1)
        positions = self.next_position.view(batch, 1)
        if self.multimodal_rope:
            positions = positions.view(1, batch, 1).expand(3, batch, 1)
        out = self.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1, return_dict=True)
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1, :].float()
        self.next_position = self.next_position + 1


def _scores(clean: CachedStream, noised: CachedStream | None, decoding: Decoding) -> Any:
    """What the next token is chosen from: clean logits, or VCD's contrastive logits."""
    if noised is None:
        return clean.logits
    return vcd_logits(clean.logits, noised.logits, decoding.vcd_alpha, decoding.vcd_beta)


def _streams(model: Any, processor: Any, encoded: Sequence[Any], decoding: Decoding) -> tuple[CachedStream, CachedStream | None]:
    device, dtype = model_device_dtype(model)
    pad = pad_id(processor)
    clean = CachedStream(model, to_batch(encoded, pad=pad, device=device, dtype=dtype))
    if decoding.mode != "vcd":
        return clean, None
    noised = [noised_encoding(enc, decoding) for enc in encoded]
    return clean, CachedStream(model, to_batch(noised, pad=pad, device=device, dtype=dtype))


def first_token_scores(model: Any, processor: Any, family: Any, prompts: Sequence[str], images: Sequence[Any], decoding: Decoding) -> Any:
    """The scores [B, V] the first new token is chosen from (before temperature/top_p), for checks."""
    import torch

    encoded = encode_all(processor, family, prompts, images)
    with torch.inference_mode():
        clean, noised = _streams(model, processor, encoded, decoding)
        return _scores(clean, noised, decoding)


def _decode_batch(model: Any, processor: Any, encoded: Sequence[Any], decoding: Decoding) -> list[str]:
    import torch

    clean, noised = _streams(model, processor, encoded, decoding)
    generators = [torch.Generator().manual_seed(sample_seed(decoding.seed, enc)) for enc in encoded] if decoding.sampling else []
    stop = torch.tensor(sorted(eos_ids(model, processor)), dtype=torch.long)
    pad = pad_id(processor)
    finished = torch.zeros(len(encoded), dtype=torch.bool)
    chosen: list[Any] = []
    for step in range(decoding.max_new_tokens):
        tokens = _select(_scores(clean, noised, decoding), decoding, generators)  # CPU long [B]
        tokens = tokens.masked_fill(finished, pad)
        chosen.append(tokens)
        finished |= torch.isin(tokens, stop)
        if bool(finished.all()) or step == decoding.max_new_tokens - 1:
            break
        clean.advance(tokens)
        if noised is not None:
            noised.advance(tokens)
    ids = torch.stack(chosen, dim=1).tolist()  # [B, T]
    texts = []
    stop_set = set(stop.tolist())
    for row in ids:
        end = next((i for i, token in enumerate(row) if token in stop_set), len(row))
        texts.append(processor.tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return texts


def generate(
    model: Any,
    processor: Any,
    family: Any,
    prompts: list[str],
    images: list,
    decoding: Decoding,
    *,
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> list[str]:
    """Generate one answer per (prompt, image) in batches of `batch_size` (left padding, KV cache)."""
    import torch

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size}).")
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    reporter = reporter or NullReporter()
    outputs: list[str] = []
    with reporter.task(f"generating ({decoding.mode})", total=len(prompts), unit="q") as task, torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            encoded = encode_all(processor, family, prompts[chunk], images[chunk])
            outputs.extend(_decode_batch(model, processor, encoded, decoding))
            task.advance(len(encoded))
    return outputs
