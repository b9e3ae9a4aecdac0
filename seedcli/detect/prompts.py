"""Prompts of the detector and the mappings between option identifiers, order and label words.

A `Mapping` fixes how an item is shown to the model: the order in which its options are listed,
which identifier set names them (A, B, ... or 1, 2, ...), and which pair of label words answers
(supported word, hallucinated word). Training draws mappings at random (augmentation); inference
with K shifts asks under K deterministic mappings and maps every answer back to its option id, so
a model's preference for a position, an identifier or a label token averages out.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

IDENTIFIER_SETS: tuple[tuple[str, ...], ...] = (
    tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    tuple(str(i) for i in range(1, 27)),
)
# (word meaning "supported", word meaning "hallucinated / not factual")
LABEL_WORDS: tuple[tuple[str, str], ...] = (("yes", "no"), ("true", "false"), ("right", "wrong"))

# The asked option (or the claim) comes last, right before the answer position: small models learn
# to read it there many times faster than from the middle of the prompt (measured on the tiny rungs).
TRACK1_PROMPT = (
    "Caption: {caption}\nOptions: {options}\nAnswer {yes} or {no}: is this option supported by the image?\n"
    "Option {identifier}: {text}"
)
TRACK2_PROMPT = "{context}Answer {yes} or {no}: is this claim supported by the image?\nClaim: {claim}"
CONTEXT_LINE = "Context: {context}\n"

# The language of the synthetic detection world (its captions and claims), kept here so that the
# tiny models' vocabulary can include it without importing the renderer.
# Objects are drawn in their kind's own colour (as in the world), so a colour word could be checked
# without the image; the visual attribute is the size instead.
SIZES = {"big": (0.8, 0.95), "small": (0.4, 0.5)}  # side as a share of the grid cell
RELATIONS = ("left of", "right of", "above", "below")
FLIP_WORDS = {"left": "right", "right": "left"}
CAPTION_OPENERS = ("The image shows", "There is", "A picture of", "This photo shows")
WORLD_TEMPLATES = ("the {a} is {relation} the {b}.", "there is {article} {size} {name}.", "the {name} is {size}.")

_WORD = re.compile(r"[A-Za-z]+|\d+|[^\w\s]")


@dataclass(frozen=True)
class Mapping:
    """How options and answers are shown: display order (original indices), identifier set, label words."""

    order: tuple[int, ...]
    identifiers: int = 0
    labels: int = 0

    def ids(self) -> tuple[str, ...]:
        """The identifier shown at each display position."""
        return IDENTIFIER_SETS[self.identifiers][: len(self.order)]

    def words(self) -> tuple[str, str]:
        """(supported word, hallucinated word)."""
        return LABEL_WORDS[self.labels]


def identity(n: int) -> Mapping:
    """Options in their given order, letters, yes/no."""
    return Mapping(order=tuple(range(n)))


def shifted(n: int, k: int) -> Mapping:
    """The k-th deterministic shift: order rotated by k, identifier set and label words cycled (k = 0 is `identity`)."""
    order = tuple((i + k) % n for i in range(n)) if n else ()
    return Mapping(order=order, identifiers=k % len(IDENTIFIER_SETS), labels=k % len(LABEL_WORDS))


def sampled(n: int, rng: random.Random) -> Mapping:
    """A random mapping (training augmentation)."""
    order = list(range(n))
    rng.shuffle(order)
    return Mapping(
        order=tuple(order), identifiers=rng.randrange(len(IDENTIFIER_SETS)), labels=rng.randrange(len(LABEL_WORDS))
    )


def map_back(values_in_display_order: list[float], mapping: Mapping) -> list[float]:
    """Values indexed by display position -> values indexed by original option index."""
    out = [0.0] * len(mapping.order)
    for position, original in enumerate(mapping.order):
        out[original] = values_in_display_order[position]
    return out


def check_capacity(n_options: int, where: str) -> None:
    """Items may have at most as many options as there are identifiers."""
    from seedcli.errors import DataError

    limit = min(len(s) for s in IDENTIFIER_SETS)
    if n_options > limit:
        raise DataError(f"{where}: {n_options} options; at most {limit} are supported.")


def track1_prompt(caption: str, option_texts: list[str], mapping: Mapping, asked: int) -> str:
    """The question about original option `asked`, with the options listed under `mapping`."""
    ids = mapping.ids()
    listed = "; ".join(f"{ids[pos]}. {option_texts[orig]}" for pos, orig in enumerate(mapping.order))
    identifier = ids[mapping.order.index(asked)]
    yes, no = mapping.words()
    text = option_texts[asked]
    return TRACK1_PROMPT.format(caption=caption, options=listed, identifier=identifier, text=text, yes=yes, no=no)


def track2_prompt(context: str | None, claim: str, mapping: Mapping) -> str:
    """The factuality question about `claim` (only the label words are mapped)."""
    yes, no = mapping.words()
    prefix = CONTEXT_LINE.format(context=context) if context else ""
    return TRACK2_PROMPT.format(context=prefix, claim=claim, yes=yes, no=no)


def flip_text(text: str) -> str:
    """Swap 'left' and 'right' (a horizontally flipped image makes the swapped relation true)."""
    return re.sub(r"\b(left|right)\b", lambda m: FLIP_WORDS[m.group(1)], text)


def paraphrase(caption: str, rng: random.Random) -> str:
    """Replace a known caption opener by another one; captions without one are returned unchanged."""
    for opener in CAPTION_OPENERS:
        if caption.startswith(opener):
            return rng.choice(CAPTION_OPENERS) + caption[len(opener) :]
    return caption


def vocabulary() -> list[str]:
    """Every word and punctuation mark the prompts and the synthetic detection world can contain."""
    texts = [TRACK1_PROMPT, TRACK2_PROMPT, CONTEXT_LINE, *CAPTION_OPENERS, *WORLD_TEMPLATES, *RELATIONS]
    words = {w.lower() for t in texts for w in _WORD.findall(re.sub(r"\{\w+\}", " ", t))}
    words |= {w for pair in LABEL_WORDS for w in pair} | set(SIZES)
    words |= {i.lower() for ids in IDENTIFIER_SETS for i in ids}
    words |= {"a", "an", ";", ".", ",", "and"}
    return sorted(words)
