"""CHAIR (Rohrbach et al. 2018): COCO object mentions in captions and the hallucination metrics.

Protocol: docs/protocols.md, CHAIR. Offline by construction: an own regex tokenizer and own
singularisation rules, no nltk or lemmatiser data. The synonym table ships as package data
(seedcli/data/coco_synonyms.txt): one line per COCO category, comma-separated, the first entry is
the category and every entry (the category included) maps to it.

Extraction pipeline of `caption_objects`:

1. lowercase and tokenize into runs of letters a-z (so "hot-dog" -> "hot", "dog"; "dog's" ->
   "dog", "s"; digits and punctuation are separators);
2. singularise every token (`singularize`);
3. merge multi-word terms, longest first (three words, then two), left to right: the terms of
   the protocol (MERGE_TERMS), every multi-word entry of the synonym table, and the rewrites
   "toilet seat" -> toilet, "bow tie" -> tie, "passenger jet/train" -> jet/train, "baby X" /
   "adult X" -> X for X in ANIMALS. Term words are singularised too, so "sports balls" matches
   "sports ball". A merged term that is not in the table ("train track", "home plate",
   "baby animal") is consumed and yields no mention, which is the point of merging it;
4. drop every "seat" when the word "toilet" occurs anywhere in the caption (the seat of a toilet
   is not a chair);
5. keep the terms found in the synonym table, mapped to their category; every occurrence counts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from seedcli.errors import DataError
from seedcli.evals.stats import DEFAULT_CONFIDENCE, bootstrap_ci

SYNONYMS_PACKAGE = "seedcli.data"
SYNONYMS_FILE = "coco_synonyms.txt"

# Two-word terms merged before lookup (docs/protocols.md, CHAIR; "stove top oven" has three words).
MERGE_TERMS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate", "train track",
)  # fmt: skip
# "baby X" / "adult X" -> X for these; otherwise "baby" and "adult" are person synonyms.
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
AGE_WORDS = ("baby", "adult")
# Multi-word terms that stand for another term.
REWRITES = {"toilet seat": "toilet", "bow tie": "tie", "passenger jet": "jet", "passenger train": "train"}
# "seat" is a chair synonym, except where a toilet is being described.
SEAT, TOILET = "seat", "toilet"

_TOKEN = re.compile(r"[a-z]+")

# Plurals no suffix rule gets right. Entries that are table words (people, children, oxen, skis)
# are shadowed: `singularize` returns table words unchanged before looking here.
_IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse",
    "geese": "goose", "teeth": "tooth", "feet": "foot", "oxen": "ox", "knives": "knife",
    "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "calves": "calf", "halves": "half",
    "loaves": "loaf", "wives": "wife", "lives": "life", "thieves": "thief", "scarves": "scarf",
    "hooves": "hoof", "skis": "ski", "dice": "die", "cacti": "cactus",
    "buffaloes": "buffalo", "tomatoes": "tomato", "potatoes": "potato", "mangoes": "mango",
    "heroes": "hero", "volcanoes": "volcano", "echoes": "echo",
}  # fmt: skip
# Words that end like a plural but are not one (or have no singular).
_INVARIANT = frozenset(
    {
        "bus",
        "glass",
        "grass",
        "dress",
        "gas",
        "series",
        "species",
        "news",
        "scissors",
        "pants",
        "jeans",
        "shorts",
        "trousers",
        "clothes",
        "physics",
        "mathematics",
    }
)
# -men words that are not plurals of -man.
_NOT_MEN_PLURALS = frozenset({"specimen", "abdomen", "omen", "ramen", "semen", "stamen", "regimen", "hymen", "amen"})
# Plural endings that drop "es" (glasses, benches, dishes, boxes, buzzes); other -es words drop "s".
_ES_PLURALS = ("sses", "ches", "shes", "xes", "zzes")
# Endings of singular words that end in "s" (grass, bus, tennis), and the shortest plural length.
_NOT_PLURAL_ENDINGS = ("ss", "us", "is")
_SHORTEST_PLURAL = 4


def parse_synonyms(text: str, source: str = SYNONYMS_FILE) -> dict[str, str]:
    """Parse synonym-table text into {lowercase word or phrase: category}.

    Entries are stripped and inner whitespace collapsed; empty entries and repeated entries are
    ignored; an entry listed under two different categories raises DataError naming `source`.
    """
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entries = [" ".join(entry.split()).lower() for entry in line.split(",")]
        entries = [entry for entry in entries if entry]
        if not entries:
            continue
        category = entries[0]
        for entry in entries:
            if table.get(entry, category) != category:
                raise DataError(f"{source}:{number}: '{entry}' is listed under both '{table[entry]}' and '{category}'.")
            table[entry] = category
    if not table:
        raise DataError(f"{source}: the synonym table is empty.")
    return table


@functools.lru_cache(maxsize=1)
def _synonyms() -> dict[str, str]:
    text = resources.files(SYNONYMS_PACKAGE).joinpath(SYNONYMS_FILE).read_text(encoding="utf-8")
    return parse_synonyms(text, f"{SYNONYMS_PACKAGE}/{SYNONYMS_FILE}")


def load_synonyms() -> dict[str, str]:
    """The packaged synonym table: {lowercase synonym word or multi-word phrase: COCO category}."""
    return dict(_synonyms())


@functools.lru_cache(maxsize=1)
def categories() -> tuple[str, ...]:
    """The COCO categories of the synonym table (80), in file order."""
    return tuple(dict.fromkeys(_synonyms().values()))


@functools.lru_cache(maxsize=1)
def _table_words() -> frozenset[str]:
    return frozenset(entry for entry in _synonyms() if " " not in entry)


def singularize(word: str) -> str:
    """Singular of a lowercase English word by own rules; synonym-table words are returned unchanged.

    Order: a single-word table entry is kept ("people", "children", "oxen", "skis", "bus" map to
    their categories as written); an irregular plural is looked up ("men" -> "man", "knives" ->
    "knife", "mice" -> "mouse"); invariants stay ("glass", "grass", "dress", "series"); "-men" ->
    "-man" ("policemen"), "-children" -> "-child"; a word whose form without the final "s" is a
    table word loses it ("tvs", "collies", "doggies"); words of three letters or fewer and words
    ending in "ss", "us", "is" stay; "-ies" -> "-y" ("ponies"); "-sses/-ches/-shes/-xes/-zzes" lose "es" ("glasses",
    "benches", "dishes", "boxes"); "-buses" -> "-bus"; any other final "s" is dropped ("stoves").
    """
    table = _table_words()
    if word in table:
        return word
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _INVARIANT:
        return word
    if word.endswith("men") and word not in _NOT_MEN_PLURALS:
        return word[: -len("men")] + "man"
    if word.endswith("children"):
        return word[: -len("ren")]
    if not word.endswith("s"):
        return word
    if word[:-1] in table:
        return word[:-1]
    if len(word) < _SHORTEST_PLURAL or word.endswith(_NOT_PLURAL_ENDINGS):
        return word
    if word.endswith("buses"):
        return word[: -len("es")]
    if word.endswith("ies") and len(word) > _SHORTEST_PLURAL:
        return word[: -len("ies")] + "y"
    if word.endswith(_ES_PLURALS):
        return word[: -len("es")]
    return word[:-1]


def tokenize(text: str) -> list[str]:
    """Lowercase runs of letters a-z: the words CHAIR looks at."""
    return _TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1)
def _phrases() -> dict[tuple[str, ...], tuple[str, str]]:
    """{singularised term words: (term as written, term to look up in the table)}."""
    terms: dict[str, str] = {term: term for term in MERGE_TERMS}
    terms.update({entry: entry for entry in _synonyms() if " " in entry})
    terms.update({f"{age} {animal}": animal for age in AGE_WORDS for animal in ANIMALS})
    terms.update(REWRITES)
    return {tuple(singularize(w) for w in term.split()): (term, target) for term, target in terms.items()}


@dataclass(frozen=True)
class Mention:
    """One COCO object mention: the matched term, its category and its span in the lowercased text."""

    term: str
    category: str
    start: int
    end: int


def object_mentions(text: str) -> list[Mention]:
    """COCO object mentions of a caption with their character spans in `text.lower()` (see `caption_objects`)."""
    synonyms = _synonyms()
    phrases = _phrases()
    longest = max(len(key) for key in phrases)
    tokens = list(_TOKEN.finditer(text.lower()))
    words = [singularize(token.group()) for token in tokens]
    has_toilet = TOILET in words
    mentions: list[Mention] = []
    i = 0
    while i < len(words):
        start = i
        for size in range(min(longest, len(words) - i), 1, -1):
            key = tuple(words[i : i + size])
            if key in phrases:
                surface, term = phrases[key]
                i += size
                break
        else:
            surface = term = words[i]
            i += 1
        if term == SEAT and has_toilet:
            continue
        if term in synonyms:
            mentions.append(Mention(surface, synonyms[term], tokens[start].start(), tokens[i - 1].end()))
    return mentions


def caption_objects(text: str) -> list[tuple[str, str]]:
    """COCO object mentions of a caption, in order, repeats kept: [(term, category), ...].

    `term` is the matched word or merged term, lowercase and singular ("dog" for "Dogs", "hot dog"
    for "hot dogs", "baby elephant", "toilet seat"); `category` is its COCO category. See the
    module docstring for the exact pipeline.
    """
    return [(m.term, m.category) for m in object_mentions(text)]


def caption_categories(text: str) -> set[str]:
    """The set of COCO categories a caption mentions (for ground truth from reference captions)."""
    return {category for _, category in caption_objects(text)}


def _chair_i(records: Sequence[dict[str, Any]]) -> float:
    mentions = sum(len(r["mentions"]) for r in records)
    return 100.0 * sum(len(r["hallucinated"]) for r in records) / mentions if mentions else 0.0


def _chair_s(records: Sequence[dict[str, Any]]) -> float:
    return 100.0 * sum(1 for r in records if r["hallucinated"]) / len(records) if records else 0.0


def _check_items(items: Sequence[dict[str, Any]]) -> None:
    if not items:
        raise DataError("CHAIR needs at least one caption.")
    known = set(categories())
    seen: set[Any] = set()
    for item in items:
        missing = [key for key in ("image_id", "caption", "gt_objects") if key not in item]
        if missing:
            raise DataError(f"CHAIR item {item.get('image_id', '?')!r} lacks {', '.join(missing)}.")
        if item["image_id"] in seen:
            raise DataError(f"CHAIR items repeat image_id {item['image_id']!r}; score each image once.")
        seen.add(item["image_id"])
        unknown = sorted(set(item["gt_objects"]) - known)
        if unknown:
            raise DataError(
                f"image {item['image_id']!r}: ground truth {', '.join(unknown)} not COCO categories; map objects "
                "through the synonym table first."
            )


def chair_metrics(
    items: Iterable[dict[str, Any]],
    *,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """CHAIR over captions; rates in PERCENT (x100, as papers report them), hence the `_pct` keys.

    Each item: {"image_id", "caption", "gt_objects": iterable of COCO categories}. A mention is
    hallucinated when its category is not in its image's ground truth. Returns:

    - chair_i_pct: 100 * hallucinated mentions / all mentions (repeats count; 0 when no mentions);
    - chair_s_pct: 100 * captions with >= 1 hallucinated mention / captions;
    - recall_pct: 100 * sum over images of |ground-truth categories mentioned| / sum over images of
      |ground-truth categories| (unique categories per image, pooled over images; 0 when none);
    - mean_length_words: mean number of whitespace-separated words per caption;
    - counts: n_captions, n_mentions, n_hallucinated_mentions, n_hallucinated_captions,
      n_gt_objects, n_gt_mentioned;
    - per_image: [{"image_id", "mentions": [(term, category)], "hallucinated": [(term, category)],
      "gt_mentioned": sorted categories, "length_words", "n_gt_objects"}] in input order;
    - with bootstrap = B > 0: chair_s_ci_pct and chair_i_ci_pct, percentile intervals at
      `confidence` from B resamples of images (stats.bootstrap_ci with `seed`); CHAIR_i is
      recomputed as a pooled ratio in each resample.
    """
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise DataError(f"chair_metrics: bootstrap is a number of resamples (0 = off), got {bootstrap!r}.")
    items = list(items)
    _check_items(items)
    per_image = []
    for item in items:
        gt = set(item["gt_objects"])
        mentions = caption_objects(item["caption"])
        per_image.append(
            {
                "image_id": item["image_id"],
                "mentions": mentions,
                "hallucinated": [m for m in mentions if m[1] not in gt],
                "gt_mentioned": sorted(gt & {category for _, category in mentions}),
                "length_words": len(item["caption"].split()),
                "n_gt_objects": len(gt),
            }
        )
    n_gt = sum(r["n_gt_objects"] for r in per_image)
    n_gt_mentioned = sum(len(r["gt_mentioned"]) for r in per_image)
    result: dict[str, Any] = {
        "chair_s_pct": _chair_s(per_image),
        "chair_i_pct": _chair_i(per_image),
        "recall_pct": 100.0 * n_gt_mentioned / n_gt if n_gt else 0.0,
        "mean_length_words": sum(r["length_words"] for r in per_image) / len(per_image),
        "n_captions": len(per_image),
        "n_mentions": sum(len(r["mentions"]) for r in per_image),
        "n_hallucinated_mentions": sum(len(r["hallucinated"]) for r in per_image),
        "n_hallucinated_captions": sum(1 for r in per_image if r["hallucinated"]),
        "n_gt_objects": n_gt,
        "n_gt_mentioned": n_gt_mentioned,
    }
    if bootstrap:
        result["chair_s_ci_pct"] = bootstrap_ci(
            per_image, _chair_s, n_resamples=bootstrap, seed=seed, confidence=confidence
        )
        result["chair_i_ci_pct"] = bootstrap_ci(
            per_image, _chair_i, n_resamples=bootstrap, seed=seed, confidence=confidence
        )
    result["per_image"] = per_image
    return result
