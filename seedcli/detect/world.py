"""Detection items from the synthetic world, with controlled hallucinations.

Scenes reuse the world's object kinds (each drawn in its own colour and shape) and its 2x2 grid;
every object is drawn big or small (`prompts.SIZES`), an attribute that can only be checked in the
image (a colour word could be checked from the kind alone). A Track 1 caption names the objects with
their sizes and one or two relations between them; each phrase is then corrupted with a set
probability:
- object: a kind that is not in the image is added (half the time the usual partner of a present
  object, the world's co-occurrence prior);
- attribute: a present object is given the wrong size;
- relation: a true relation (left of, right of, above, below from the grid cells) is reversed.
Options are the object names, the "size name" phrases and the relation phrases; labels are the
corrupted ones. Track 2 items pair a context (the objects present) with one claim about an
existing object, a size or a relation, factual or not with probability 1/2.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from seedcli.detect.items import FACTUAL, NOT_FACTUAL, Item, Option, write_items
from seedcli.detect.prompts import CAPTION_OPENERS, IDENTIFIER_SETS, SIZES
from seedcli.reporting import NullReporter, Reporter

GRID = 2
IMAGES_DIR = "images"
SPLITS = ("train", "dev", "test")
UNLABELLED = "unlabelled"  # the transfer set's split: items without labels
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and corruption rates of the generated detection sets."""

    track1: tuple[int, int, int] = (120, 80, 200)  # train, dev, test items
    track2: tuple[int, int, int] = (60, 40, 100)
    # Unlabelled items per track (the transfer set: distillation stages learn the teachers' answers on them).
    unlabelled: tuple[int, int] = (360, 180)
    objects: tuple[int, int] = (2, 3)
    object_rate: float = 0.5  # P(a hallucinated object is added to a caption)
    attribute_rate: float = 0.3  # P(a size phrase is wrong)
    relation_rate: float = 0.4  # P(a relation phrase is reversed)
    relations: tuple[int, int] = (1, 2)
    image_size: int = 64


@dataclass(frozen=True)
class Thing:
    """One drawn object: kind, size word, grid cell."""

    name: str
    size: str
    cell: int


def true_relation(a: Thing, b: Thing, rng: random.Random) -> str:
    """A true relation of `a` to `b` (distinct cells of the grid always have one)."""
    (ra, ca), (rb, cb) = divmod(a.cell, GRID), divmod(b.cell, GRID)
    choices = []
    if ca != cb:
        choices.append("left of" if ca < cb else "right of")
    if ra != rb:
        choices.append("above" if ra < rb else "below")
    return rng.choice(choices)


def _render(things: list[Thing], size: int, rng: random.Random, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(things, size, rng).save(path, format="PNG")


def draw(things: list[Thing], size: int, rng: random.Random) -> Any:
    """The RGB image of `things` on a noisy grey background (a PIL image of side `size`)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from seedcli.data.synthetic import KINDS, _draw_shape

    kinds = {k.name: k for k in KINDS}
    cell = size // GRID
    grey = rng.randint(112, 144)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-6, 7, size=(size, size, 1))
    pixels = np.clip(grey + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)
    for thing in things:
        side = max(4, round(cell * rng.uniform(*SIZES[thing.size])))
        x0 = (thing.cell % GRID) * cell + rng.randint(0, cell - side)
        y0 = (thing.cell // GRID) * cell + rng.randint(0, cell - side)
        mask_image = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask_image), kinds[thing.name].shape, (x0, y0, x0 + side - 1, y0 + side - 1))
        pixels[np.asarray(mask_image) > 0] = [
            min(255, max(0, c + rng.randint(-12, 12))) for c in kinds[thing.name].colour
        ]
    return Image.fromarray(pixels, "RGB")


def scene(rng: random.Random, spec: WorldSpec) -> list[Thing]:
    """A random scene: distinct kinds in distinct grid cells, each big or small."""
    from seedcli.data.synthetic import KINDS

    names = rng.sample([k.name for k in KINDS], rng.randint(*spec.objects))
    cells = rng.sample(range(GRID * GRID), len(names))
    return [Thing(n, rng.choice(sorted(SIZES)), c) for n, c in zip(names, cells)]


def absent_kind(things: list[Thing], rng: random.Random) -> str:
    """A kind not in the scene: half the time the usual partner of a present one (the co-occurrence prior)."""
    from seedcli.data.synthetic import KINDS, PAIRS

    present = {t.name for t in things}
    partners = [b for a, b in PAIRS if a in present and b not in present] + [
        a for a, b in PAIRS if b in present and a not in present
    ]
    if partners and rng.random() < 0.5:
        return rng.choice(partners)
    return rng.choice([k.name for k in KINDS if k.name not in present])


def other_size(size: str) -> str:
    """The size word that is not `size`."""
    return next(s for s in sorted(SIZES) if s != size)


def article(word: str) -> str:
    """The indefinite article before `word`."""
    return "an" if word[:1] in "aeiou" else "a"


def object_list(pairs: list[tuple[str, str]]) -> str:
    """(size, name) pairs as a caption lists them: "a big fork, a small cat and a big dog"."""
    listed = [f"{article(size)} {size} {name}" for size, name in pairs]
    return listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]


def track1_item(item_id: str, image: Path, things: list[Thing], rng: random.Random, spec: WorldSpec) -> Item:
    """A caption over `things` with corrupted phrases, its options and labels."""
    phrases: list[tuple[str, str, bool]] = []  # (size, name, size wrong)
    for t in things:
        wrong = rng.random() < spec.attribute_rate
        size = other_size(t.size) if wrong else t.size
        phrases.append((size, t.name, wrong))
    hallucinated_object = None
    if rng.random() < spec.object_rate:
        hallucinated_object = absent_kind(things, rng)
        phrases.insert(rng.randint(0, len(phrases)), (rng.choice(sorted(SIZES)), hallucinated_object, False))
    sentences = [f"{rng.choice(CAPTION_OPENERS)} {object_list([(c, n) for c, n, _ in phrases])}."]
    options: list[tuple[str, str, bool]] = []  # (text, kind, hallucinated)
    for size, name, wrong in phrases:
        absent = name == hallucinated_object
        # The size phrase of an absent object is unsupported too; listing it keeps the option set
        # from revealing which object was added.
        options.append((name, "object", absent))
        options.append((f"{size} {name}", "attribute", wrong or absent))
    pairs = [(a, b) for a in things for b in things if a is not b]
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(*spec.relations))):
        relation = true_relation(a, b, rng)
        wrong = rng.random() < spec.relation_rate
        phrase = f"{a.name} is {OPPOSITE[relation] if wrong else relation} the {b.name}"
        if any(phrase == text for text, _, _ in options):
            continue
        sentences.append(f"The {phrase}.")
        options.append((phrase, "relation", wrong))
    rng.shuffle(options)
    ids = IDENTIFIER_SETS[0]
    opts = tuple(Option(ids[i], text, kind) for i, (text, kind, _) in enumerate(options))
    labels = tuple(ids[i] for i, (_, _, bad) in enumerate(options) if bad)
    return Item(item_id, image, 1, " ".join(sentences), None, opts, labels)


def track2_item(item_id: str, image: Path, things: list[Thing], rng: random.Random) -> Item:
    """A context naming the objects and one claim, factual with probability 1/2."""
    context = f"The image shows {' and '.join(f'{article(t.name)} {t.name}' for t in things)}."
    factual = rng.random() < 0.5
    kind = rng.choice(("object", "attribute", "relation") if len(things) > 1 else ("object", "attribute"))
    if kind == "object":
        name = rng.choice(things).name if factual else absent_kind(things, rng)
        claim = f"there is {article(name)} {name}."
    elif kind == "attribute":
        t = rng.choice(things)
        claim = f"the {t.name} is {t.size if factual else other_size(t.size)}."
    else:
        a, b = rng.sample(things, 2)
        relation = true_relation(a, b, rng)
        claim = f"the {a.name} is {relation if factual else OPPOSITE[relation]} the {b.name}."
    return Item(item_id, image, 2, claim, context, (), (FACTUAL if factual else NOT_FACTUAL,))


def build_detect_sets(
    out: Path, *, seed: int, spec: WorldSpec = WorldSpec(), reporter: Reporter | None = None
) -> dict[str, int]:
    """Render images and write track{1,2}-{train,dev,test,unlabelled}.jsonl into `out`; returns item counts.

    The unlabelled split (the transfer set) draws from its own stream: the labelled splits of a seed
    are the same with or without it.
    """
    reporter = reporter or NullReporter()
    out = Path(out)
    counts: dict[str, int] = {}
    total = sum(spec.track1) + sum(spec.track2) + sum(spec.unlabelled)
    with reporter.task("Rendering detection items", total=total, unit="item") as task:

        def write(track: int, split: str, n: int, rng: random.Random, labelled: bool = True) -> None:
            items = []
            for i in range(n):
                item_id = f"t{track}-{split}-{i:05d}"
                image = out / IMAGES_DIR / f"{item_id}.png"
                things = scene(rng, spec)
                _render(things, spec.image_size, rng, image)
                item = (
                    track1_item(item_id, image, things, rng, spec)
                    if track == 1
                    else track2_item(item_id, image, things, rng)
                )
                items.append(item if labelled else replace(item, labels=None))
                task.advance()
            write_items(out / f"track{track}-{split}.jsonl", items)
            counts[f"track{track}_{split}"] = n

        rng = random.Random(f"detect-{seed}")
        for track, sizes in ((1, spec.track1), (2, spec.track2)):
            for split, n in zip(SPLITS, sizes):
                write(track, split, n, rng)
        rng = random.Random(f"detect-{seed}-{UNLABELLED}")
        for track, n in zip((1, 2), spec.unlabelled):
            write(track, UNLABELLED, n, rng, labelled=False)
    return counts
