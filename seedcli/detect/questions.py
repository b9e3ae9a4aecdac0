"""Items -> yes/no questions under a mapping, and the training augmentations.

A Track 1 item with n options gives n questions ("is option X supported?"), each listing every
option under the same mapping; a Track 2 item gives one. `target` is 1 when the option is
hallucinated (or the claim not factual), None when the item has no labels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from seedcli.detect import prompts
from seedcli.detect.items import Item


@dataclass(frozen=True)
class Question:
    """One question to the model: which item/option, the prompt, the label words, the target."""

    item: int  # index into the item list
    option: int  # original option index; -1 for a Track 2 claim
    prompt: str
    words: tuple[str, str]  # (supported word, hallucinated word)
    flip: bool  # the image is shown mirrored left-right
    target: int | None


@dataclass(frozen=True)
class Augment:
    """Which training augmentations are on."""

    mappings: bool = True  # option order, identifier set and label words drawn at random
    paraphrase: bool = True  # caption openers swapped
    flip: bool = True  # image mirrored with left/right swapped in the texts


NO_AUGMENT = Augment(mappings=False, paraphrase=False, flip=False)


def questions(
    index: int, item: Item, mapping: prompts.Mapping, *, flip: bool = False, caption: str | None = None
) -> list[Question]:
    """All questions of `item` under `mapping` (its order must cover the item's options)."""
    text = caption if caption is not None else item.text
    swap = prompts.flip_text if flip else (lambda s: s)
    words = mapping.words()
    if item.track == 2:
        target = None if item.labels is None else int(not item.factual())
        context = swap(item.context) if item.context else item.context
        return [Question(index, -1, prompts.track2_prompt(context, swap(text), mapping), words, flip, target)]
    texts = [swap(o.text) for o in item.options]
    flags = item.hallucinated() if item.labels is not None else None
    out = []
    for i, option in enumerate(item.options):
        target = None if flags is None else int(flags[option.id])
        out.append(Question(index, i, prompts.track1_prompt(swap(text), texts, mapping, i), words, flip, target))
    return out


def training_questions(items: list[Item], rng: random.Random, augment: Augment) -> list[Question]:
    """One epoch of questions: every option of every item once, augmented per item."""
    out: list[Question] = []
    for index, item in enumerate(items):
        n = len(item.options)
        mapping = prompts.sampled(n, rng) if augment.mappings else prompts.identity(n)
        flip = augment.flip and rng.random() < 0.5
        caption = prompts.paraphrase(item.text, rng) if augment.paraphrase and item.track == 1 else None
        out.extend(questions(index, item, mapping, flip=flip, caption=caption))
    return out


def shifted_questions(items: list[Item], k: int) -> list[Question]:
    """Questions of every item under its k-th deterministic shift (k = 0: plain)."""
    return [
        q for index, item in enumerate(items) for q in questions(index, item, prompts.shifted(len(item.options), k))
    ]
