"""Two-way answer logits of a vision-language model for a batch of questions (one forward, no generation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli.detect.questions import Question


@dataclass
class Images:
    """Decoded item images (and their mirrors), loaded once."""

    paths: list[Path]

    def __post_init__(self) -> None:
        self._cache: dict[tuple[int, bool], Any] = {}

    def get(self, index: int, flip: bool) -> Any:
        """The RGB image of item `index`, mirrored left-right when `flip`."""
        key = (index, flip)
        if key not in self._cache:
            from PIL import Image, ImageOps

            with Image.open(self.paths[index]) as handle:
                image = handle.convert("RGB")
            self._cache[key] = ImageOps.mirror(image) if flip else image
        return self._cache[key]


def word_id(tokenizer: Any, word: str) -> int:
    """The first token of `word` as the model would answer it."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer maps label word {word!r} to no token")
    return int(ids[0])


def encode_batch(loaded: Any, questions: list[Question], images: Images) -> dict[str, Any]:
    """Left-padded model inputs: the answer is read at the last position of every row."""
    from seedcli.models.chat import collate, encode_prompt

    samples = [encode_prompt(loaded.processor, loaded.family, q.prompt, images.get(q.item, q.flip)) for q in questions]
    batch = collate(samples, pad_id=loaded.processor.tokenizer.pad_token_id, padding_side="left")
    batch.pop("labels")
    return {k: v.to(loaded.device) for k, v in batch.items()}


def answer_logits(loaded: Any, model: Any, inputs: dict[str, Any], questions: list[Question]) -> Any:
    """[B, 2] logits of (supported word, hallucinated word) at the answer position."""
    import torch

    from seedcli.models.forward import hidden_states, unwrap

    hidden = hidden_states(model, inputs)[:, -1]  # [B, H]
    logits = unwrap(model).get_output_embeddings()(hidden)  # [B, V]
    tokenizer = loaded.processor.tokenizer
    ids = torch.tensor([[word_id(tokenizer, w) for w in q.words] for q in questions], device=logits.device)  # [B, 2]
    return logits.gather(1, ids)
