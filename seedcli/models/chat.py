"""Conversations -> model inputs with supervised-token labels, and batch collation.

How labels are found, for any template:
1. The conversation is rendered with the processor's chat template (image as a content part of the
   first user turn, so the template places the model's own image token).
2. Assistant spans are located in the rendered text. Templates with `{% generation %}` markers give
   them directly (tokenizer `return_assistant_tokens_mask`); otherwise each assistant turn's span is
   the difference between the rendering up to it with a generation prompt and the rendering
   including it (checked to be a prefix, else an error names the template).
3. The text is tokenized once, with offsets, so token labels follow the character spans exactly.
4. The processor expands the image placeholder into image tokens; the unexpanded and expanded id
   sequences are aligned by their common prefix and suffix, and the inserted image tokens get label
   -100. Truncation only ever removes tokens after the last image token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seedcli.errors import DataError
from seedcli.models.families import Family

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One sample, ready for collation (lists of ints; vision tensors as the processor made them)."""

    input_ids: list[int]
    labels: list[int]
    token_inputs: dict[str, list[int]]  # extra per-token inputs (e.g. mm_token_type_ids)
    vision: dict[str, Any]  # pixel_values, image_grid_thw, ... (tensors with a leading image dim)

    @property
    def num_supervised(self) -> int:
        """Number of supervised (assistant) tokens."""
        return sum(1 for label in self.labels if label != IGNORE)


def template_messages(
    messages: list[dict[str, str]], *, family: Family, eos_token: str | None, with_image: bool = True
) -> list[dict[str, Any]]:
    """Stored {role, content} messages -> chat-template messages with the image in the first user turn."""
    out: list[dict[str, Any]] = []
    image_placed = not with_image
    for message in messages:
        text = message["content"]
        parts: list[dict[str, Any]] = []
        if message["role"] == "user" and not image_placed:
            parts.append({"type": "image"})
            image_placed = True
        if (
            message["role"] == "assistant"
            and family.append_eos_to_assistant
            and eos_token
            and not text.endswith(eos_token)
        ):
            text = text + eos_token
        parts.append({"type": "text", "text": text})
        out.append({"role": message["role"], "content": parts})
    return out


def _render(processor: Any, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def has_generation_markers(processor: Any) -> bool:
    """Whether the chat template marks assistant content with {% generation %}."""
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def assistant_char_spans(processor: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the character spans of assistant turns (prefix-difference method)."""
    full = _render(processor, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(processor, messages[:i], generation_prompt=True)
        through = _render(processor, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                "the chat template does not render conversations prefix-stably; it needs {% generation %} markers for "
                "label masks."
            )
        spans.append((len(before), len(through)))
    return full, spans


def _unexpanded_labels(processor: Any, messages: list[dict[str, Any]]) -> tuple[str, list[int], list[int]]:
    """Rendered text, its token ids (no image expansion) and labels (-100 outside assistant spans)."""
    tokenizer = processor.tokenizer
    if has_generation_markers(processor):
        template = getattr(processor, "chat_template", None)
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        text = _render(processor, messages, generation_prompt=False)
        ids = list(out["input_ids"])
        mask = list(out["assistant_masks"])
        return text, ids, [tok if m else IGNORE for tok, m in zip(ids, mask)]
    text, spans = assistant_char_spans(processor, messages)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    for token, (start, end) in zip(ids, enc["offset_mapping"]):
        inside = end > start and any(lo <= start < hi for lo, hi in spans)
        labels.append(token if inside else IGNORE)
    return text, ids, labels


def _align(unexpanded: list[int], expanded: list[int]) -> tuple[int, int]:
    """(p, s): the first p and last s ids are shared; the rest of `expanded` is inserted image tokens."""
    p = 0
    limit = min(len(unexpanded), len(expanded))
    while p < limit and unexpanded[p] == expanded[p]:
        p += 1
    s = 0
    while s < len(unexpanded) - p and unexpanded[-1 - s] == expanded[-1 - s]:
        s += 1
    return p, s


def encode(
    processor: Any,
    family: Family,
    messages: list[dict[str, str]],
    image: Any,
    *,
    max_length: int | None = None,
    where: str = "sample",
) -> Encoded:
    """Encode one conversation with its image; only assistant tokens are supervised."""
    tokenizer = processor.tokenizer
    chat = template_messages(messages, family=family, eos_token=tokenizer.eos_token)
    text, ids, labels = _unexpanded_labels(processor, chat)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    expanded = batch["input_ids"][0].tolist()
    p, s = _align(ids, expanded)
    if p + s != len(ids) and any(label != IGNORE for label in labels[p : len(ids) - s]):
        raise DataError(f"{where}: the image placeholder could not be aligned with the processor's expansion.")
    inserted = len(expanded) - p - s
    full_labels = labels[:p] + [IGNORE] * inserted + labels[len(ids) - s :]
    if len(full_labels) != len(expanded):
        raise DataError(f"{where}: label alignment failed ({len(full_labels)} labels for {len(expanded)} tokens).")
    token_inputs = {key: batch[key][0].tolist() for key in family.token_inputs if key in batch}
    image_end = p + inserted
    if max_length is not None and len(expanded) > max_length:
        if max_length < image_end + 1:
            raise DataError(
                f"{where}: --max-length {max_length} would cut through the image tokens (they end at {image_end}); "
                "raise it."
            )
        expanded, full_labels = expanded[:max_length], full_labels[:max_length]
        token_inputs = {k: v[:max_length] for k, v in token_inputs.items()}
    if not any(label != IGNORE for label in full_labels):
        raise DataError(
            f"{where}: no supervised (assistant) tokens after encoding; the conversation has no answer or "
            "--max-length cut it off."
        )
    vision = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", *family.token_inputs)}
    return Encoded(input_ids=expanded, labels=full_labels, token_inputs=token_inputs, vision=vision)


def prompt_text(processor: Any, family: Family, prompt: str) -> str:
    """A single user prompt (with the image) rendered by the chat template, with a generation prompt."""
    chat = template_messages([{"role": "user", "content": prompt}], family=family, eos_token=None)
    return _render(processor, chat, generation_prompt=True)


def encode_prompt(processor: Any, family: Family, prompt: str, image: Any) -> Encoded:
    """Encode a single user prompt with a generation prompt (for generation and scoring)."""
    text = prompt_text(processor, family, prompt)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    token_inputs = {key: batch[key][0].tolist() for key in family.token_inputs if key in batch}
    vision = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", *family.token_inputs)}
    return Encoded(input_ids=ids, labels=[IGNORE] * len(ids), token_inputs=token_inputs, vision=vision)


def collate(samples: list[Encoded], *, pad_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad token tensors (right for training, left for generation) and concatenate vision tensors."""
    import torch

    if not samples:
        raise ValueError("collate() needs at least one sample")
    length = max(len(s.input_ids) for s in samples)

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (length - len(seq))
        return seq + fill if padding_side == "right" else fill + seq

    batch: dict[str, Any] = {
        "input_ids": torch.tensor([pad(s.input_ids, pad_id) for s in samples], dtype=torch.long),
        "attention_mask": torch.tensor([pad([1] * len(s.input_ids), 0) for s in samples], dtype=torch.long),
        "labels": torch.tensor([pad(s.labels, IGNORE) for s in samples], dtype=torch.long),
    }
    for key in samples[0].token_inputs:
        batch[key] = torch.tensor([pad(s.token_inputs[key], 0) for s in samples], dtype=torch.long)
    for key in samples[0].vision:
        batch[key] = torch.cat([s.vision[key] for s in samples], dim=0)
    return batch
