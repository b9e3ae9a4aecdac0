"""The offline synthetic world: rendered objects with a controlled co-occurrence prior.

Twelve object kinds named after COCO categories are drawn as flat shapes (each kind has its own
colour AND shape) in the cells of a 2x2 grid over a lightly noised grey background. Objects come
in partner pairs (fork -> knife, dog -> frisbee, ...): an image holds one or two "anchors", each
anchor's partner is added with probability `cooccurrence`, and the free cells are filled, each with
probability `Mix.distractor_rate`, by an independent object (a singleton or the partner of an
absent anchor; never an anchor, so P(partner | anchor) is exactly `cooccurrence` in expectation).
A tiny model trained on the conversations learns "fork, therefore knife": the language prior that
POPE-adversarial and CHAIR measure and that SEED should purge.

Besides that visual co-occurrence, the conversations can carry the text-borne sources of real
machine-generated instruction data, each a `Mix` knob: `yes_rate` (existence questions drawn as
positives), `label_noise` (descriptions and "yes" answers that name the absent usual partner of a
visible anchor, as a hallucinated annotation would) and `partner_negative_rate` (how often a "no"
question asks about exactly that absent partner). At their defaults no extra random draw is made,
so the default world is byte-identical to the world before these knobs existed.

Layout under `raw_dir` (COCO conventions, so the real prepare path reads it unchanged)::

    llava_instruct_synthetic.json           LLaVA-Instruct conversations over the training images
    train2014/COCO_train2014_%012d.png      training images
    val2014/COCO_val2014_%012d.png          held-out evaluation images (ids disjoint from training)
    annotations/instances_val2014.json      COCO instances of the evaluation images
    annotations/captions_val2014.json       1-3 reference captions per evaluation image
    annotations/instances_train2014.json    COCO instances of the training images (statistics, tests)

Texts use a small, regular language; `vocabulary()` lists every token they can contain, split by
`text_tokens` (words and single punctuation marks; the "<image>" placeholder is not included).
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from seedcli import atomic
from seedcli.data.world_defaults import DEFAULT_COOCCURRENCE, DEFAULT_IMAGES  # noqa: E402  (re-exported)
from seedcli.errors import ConfigError
from seedcli.reporting import NullReporter, Reporter

DEFAULT_EVAL_FRACTION = 0.25
DEFAULT_IMAGE_SIZE = 64
DEFAULT_POPE_IMAGES = 80
"""POPE images the default world supports (eval images with >= 3 objects; a test guards it)."""

GRID = 2
MAX_IMAGE_ID = 600_000
INSTRUCT_FILE = "llava_instruct_synthetic.json"
TRAIN_DIR = "train2014"
EVAL_DIR = "val2014"
TRAIN_NAME = "COCO_train2014_{:012d}.png"
EVAL_NAME = "COCO_val2014_{:012d}.png"
INSTANCES_EVAL = "annotations/instances_val2014.json"
INSTANCES_TRAIN = "annotations/instances_train2014.json"
CAPTIONS_EVAL = "annotations/captions_val2014.json"


@dataclass(frozen=True)
class Kind:
    """One object kind: its COCO category and how it is drawn."""

    name: str
    coco_id: int
    supercategory: str
    colour: tuple[int, int, int]
    shape: str
    synonyms: tuple[str, ...] = ()


# Canonical order: each anchor is followed by its partner, so descriptions (which list objects in
# this order) put "knife" right after "fork" - the slot where the language prior acts.
KINDS: tuple[Kind, ...] = (
    Kind("fork", 48, "kitchen", (220, 40, 40), "plus"),
    Kind("knife", 49, "kitchen", (40, 80, 220), "hbar"),
    Kind("dog", 18, "animal", (130, 80, 40), "circle", ("puppy",)),
    Kind("frisbee", 34, "sports", (235, 210, 40), "ring"),
    Kind("car", 3, "vehicle", (40, 170, 60), "square"),
    Kind("bicycle", 2, "vehicle", (200, 50, 200), "triangle", ("bike",)),
    Kind("cup", 47, "kitchen", (250, 250, 250), "diamond"),
    Kind("spoon", 50, "kitchen", (20, 20, 20), "cross"),
    Kind("umbrella", 28, "accessory", (40, 200, 210), "half_disc"),
    Kind("clock", 85, "indoor", (245, 140, 30), "frame"),
    Kind("apple", 53, "food", (110, 50, 160), "hexagon"),
    Kind("cat", 17, "animal", (250, 150, 190), "star", ("kitten",)),
)
PAIRS: tuple[tuple[str, str], ...] = (("fork", "knife"), ("dog", "frisbee"), ("car", "bicycle"), ("cup", "spoon"))

# Language. Prompts the benchmarks send are included so the tiny models have seen their words.
DESCRIBE_PROMPTS = (
    "Please describe this image in detail.",
    "Describe the image.",
    "What is in the image?",
    "What objects are in this image?",
)
DESCRIPTION_TEMPLATES = ("There is {objects}.", "The image shows {objects}.")
EXIST_TEMPLATE = "Is there {article} {object} in the image?"
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
VCD_SUFFIX = " Please answer this question with one word."
COUNT_PROMPTS = ("How many objects are in the image?", "How many objects are there?")
COUNT_ONE = "There is one object."
COUNT_MANY = "There are {number} objects."
NUMBER_WORDS = ("one", "two", "three", "four")
YES, NO = "Yes.", "No."
CAPTION_TEMPLATES = (
    "{Objects}.",
    "A picture of {objects}.",
    "There is {objects} in the image.",
    "An image with {objects}.",
)
EXTRA_WORDS = ("a", "an", "and", ",", "yes", "no", "Yes", "No", "A", "An")

_TOKEN = re.compile(r"[A-Za-z]+|\d+|[^\w\s]")


@dataclass(frozen=True)
class Mix:
    """Knobs of the world's object statistics, rendering and conversation mix."""

    two_anchor_rate: float = 0.5
    distractor_rate: float = 0.35
    partner_negative_rate: float = 0.5
    label_noise: float = 0.0
    description_rate: float = 0.6
    count_rate: float = 0.3
    existence_questions: tuple[int, int] = (1, 3)
    yes_rate: float = 0.5
    llava_suffix_rate: float = 0.25
    vcd_suffix_rate: float = 0.15
    synonym_rate: float = 0.3
    captions_per_image: tuple[int, int] = (1, 3)
    scale: tuple[float, float] = (0.55, 0.85)
    colour_jitter: int = 16
    background: tuple[int, int] = (112, 144)
    noise: int = 6


@dataclass(frozen=True)
class Placement:
    """One drawn object: kind, grid cell, COCO bbox [x, y, w, h] and pixel area."""

    name: str
    cell: int
    bbox: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class Scene:
    """One rendered image."""

    image_id: int
    file_name: str
    objects: tuple[Placement, ...]

    @property
    def names(self) -> set[str]:
        """The object kinds present."""
        return {p.name for p in self.objects}


@dataclass(frozen=True)
class World:
    """Paths and facts of a built synthetic world."""

    instruct_json: Path
    train_images: Path
    eval_images: Path
    instances_json: Path
    captions_json: Path
    eval_image_ids: tuple[int, ...]
    categories: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    stats: dict[str, Any] = field(compare=False)


def text_tokens(text: str) -> list[str]:
    """Split text the way `vocabulary()` counts it: words, numbers and single punctuation marks."""
    return _TOKEN.findall(text)


def article(word: str) -> str:
    """'an' before a vowel letter, else 'a' (POPE's rule)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def object_list(names: Sequence[str]) -> str:
    """'a dog', 'a dog and a frisbee', 'a dog, a frisbee and a cup'."""
    items = [f"{article(n)} {n}" for n in names]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def vocabulary() -> list[str]:
    """Every token the world's conversations, captions and the benchmark prompts can contain."""
    texts = [*DESCRIBE_PROMPTS, *DESCRIPTION_TEMPLATES, EXIST_TEMPLATE, LLAVA_SUFFIX, VCD_SUFFIX]
    texts += [*COUNT_PROMPTS, COUNT_ONE, COUNT_MANY, YES, NO, *CAPTION_TEMPLATES]
    words = {tok for text in texts for tok in text_tokens(re.sub(r"\{\w+\}", " ", text))}
    words.update(EXTRA_WORDS)
    words.update(NUMBER_WORDS)
    for kind in KINDS:
        for name in (kind.name, *kind.synonyms):
            words.update(text_tokens(name))
    return sorted(words)


def _partner_of() -> dict[str, str]:
    return dict(PAIRS)


def sample_names(rng: random.Random, cooccurrence: float, mix: Mix) -> list[str]:
    """Object kinds of one image (1 to GRID*GRID, distinct), by the anchor/partner/distractor rule."""
    partner_of = _partner_of()
    anchors = [a for a, _ in PAIRS]
    n_anchors = 2 if rng.random() < mix.two_anchor_rate else 1
    names = rng.sample(anchors, n_anchors)
    for anchor in list(names):
        if rng.random() < cooccurrence:
            names.append(partner_of[anchor])
    # Distractors: anything that is not an anchor and not the (decided) partner of a present anchor.
    excluded = set(anchors) | {partner_of[a] for a in names if a in partner_of}
    pool = [k.name for k in KINDS if k.name not in excluded]
    for _ in range(GRID * GRID - len(names)):
        free = [n for n in pool if n not in names]
        if free and rng.random() < mix.distractor_rate:
            names.append(rng.choice(free))
    return names


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    side = x1 - x0 + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    stroke = max(2, side // 5)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "plus":
        half = max(1, side // 6)
        draw.rectangle((x0, cy - half, x1, cy + half), fill=255)
        draw.rectangle((cx - half, y0, cx + half, y1), fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=stroke)
    elif shape == "cross":
        draw.line((x0, y0, x1, y1), fill=255, width=stroke)
        draw.line((x0, y1, x1, y0), fill=255, width=stroke)
    elif shape == "hbar":
        draw.rectangle((x0, cy - side // 5, x1, cy + side // 5), fill=255)
    elif shape == "frame":
        draw.rectangle(box, outline=255, width=stroke)
    elif shape == "hexagon":
        r = side / 2
        draw.polygon(
            [(cx + r * math.cos(math.pi / 3 * i), cy + r * math.sin(math.pi / 3 * i)) for i in range(6)], fill=255
        )
    elif shape == "half_disc":
        draw.pieslice((x0, y0, x1, y1 + side), 180, 360, fill=255)
    elif shape == "star":
        r_out, r_in = side / 2, side / 5
        points = []
        for i in range(10):
            r = r_out if i % 2 == 0 else r_in
            angle = -math.pi / 2 + math.pi / 5 * i
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(
    names: Sequence[str], size: int, rng: random.Random, np_rng: np.random.Generator, mix: Mix
) -> tuple[np.ndarray, list[Placement]]:
    """Draw `names` into random distinct grid cells; returns (H, W, 3) uint8 pixels and placements."""
    kinds = {k.name: k for k in KINDS}
    cell = size // GRID
    grey = rng.randint(*mix.background)
    noise = np_rng.integers(-mix.noise, mix.noise + 1, size=(size, size, 1))
    pixels = np.clip(grey + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)
    cells = rng.sample(range(GRID * GRID), len(names))
    placements = []
    for name, index in zip(names, cells):
        kind = kinds[name]
        side = max(4, round(cell * rng.uniform(*mix.scale)))
        x0 = (index % GRID) * cell + rng.randint(0, cell - side)
        y0 = (index // GRID) * cell + rng.randint(0, cell - side)
        mask_image = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask_image), kind.shape, (x0, y0, x0 + side - 1, y0 + side - 1))
        mask = np.asarray(mask_image) > 0
        colour = [min(255, max(0, c + rng.randint(-mix.colour_jitter, mix.colour_jitter))) for c in kind.colour]
        pixels[mask] = colour
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        placements.append(Placement(name=name, cell=index, bbox=bbox, area=int(mask.sum())))
    return pixels, placements


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG of (H, W, 3) uint8 pixels; same pixels give the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def canonical_order(names: set[str] | Sequence[str]) -> list[str]:
    """Present kinds in the fixed category order (anchor right before its partner)."""
    present = set(names)
    return [k.name for k in KINDS if k.name in present]


def describe(names: set[str] | Sequence[str], rng: random.Random) -> str:
    """A description that names exactly the present objects."""
    return rng.choice(DESCRIPTION_TEMPLATES).format(objects=object_list(canonical_order(names)))


def count_answer(n: int) -> str:
    """'There is one object.' / 'There are three objects.'"""
    return COUNT_ONE if n == 1 else COUNT_MANY.format(number=NUMBER_WORDS[n - 1])


def existence_question(name: str, rng: random.Random, mix: Mix) -> str:
    """The POPE question, sometimes with the LLaVA or VCD answer-format suffix."""
    question = EXIST_TEMPLATE.format(article=article(name), object=name)
    draw = rng.random()
    if draw < mix.llava_suffix_rate:
        return question + LLAVA_SUFFIX
    if draw < mix.llava_suffix_rate + mix.vcd_suffix_rate:
        return question + VCD_SUFFIX
    return question


def _missing_partners(present: set[str], taken: set[str]) -> list[str]:
    """Usual partners of present anchors that are absent and not in `taken`, sorted."""
    partner_of = _partner_of()
    return sorted(partner_of[a] for a in present if a in partner_of and partner_of[a] not in present | taken)


def _negative(present: set[str], asked: set[str], rng: random.Random, mix: Mix) -> str:
    # An absent partner of a present anchor is asked with `partner_negative_rate`: the learnable
    # counter-evidence to the prior; otherwise a uniform absent kind not asked yet.
    taken = present | asked
    missing_partners = _missing_partners(present, taken)
    if missing_partners and rng.random() < mix.partner_negative_rate:
        return rng.choice(missing_partners)
    return rng.choice([k.name for k in KINDS if k.name not in taken])


def hallucinated_partners(present: set[str], rng: random.Random, mix: Mix) -> list[str]:
    """Absent usual partners a noisy annotator names, each with probability `label_noise` (no draw at 0)."""
    if mix.label_noise <= 0.0:
        return []
    return [p for p in _missing_partners(present, set()) if rng.random() < mix.label_noise]


def conversation(scene: Scene, rng: random.Random, mix: Mix) -> tuple[dict[str, Any], Counter[str]]:
    """One multi-turn LLaVA-Instruct record for `scene`, and counts of its answer types."""
    present = scene.names
    turns: list[tuple[str, str]] = []
    tally: Counter[str] = Counter()
    missing = _missing_partners(present, set())
    if rng.random() < mix.description_rate:
        extra = hallucinated_partners(present, rng, mix)
        turns.append((rng.choice(DESCRIBE_PROMPTS), describe(present | set(extra), rng)))
        tally["description"] += 1
        tally["description_missing_partners"] += len(missing)
        tally["description_hallucinated"] += len(extra)
    asked: set[str] = set()
    for _ in range(rng.randint(*mix.existence_questions)):
        positive = rng.random() < mix.yes_rate
        candidates = sorted(present - asked)
        unasked_missing = _missing_partners(present, asked)
        hallucinated = False
        if positive and unasked_missing:
            tally["yes_missing_partner"] += 1
            # A hallucinated annotation: "yes" to the absent partner (no draw when label_noise is 0).
            hallucinated = mix.label_noise > 0.0 and rng.random() < mix.label_noise
        if hallucinated:
            name = rng.choice(unasked_missing)
            tally["yes_hallucinated"] += 1
        elif positive and candidates:
            name = rng.choice(candidates)
        else:
            positive = False
            if unasked_missing:
                tally["no_missing_partner"] += 1
            name = _negative(present, asked, rng, mix)
            if name in unasked_missing:
                tally["no_partner"] += 1
        asked.add(name)
        turns.append((existence_question(name, rng, mix), YES if positive else NO))
        tally["yes" if positive else "no"] += 1
        tally[f"asked:{name}"] += 1
        tally[f"yes:{name}"] += int(positive)
    if rng.random() < mix.count_rate:
        turns.append((rng.choice(COUNT_PROMPTS), count_answer(len(present))))
        tally["count"] += 1
    rng.shuffle(turns)
    messages = []
    for i, (question, answer) in enumerate(turns):
        messages.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        messages.append({"from": "gpt", "value": answer})
    record = {"id": f"{scene.image_id:012d}", "image": scene.file_name, "conversations": messages}
    return record, tally


def captions(names: set[str], rng: random.Random, mix: Mix) -> list[str]:
    """1-3 reference captions naming exactly `names`, in random order, sometimes by a synonym."""
    kinds = {k.name: k for k in KINDS}
    out = []
    for _ in range(rng.randint(*mix.captions_per_image)):
        order = sorted(names)
        rng.shuffle(order)
        words = [
            rng.choice(kinds[n].synonyms) if kinds[n].synonyms and rng.random() < mix.synonym_rate else n for n in order
        ]
        listed = object_list(words)
        template = rng.choice(CAPTION_TEMPLATES)
        out.append(template.format(objects=listed, Objects=listed[:1].upper() + listed[1:]))
    return out


def coco_instances(scenes: Sequence[Scene], size: int, description: str) -> dict[str, Any]:
    """A COCO instances document (real category ids and names) for `scenes`."""
    ids = {k.name: k.coco_id for k in KINDS}
    annotations = []
    for scene in scenes:
        for p in scene.objects:
            x, y, w, h = p.bbox
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": scene.image_id,
                    "category_id": ids[p.name],
                    "bbox": [x, y, w, h],
                    "area": p.area,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    return {
        "info": {"description": description, "version": "1"},
        "licenses": [],
        "images": [{"id": s.image_id, "file_name": s.file_name, "width": size, "height": size} for s in scenes],
        "annotations": annotations,
        "categories": [
            {"id": k.coco_id, "name": k.name, "supercategory": k.supercategory}
            for k in sorted(KINDS, key=lambda k: k.coco_id)
        ],
    }


def _pair_rates(scenes: Sequence[Scene]) -> dict[str, dict[str, float | int | None]]:
    rates: dict[str, dict[str, float | int | None]] = {}
    for anchor, partner in PAIRS:
        with_anchor = [s for s in scenes if anchor in s.names]
        together = sum(partner in s.names for s in with_anchor)
        rates[f"{anchor}->{partner}"] = {
            "anchor_images": len(with_anchor),
            "rate": together / len(with_anchor) if with_anchor else None,
        }
    return rates


def _share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def world_stats(
    train: Sequence[Scene],
    evals: Sequence[Scene],
    answers: Counter[str],
    cooccurrence: float,
    seed: int,
    mix: Mix = Mix(),
) -> dict[str, Any]:
    """Counts per category, pair co-occurrence rates, object-count histograms, answer mix."""

    def per_category(scenes: Sequence[Scene]) -> dict[str, int]:
        counts = Counter(n for s in scenes for n in s.names)
        return {k.name: counts[k.name] for k in KINDS}

    def histogram(scenes: Sequence[Scene]) -> dict[str, int]:
        counts = Counter(len(s.objects) for s in scenes)
        return {str(n): counts[n] for n in range(1, GRID * GRID + 1)}

    return {
        "seed": seed,
        "cooccurrence": cooccurrence,
        "knobs": {
            "yes_rate": mix.yes_rate,
            "label_noise": mix.label_noise,
            "partner_negatives": mix.partner_negative_rate,
            "cooccurrence": cooccurrence,
        },
        # The same knobs measured on the generated training conversations.
        "realised": {
            "yes_share": _share(answers["yes"], answers["yes"] + answers["no"]),
            "description_hallucination_rate": _share(
                answers["description_hallucinated"], answers["description_missing_partners"]
            ),
            "yes_hallucination_rate": _share(answers["yes_hallucinated"], answers["yes_missing_partner"]),
            "partner_negative_share": _share(answers["no_partner"], answers["no_missing_partner"]),
        },
        "train_images": len(train),
        "eval_images": len(evals),
        "eval_images_min3": sum(len(s.names) >= 3 for s in evals),
        # Where the prior is put to the test: one of a pair present without the other.
        "eval_images_missing_partner": sum(any((a in s.names) != (p in s.names) for a, p in PAIRS) for s in evals),
        "category_counts": {"train": per_category(train), "eval": per_category(evals)},
        "objects_per_image": {"train": histogram(train), "eval": histogram(evals)},
        "pair_cooccurrence": {"train": _pair_rates(train), "eval": _pair_rates(evals)},
        "answers": {
            k: answers[k]
            for k in (
                "description", "yes", "no", "no_partner", "count", "no_missing_partner", "yes_missing_partner",
                "yes_hallucinated", "description_missing_partners", "description_hallucinated",
            )
        },  # fmt: skip
        # P(yes | "Is there a X?") in training: the text-only prior a noised image leaves behind.
        "question_yes_rate": {
            k.name: answers[f"yes:{k.name}"] / answers[f"asked:{k.name}"] if answers[f"asked:{k.name}"] else None
            for k in KINDS
        },
    }


def _check_args(n_images: int, cooccurrence: float, eval_fraction: float, image_size: int, mix: Mix) -> None:
    knobs = {
        "--cooccurrence": cooccurrence,
        "--yes-rate": mix.yes_rate,
        "--label-noise": mix.label_noise,
        "--partner-negatives": mix.partner_negative_rate,
    }
    for flag, value in knobs.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag} must be in [0, 1] (got {value}).")
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in (0, 1) (got {eval_fraction}).")
    if n_images < 2 or round(n_images * eval_fraction) < 1 or n_images - round(n_images * eval_fraction) < 1:
        raise ConfigError(
            f"--synthetic-images {n_images} leaves no training or no evaluation image at eval_fraction "
            f"{eval_fraction}; render more images."
        )
    if n_images >= MAX_IMAGE_ID:
        raise ConfigError(f"--synthetic-images must be below {MAX_IMAGE_ID} (got {n_images}).")
    if image_size < 8 * GRID:
        raise ConfigError(f"image size must be at least {8 * GRID} pixels (got {image_size}).")


def build_world(
    raw_dir: Path,
    *,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    cooccurrence: float = DEFAULT_COOCCURRENCE,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    image_size: int = DEFAULT_IMAGE_SIZE,
    reporter: Reporter | None = None,
    mix: Mix = Mix(),
) -> World:
    """Render the world into `raw_dir` (images, COCO annotations, LLaVA-Instruct JSON); deterministic in `seed`."""
    _check_args(n_images, cooccurrence, eval_fraction, image_size, mix)
    reporter = reporter or NullReporter()
    raw_dir = Path(raw_dir)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    n_eval = round(n_images * eval_fraction)
    image_ids = rng.sample(range(1, MAX_IMAGE_ID), n_images)
    train: list[Scene] = []
    evals: list[Scene] = []
    # Image folders are staged whole and renamed into place (one fsync-free write per image keeps
    # hundreds of images within seconds; a crash leaves only a hidden .partial folder).
    with (
        atomic.staged_dir(raw_dir / TRAIN_DIR, overwrite=True) as train_tmp,
        atomic.staged_dir(raw_dir / EVAL_DIR, overwrite=True) as eval_tmp,
        reporter.task("Rendering synthetic world", total=n_images, unit="img") as task,
    ):
        for index, image_id in enumerate(image_ids):
            is_eval = index < n_eval
            names = sample_names(rng, cooccurrence, mix)
            pixels, placements = render(names, image_size, rng, np_rng, mix)
            file_name = (EVAL_NAME if is_eval else TRAIN_NAME).format(image_id)
            ((eval_tmp if is_eval else train_tmp) / file_name).write_bytes(png_bytes(pixels))
            scene = Scene(image_id=image_id, file_name=file_name, objects=tuple(placements))
            (evals if is_eval else train).append(scene)
            task.advance()

    records, answers = [], Counter[str]()
    for scene in train:
        record, tally = conversation(scene, rng, mix)
        records.append(record)
        answers.update(tally)
    caption_rows = []
    for scene in evals:
        for text in captions(scene.names, rng, mix):
            caption_rows.append({"id": len(caption_rows) + 1, "image_id": scene.image_id, "caption": text})

    instances_eval = coco_instances(evals, image_size, "seedcli synthetic world (evaluation)")
    captions_doc = {k: instances_eval[k] for k in ("info", "licenses", "images")} | {"annotations": caption_rows}
    # Compact JSON like the real COCO and LLaVA files (and the C encoder: indent is ~10x slower).
    atomic.write_text(raw_dir / INSTANCES_EVAL, json.dumps(instances_eval))
    atomic.write_text(raw_dir / CAPTIONS_EVAL, json.dumps(captions_doc))
    atomic.write_text(
        raw_dir / INSTANCES_TRAIN, json.dumps(coco_instances(train, image_size, "seedcli synthetic world (training)"))
    )
    atomic.write_text(raw_dir / INSTRUCT_FILE, json.dumps(records))

    stats = world_stats(train, evals, answers, cooccurrence, seed, mix)
    reporter.info(
        f"synthetic world: {len(train)} training and {len(evals)} evaluation images "
        f"({stats['eval_images_min3']} with >= 3 objects), co-occurrence {cooccurrence}, "
        f"yes-rate {mix.yes_rate}, label noise {mix.label_noise}, partner negatives {mix.partner_negative_rate}"
    )
    return World(
        instruct_json=raw_dir / INSTRUCT_FILE,
        train_images=raw_dir / TRAIN_DIR,
        eval_images=raw_dir / EVAL_DIR,
        instances_json=raw_dir / INSTANCES_EVAL,
        captions_json=raw_dir / CAPTIONS_EVAL,
        eval_image_ids=tuple(s.image_id for s in evals),
        categories=tuple(k.name for k in KINDS),
        pairs=PAIRS,
        stats=stats,
    )
