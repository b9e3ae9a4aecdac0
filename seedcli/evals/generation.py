"""Batched generation with a KV cache: greedy, sampling and VCD (docs/protocols.md, VCD); POPE prefix sharing.

One small decoding loop serves every mode, through public model APIs only (a forward with a KV cache,
`position_ids` and `logits_to_keep`):

- prefill: the left-padded prompt batch; positions count real tokens only (cumsum of the attention
  mask), or come from the model's own `get_rope_index` for families with multimodal RoPE
  (`Family.multimodal_rope`, Qwen2-VL), so a sample's positions do not depend on its batch's padding;
- each step feeds the chosen token with the grown attention mask and the next position.

Prefix sharing (`share_prefix=True`, what POPE uses): the questions about one image share the start of
their prompt ("USER: <image>\\n" with all its image tokens) and differ only in the question. Per batch,
each image's longest common token prefix is prefilled once (one row per image); its KV cache rows are
repeated to one row per question (`Cache.batch_select_indices`), and each question's own tokens are
fed from there, left-padded between prefix and question (the gap is masked). Every token keeps the
position it has in its whole prompt, so this computes what a full prefill computes, up to float
rounding. Identical (prompt, image) items are computed once. When a prompt has image tokens after its
image's common prefix, that batch falls back to the full prefill. The shared path also encodes each image
once (`encode_by_image`): the processor's output for its first prompt gives the image tokens and vision
inputs of its other prompts, which are only tokenized.

VCD runs two such streams, each with its own KV cache: the clean image v and the noised image
v' = sqrt(a) v + sqrt(1 - a) eps, a = abar_k of VCD's schedule. Per step
    logits_cd = (1 + alpha) z(v) - alpha z(v'),
and tokens whose CLEAN log-prob is below log(beta) + max clean log-prob are set to -inf (adaptive
plausibility); then the usual warpers (temperature, top_p) and sampling, or argmax when
`vcd_sample` is False. Each question's noise is seeded from its own inputs, so the noised stream has
no common prefix to share: with prefix sharing only the clean stream is shared.

Randomness is per sample: every sample draws its tokens (and its VCD noise) from its own
generator, seeded from `Decoding.seed` and a hash of its exact inputs (token ids and pixels). So a
rerun is identical, and a sample's output does not depend on its batch, on prefix sharing, or on a
resumed run skipping earlier samples.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli.errors import ConfigError, DataError, ModelError
from seedcli.reporting import NullReporter, Reporter
from seedcli.seeds import derive_seed

MODES = ("greedy", "sample", "vcd")
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


def _vision_bytes(vision: dict[str, Any]) -> list[bytes]:
    """Every vision tensor (sorted by key) as its key and its float32 or int64 bytes."""
    import torch

    parts: list[bytes] = []
    for key in sorted(vision):
        value = vision[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            value = value.to(torch.float32) if value.is_floating_point() else value.to(torch.int64)
            parts += [key.encode(), value.numpy().tobytes()]
    return parts


def _hash_vision(digest: Any, vision: dict[str, Any]) -> None:
    """Feed every vision tensor (sorted by key, float32 or int64 bytes) into a sha256 `digest`."""
    for part in _vision_bytes(vision):
        digest.update(part)


def sample_seed(seed: int, encoded: Any, purpose: str = "tokens") -> int:
    """Seed of one sample's generator: derive_seed over the base seed, `purpose` and the exact inputs."""
    import torch

    ids = torch.tensor(encoded.input_ids, dtype=torch.int64).numpy().tobytes()
    return derive_seed(seed, purpose, ids, *_vision_bytes(encoded.vision), width=SEED_BYTES)


def noised_encoding(encoded: Any, decoding: Decoding, vision_key: str = "pixel_values") -> Any:
    """The sample with VCD's noised pixels v' (noise step `vcd_noise_step`, per-sample seeded)."""
    import torch

    from seedcli.core.noise import add_diffusion_noise, vcd_alpha_bar

    if vision_key not in encoded.vision:
        given = sorted(encoded.vision)
        raise ModelError(f"VCD needs {vision_key!r} from the processor; this model's processor gives {given}.")
    try:
        alpha = vcd_alpha_bar(decoding.vcd_noise_step)
    except ValueError as exc:
        raise ConfigError(f"--vcd-noise-step: {exc}.") from None
    generator = torch.Generator().manual_seed(sample_seed(decoding.seed, encoded, purpose="vcd-noise"))
    pixels = add_diffusion_noise(encoded.vision[vision_key], alpha, generator)
    return dataclasses.replace(encoded, vision={**encoded.vision, vision_key: pixels})


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
    draws = [torch.multinomial(probs[i], 1, generator=generators[i])[0] for i in range(probs.shape[0])]
    return torch.stack(draws)


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


@dataclass(frozen=True)
class ImageEncoding:
    """What the processor made of one image: enough to encode further prompts about it without the processor.

    The processor renders a prompt's image placeholder token into `expansion` (the image tokens), computes
    `vision` from the image alone, and gives every token input (e.g. `mm_token_type_ids`) one value per
    token: `values` over the expansion, `other` everywhere else.
    """

    image: Any  # the image as given (held, so that an object's id stays its own while it is cached)
    placeholder: int
    expansion: tuple[int, ...]
    values: dict[str, tuple[int, ...]]
    other: dict[str, int]
    vision: dict[str, Any]

    def encode(self, text_ids: Sequence[int]) -> Any:
        """The encoding of a prompt about this image from its unexpanded token ids; None without one placeholder."""
        from seedcli.models.chat import IGNORE, Encoded

        ids = list(text_ids)
        if ids.count(self.placeholder) != 1:
            return None
        at = ids.index(self.placeholder)
        rest = len(ids) - at - 1
        token_inputs = {
            key: [self.other[key]] * at + list(values) + [self.other[key]] * rest for key, values in self.values.items()
        }
        expanded = ids[:at] + list(self.expansion) + ids[at + 1 :]
        return Encoded(expanded, [IGNORE] * len(expanded), token_inputs, self.vision)


def _image_encoding(image: Any, placeholder: int | None, text_ids: Sequence[int], encoded: Any) -> ImageEncoding | None:
    """The image's `ImageEncoding`, read from one prompt's processor output and checked to reproduce it exactly.

    None when the processor's output is not the tokenized prompt with its one placeholder expanded (the
    image's prompts then each go through the processor).
    """
    ids, full = list(text_ids), encoded.input_ids
    if placeholder is None or ids.count(placeholder) != 1:
        return None
    at = ids.index(placeholder)
    end = len(full) - (len(ids) - at - 1)  # where the expansion ends in the processor's ids
    if end <= at:
        return None
    values: dict[str, tuple[int, ...]] = {}
    other: dict[str, int] = {}
    for key, row in encoded.token_inputs.items():
        outside = set(row[:at]) | set(row[end:])
        if len(row) != len(full) or len(outside) > 1:
            return None
        values[key], other[key] = tuple(row[at:end]), outside.pop() if outside else 0
    found = ImageEncoding(image, placeholder, tuple(full[at:end]), values, other, encoded.vision)
    again = found.encode(ids)
    if again is None or again.input_ids != full or again.token_inputs != encoded.token_inputs:
        return None
    return found


def encode_by_image(
    processor: Any, family: Any, prompts: Sequence[str], images: Sequence[Any], memo: PrefixMemo | None = None
) -> list[Any]:
    """What `encode_all` gives, with each image through the processor once (its other prompts only tokenized).

    The first prompt about an image is encoded by the processor as usual; the image tokens and vision inputs
    found there serve the image's other prompts, which are rendered by the chat template and tokenized
    without the image, their placeholder replaced by those image tokens. `memo` carries the last image's
    encoding over to the next call.
    """
    from seedcli.models.chat import encode_prompt, prompt_text

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    placeholder = getattr(processor, "image_token_id", None)
    known: dict[Hashable, ImageEncoding | None] = {}
    if memo is not None and memo.image is not None:
        known[image_key(memo.image.image)] = memo.image
    out = []
    for prompt, image in zip(prompts, images):
        key = image_key(image)
        text_ids = None
        if known.get(key) is not None:
            text_ids = processor.tokenizer(prompt_text(processor, family, prompt))["input_ids"]
            encoded = known[key].encode(text_ids)  # type: ignore[union-attr]
            if encoded is not None:
                out.append(encoded)
                continue
        encoded = encode_prompt(processor, family, prompt, as_image(image))
        if key not in known:
            if text_ids is None:
                text_ids = processor.tokenizer(prompt_text(processor, family, prompt))["input_ids"]
            known[key] = _image_encoding(image, placeholder, text_ids, encoded)
        out.append(encoded)
    if memo is not None and images:
        memo.image = known.get(image_key(images[-1]))
    return out


def to_batch(encoded: Sequence[Any], *, pad: int, device: Any, dtype: Any) -> dict[str, Any]:
    """Left-padded model inputs on `device`, floating tensors in `dtype` (no labels)."""
    from seedcli.models.chat import collate

    batch = collate(list(encoded), pad_id=pad, padding_side="left")
    batch.pop("labels")
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def cache_argument(model: Any) -> str:
    """The forward's keyword for the KV cache: `cache` where the model takes it, else `past_key_values`.

    transformers 5.24 renamed the argument (the old name warns until its removal); a feature check on the
    model's own signature keeps older 5.x releases working.
    """
    from seedcli.models.forward import unwrap

    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward returned, under its new name (`cache`) or its old one."""
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _forward(model: Any, cache: Any, inputs: dict[str, Any], cache_name: str) -> tuple[Any, Any]:
    """One cached forward: (the grown cache, the last position's logits [B, V] float32)."""
    given = {} if cache is None else {cache_name: cache}
    out = model(**inputs, **given, use_cache=True, logits_to_keep=1, return_dict=True)
    return _returned_cache(out), out.logits[:, -1, :].float()


def prefill_positions(model: Any, family: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """Positions of the prompt ([B, L], or [3, B, L] for multimodal RoPE) and each row's next position [B]."""
    from seedcli.models.forward import unwrap

    mask = inputs["attention_mask"]  # [B, L], 0 on the left padding
    if family.multimodal_rope:
        rope_index = getattr(getattr(unwrap(model), "model", None), "get_rope_index", None)
        if rope_index is None or "image_grid_thw" not in inputs:
            raise ModelError(f"{family.name}: multimodal RoPE needs the model's get_rope_index and image_grid_thw.")
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
    """One KV-cached decoding stream: the next-token logits [B, V], and one token per `advance`."""

    def __init__(
        self, model: Any, cache: Any, mask: Any, next_position: Any, logits: Any, multimodal_rope: bool
    ) -> None:
        self.model = model
        self.cache_name = cache_argument(model)
        self.cache = cache
        self.mask = mask  # [B, T]: every column the cache holds, 0 where padded
        self.next_position = next_position  # [B]
        self.logits = logits  # [B, V] float32
        self.multimodal_rope = multimodal_rope

    def advance(self, tokens: Any) -> None:
        """Feed one token per row (long [B]) and compute the next logits."""
        import torch

        batch = tokens.shape[0]
        tokens = tokens.to(self.mask.device).view(batch, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], dim=-1)
        positions = self.next_position.view(batch, 1)
        if self.multimodal_rope:
            positions = positions.view(1, batch, 1).expand(3, batch, 1)
        inputs = {"input_ids": tokens, "attention_mask": self.mask, "position_ids": positions}
        self.cache, self.logits = _forward(self.model, self.cache, inputs, self.cache_name)
        self.next_position = self.next_position + 1


def prefill(model: Any, family: Any, inputs: dict[str, Any]) -> CachedStream:
    """A stream after one forward over whole left-padded prompts (`to_batch` output)."""
    positions, next_position = prefill_positions(model, family, inputs)
    inputs = {**inputs, "position_ids": positions}
    cache, logits = _forward(model, None, inputs, cache_argument(model))
    return CachedStream(model, cache, inputs["attention_mask"], next_position, logits, family.multimodal_rope)


def _image_token_id(model: Any) -> int | None:
    from seedcli.models.forward import unwrap

    config = unwrap(model).config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the rows' longest common prefix, leaving every row at least one token of its own."""
    limit = min(len(row) for row in rows) - 1
    first = rows[0]
    for i in range(limit):
        if any(row[i] != first[i] for row in rows[1:]):
            return i
    return limit


def _cut(rows: Sequence[Sequence[int]], image_token: int | None) -> int:
    """Where a group's shared prefix ends: the common prefix; for a lone prompt, just after its image.

    A lone prompt's prefix stops after the image so that it also fits the image's other prompts, should
    they come in the next batch (`PrefixMemo`).
    """
    row = rows[0]
    if len(rows) == 1 and image_token is not None and image_token in row:
        return min(len(row) - list(reversed(row)).index(image_token), len(row) - 1)
    return _common_prefix(rows)


def _left_pad(rows: Sequence[Any], value: int) -> Any:
    """Stack tensors of shape [..., S_i] into [..., B, S_max], padded on the left with `value`."""
    import torch

    width = max(row.shape[-1] for row in rows)
    padded = [torch.nn.functional.pad(row, (width - row.shape[-1], 0), value=value) for row in rows]
    return torch.stack(padded, dim=-2)


@dataclass
class PrefixMemo:
    """The prefix of the last image in the last batch, for a next batch of only that image's prompts."""

    digest: bytes = b""  # sha256 of the image's vision inputs
    ids: tuple[int, ...] = ()  # the prefix tokens
    cache: Any = None  # their KV cache, one row (left-padded as it was in its batch)
    mask: Any = None  # [1, T] its attention mask, 0 on that padding
    image: ImageEncoding | None = None  # the last image's processor output (`encode_by_image`)


def _vision_digests(encoded: Sequence[Any]) -> list[bytes]:
    """sha256 of each sample's vision inputs; samples that hold the same tensors (`encode_by_image`) hashed once."""
    seen: dict[tuple[int, ...], bytes] = {}
    digests = []
    for enc in encoded:
        same = tuple(id(value) for value in enc.vision.values())
        if same not in seen:
            digest = hashlib.sha256()
            _hash_vision(digest, enc.vision)
            seen[same] = digest.digest()
        digests.append(seen[same])
    return digests


def _reuses(memo: PrefixMemo | None, digests: Sequence[bytes], encoded: Sequence[Any]) -> bool:
    """Whether `memo` holds a prefix of every prompt in a batch of one image's prompts."""
    if memo is None or memo.cache is None or len(digests) != 1 or memo.digest != digests[0]:
        return False
    length = len(memo.ids)
    return all(len(enc.input_ids) > length and tuple(enc.input_ids[:length]) == memo.ids for enc in encoded)


def prefill_shared(
    model: Any,
    family: Any,
    encoded: Sequence[Any],
    *,
    pad: int,
    device: Any,
    dtype: Any,
    memo: PrefixMemo | None = None,
) -> CachedStream | None:
    """A stream whose prompts about one image share one prefilled prefix (see the module docstring).

    Prompts are grouped by their exact vision inputs. A batch of one image's prompts reuses `memo`'s prefix
    when it fits them all, and leaves its own there otherwise. None when a prompt has an image token after
    its group's common prefix (the prefix must hold the whole image), or the image token is unknown.
    """
    import torch

    groups: dict[bytes, list[int]] = {}
    for i, digest in enumerate(_vision_digests(encoded)):
        groups.setdefault(digest, []).append(i)
    members = list(groups.values())
    image_token = _image_token_id(model)
    reuse = _reuses(memo, list(groups), encoded)
    if reuse:
        cut = [len(memo.ids)]  # type: ignore[union-attr]
    else:
        cut = [_cut([encoded[i].input_ids for i in group], image_token) for group in members]
    group_of = [0] * len(encoded)
    for g, group in enumerate(members):
        for i in group:
            group_of[i] = g
    if image_token is None or any(image_token in enc.input_ids[cut[group_of[i]] :] for i, enc in enumerate(encoded)):
        return None

    # Each token's position in its whole prompt: one batched call without the pixels (not needed for it).
    light = [
        dataclasses.replace(e, vision={k: v for k, v in e.vision.items() if k != family.vision_key}) for e in encoded
    ]
    whole = to_batch(light, pad=pad, device=device, dtype=dtype)
    positions, _ = prefill_positions(model, family, whole)  # [(3,) Q, L]
    width = whole["input_ids"].shape[1]
    own = [positions[..., i, width - len(enc.input_ids) :] for i, enc in enumerate(encoded)]  # [(3,) L_i]

    cache_name = cache_argument(model)
    if reuse:
        cache, prefix_mask = copy.deepcopy(memo.cache), memo.mask  # type: ignore[union-attr]
    else:
        heads = [group[0] for group in members]
        prefix = to_batch(
            [_truncated(encoded[i], cut[g]) for g, i in enumerate(heads)], pad=pad, device=device, dtype=dtype
        )
        prefix["position_ids"] = _left_pad([own[i][..., : cut[g]] for g, i in enumerate(heads)], 0)
        cache, _ = _forward(model, None, prefix, cache_name)  # one row per image
        prefix_mask = prefix["attention_mask"]
        if memo is not None:  # the last image may go on in the next batch
            last = len(members) - 1
            memo.cache = copy.deepcopy(cache)
            memo.cache.batch_select_indices(torch.tensor([last], device=prefix_mask.device))
            memo.digest, memo.ids = list(groups)[last], tuple(encoded[heads[last]].input_ids[: cut[last]])
            memo.mask = prefix_mask[last:]

    index = torch.tensor(group_of, device=prefix_mask.device)
    cache.batch_select_indices(index)  # one row per prompt: a copy of its image's prefix
    tails = [
        torch.tensor(enc.input_ids[cut[group_of[i]] :], dtype=torch.long, device=device)
        for i, enc in enumerate(encoded)
    ]
    mask = torch.cat([prefix_mask[index], _left_pad([torch.ones_like(t) for t in tails], 0)], dim=-1)
    inputs = {
        "input_ids": _left_pad(tails, pad),
        "attention_mask": mask,
        "position_ids": _left_pad([own[i][..., cut[group_of[i]] :] for i in range(len(encoded))], 0),
    }
    cache, logits = _forward(model, cache, inputs, cache_name)
    next_position = torch.stack([row.max() + 1 for row in own])
    return CachedStream(model, cache, mask, next_position, logits, family.multimodal_rope)


def _truncated(encoded: Any, length: int) -> Any:
    """The sample's first `length` tokens (token inputs cut alike; vision inputs whole)."""
    return dataclasses.replace(
        encoded,
        input_ids=encoded.input_ids[:length],
        labels=encoded.labels[:length],
        token_inputs={k: v[:length] for k, v in encoded.token_inputs.items()},
    )


def next_token_stream(
    model: Any,
    processor: Any,
    family: Any,
    encoded: Sequence[Any],
    *,
    share_prefix: bool,
    memo: PrefixMemo | None = None,
) -> CachedStream:
    """The clean stream of a batch: prefix-shared when asked and possible, else one full prefill."""
    device, dtype = model_device_dtype(model)
    pad = pad_id(processor)
    shared = None
    if share_prefix:
        shared = prefill_shared(model, family, encoded, pad=pad, device=device, dtype=dtype, memo=memo)
    return shared or prefill(model, family, to_batch(encoded, pad=pad, device=device, dtype=dtype))


def _scores(clean: CachedStream, noised: CachedStream | None, decoding: Decoding) -> Any:
    """What the next token is chosen from: clean logits, or VCD's contrastive logits."""
    if noised is None:
        return clean.logits
    return vcd_logits(clean.logits, noised.logits, decoding.vcd_alpha, decoding.vcd_beta)


def _decode_batch(
    model: Any, processor: Any, family: Any, encoded: Sequence[Any], decoding: Decoding, memo: PrefixMemo | None
) -> list[str]:
    import torch

    clean = next_token_stream(model, processor, family, encoded, share_prefix=memo is not None, memo=memo)
    noised = None
    if decoding.mode == "vcd":
        device, dtype = model_device_dtype(model)
        noisy = [noised_encoding(enc, decoding, family.vision_key) for enc in encoded]
        noised = prefill(model, family, to_batch(noisy, pad=pad_id(processor), device=device, dtype=dtype))
    generators = (
        [torch.Generator().manual_seed(sample_seed(decoding.seed, enc)) for enc in encoded] if decoding.sampling else []
    )
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


def image_key(image: Any) -> Hashable:
    """What identifies an image for grouping: its path, or the object itself (PIL images)."""
    return ("path", str(image)) if isinstance(image, (str, Path)) else ("object", id(image))


def plan(
    prompts: Sequence[str], images: Sequence[Any], batch_size: int, share_prefix: bool
) -> tuple[list[list[int]], list[int]]:
    """Batches of item indices to compute, and for every item the index of the item that answers it.

    Without sharing: consecutive items, each answering itself. With sharing: each distinct (image, prompt)
    once, the items of one image next to each other (in order of first appearance), in full batches; an
    image's prompts that spill into a batch of their own reuse the prefix of the batch before (`PrefixMemo`).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size}).")
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    if not share_prefix:
        order = list(range(len(prompts)))
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)], order
    first: dict[tuple[Hashable, str], int] = {}
    source = [first.setdefault((image_key(image), prompt), i) for i, (prompt, image) in enumerate(zip(prompts, images))]
    by_image: dict[Hashable, list[int]] = {}
    for i in first.values():
        by_image.setdefault(image_key(images[i]), []).append(i)
    order = [i for group in by_image.values() for i in group]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)], source


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
    share_prefix: bool = False,
    prefix_memo: PrefixMemo | None = None,
) -> list[str]:
    """One answer per (prompt, image), in batches of `batch_size` (left padding, KV cache, optional prefix sharing).

    `prefix_memo` carries an image's prefix over to the next call (a caller that calls once per batch).
    """
    import torch

    batches, source = plan(prompts, images, batch_size, share_prefix)
    memo = (prefix_memo or PrefixMemo()) if share_prefix else None
    reporter = reporter or NullReporter()
    answers: dict[int, str] = {}
    total = sum(len(batch) for batch in batches)
    with reporter.task(f"generating ({decoding.mode})", total=total, unit="q") as task, torch.inference_mode():
        for batch in batches:
            asked = [prompts[i] for i in batch], [images[i] for i in batch]
            if memo is None:
                encoded = encode_all(processor, family, *asked)
            else:  # prefix sharing: each image through the processor once
                encoded = encode_by_image(processor, family, *asked, memo=memo)
            answers.update(zip(batch, _decode_batch(model, processor, family, encoded, decoding, memo)))
            task.advance(len(batch))
    return [answers[source[i]] for i in range(len(prompts))]
