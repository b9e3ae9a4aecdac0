"""Detection options (objects, attributes, relations) read from free text, for screening captions and answers.

`seed evaluate --detector` and `seed prepare --filter-with` turn a generated text into a Track 1
item with this module; the rules are pure text rules (docs/detect.md, "Screening captions and
answers"), all matching on the lowercased text, whose spans become the option texts:

- **object**: a COCO object mention found by CHAIR's own matcher (synonyms, plurals, two- and
  three-word terms, `seedcli.evals.chair.object_mentions`), or a single word naming an object kind
  of the synthetic world (`OBJECT_WORDS` by default) that CHAIR does not match;
- **attribute**: a size or colour word of `ATTRIBUTE_WORDS` directly before an object mention,
  separated by white space only ("small dog", "red cars");
- **relation**: an object mention, "is" or "are", a relation of `RELATIONS`, an optional article
  ("the", "a", "an"), an optional attribute word and a second object mention, word after word
  separated by white space only ("fork is left of the cat", "dogs are next to a red car").

Options are deduplicated by kind and text, ordered by where they start (an attribute before the
object it qualifies, a relation after the object that opens it), and named A, B, ...; an item holds
at most `MAX_OPTIONS` (26) and the rest are counted as truncated.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from seedcli.detect.items import Item, Option
from seedcli.detect.prompts import IDENTIFIER_SETS

SIZE_WORDS = ("big", "small", "large", "little", "tiny", "huge", "giant", "tall", "short", "long")
# Not "orange": it is a COCO category, and CHAIR reads it as the fruit.
COLOUR_WORDS = (
    "red", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray",
    "silver", "golden",
)  # fmt: skip
ATTRIBUTE_WORDS = frozenset(SIZE_WORDS + COLOUR_WORDS)
# Longest first where one is the tail of another ("to the left of" before "left of").
RELATIONS = (
    "to the left of", "left of", "to the right of", "right of", "on top of", "above", "below", "under",
    "next to", "beside", "in front of", "behind", "on",
)  # fmt: skip
COPULAS = frozenset({"is", "are"})
ARTICLES = frozenset({"the", "a", "an"})
MAX_OPTIONS = len(IDENTIFIER_SETS[0])

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Span:
    """An object mention: character span in the lowercased text and the token indices it covers."""

    start: int
    end: int
    first: int
    last: int


@dataclass(frozen=True)
class Extraction:
    """The options read from one text, and how many were cut at MAX_OPTIONS."""

    options: tuple[Option, ...]
    truncated: int = 0


@functools.lru_cache(maxsize=1)
def world_object_words() -> frozenset[str]:
    """The synthetic world's object kinds and their synonyms (lowercase, singular)."""
    from seedcli.data.synthetic import KINDS

    return frozenset(word for kind in KINDS for word in (kind.name, *kind.synonyms))


def _objects(text: str, tokens: list[re.Match[str]], extra: frozenset[str]) -> list[Span]:
    """CHAIR's mentions plus single-word `extra` object words CHAIR did not match, in text order."""
    from seedcli.evals.chair import object_mentions, singularize

    by_start = {t.start(): i for i, t in enumerate(tokens)}
    by_end = {t.end(): i for i, t in enumerate(tokens)}
    spans = [Span(m.start, m.end, by_start[m.start], by_end[m.end]) for m in object_mentions(text)]
    covered = {i for s in spans for i in range(s.first, s.last + 1)}
    for i, token in enumerate(tokens):
        if i not in covered and singularize(token.group()) in extra:
            spans.append(Span(token.start(), token.end(), i, i))
    return sorted(spans, key=lambda s: s.start)


def _spaced(text: str, tokens: list[re.Match[str]], first: int, last: int) -> bool:
    """Whether tokens first..last follow each other with only white space between them."""
    return all(text[tokens[i].end() : tokens[i + 1].start()].isspace() for i in range(first, last))


def _relation(text: str, tokens: list[re.Match[str]], subject: Span, starts: dict[int, Span]) -> Span | None:
    """The relation opened by `subject` ("X is REL [the] [adj] Y"), as a span from X to Y, or None."""
    i = subject.last + 1
    words = [t.group() for t in tokens]
    if i >= len(words) or words[i] not in COPULAS:
        return None
    i += 1
    for relation in RELATIONS:
        parts = relation.split()
        if words[i : i + len(parts)] == parts:
            i += len(parts)
            break
    else:
        return None
    if i < len(words) and words[i] in ARTICLES and i not in starts:
        i += 1
    if i < len(words) and words[i] in ATTRIBUTE_WORDS and i not in starts:
        i += 1
    target = starts.get(i)
    if target is None or not _spaced(text, tokens, subject.last, target.first):
        return None
    return Span(subject.start, target.end, subject.first, target.last)


def extract_options(
    text: str, *, object_words: frozenset[str] | None = None, limit: int = MAX_OPTIONS
) -> Extraction:
    """Object, attribute and relation options of `text` (rules in the module docstring)."""
    lowered = text.lower()
    extra = world_object_words() if object_words is None else object_words
    tokens = list(_WORD.finditer(lowered))
    objects = _objects(lowered, tokens, extra)
    starts = {s.first: s for s in objects}
    found: list[tuple[int, int, str, str]] = []  # (start, kind order, kind, text)
    for span in objects:
        found.append((span.start, 1, "object", lowered[span.start : span.end]))
        before = span.first - 1
        if before >= 0 and tokens[before].group() in ATTRIBUTE_WORDS and _spaced(lowered, tokens, before, span.first):
            found.append((tokens[before].start(), 0, "attribute", lowered[tokens[before].start() : span.end]))
        relation = _relation(lowered, tokens, span, starts)
        if relation is not None:
            found.append((relation.start, 2, "relation", lowered[relation.start : relation.end]))
    unique = list(dict.fromkeys((kind, phrase) for _, _, kind, phrase in sorted(found)))
    kept = unique[:limit]
    ids = IDENTIFIER_SETS[0]
    options = tuple(Option(ids[i], phrase, kind) for i, (kind, phrase) in enumerate(kept))
    return Extraction(options, len(unique) - len(kept))


def item_from_text(item_id: str, text: str, image: Path, *, object_words: frozenset[str] | None = None) -> Item | None:
    """A Track 1 item (no labels) over the options of `text`, or None when it has none."""
    options = extract_options(text, object_words=object_words).options
    return Item(item_id, Path(image), 1, text, None, options) if options else None
