"""POPE (arXiv 2305.10355): build the random/popular/adversarial splits, write and import them.

Builder, per docs/protocols.md (POPE): keep images with at least `objects_per_image` annotated
categories; sample `n_images` of them with the seed; for each of an image's first
`objects_per_image` objects (order: see seedcli.data.coco) ask the positive question, then one
negative. A negative is never an object of the image nor one already asked about for it.

- random: uniform over the names seen in the selected images (seeded, one RNG per split);
- popular: names by descending number of selected images that contain them, first eligible;
- adversarial: names by descending number of selected images in which they co-occur with the
  positive object (only names that do co-occur), first eligible.

Ties are broken alphabetically. Popular and adversarial fall back to a random draw when no name
is eligible; the fallbacks are counted. Frequencies count images, not annotations: an image with
five cars adds one to "car".
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.data.coco import image_id_from_name
from seedcli.data.datadir import POPE_SPLITS, check_image_path, pope_file
from seedcli.errors import DataError

QUESTION_TEMPLATE = "Is there {article} {object} in the image?"
OBJECTS_PER_IMAGE = 3
LABELS = ("yes", "no")
FIELDS = ("question_id", "image", "text", "label")


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question; `object` is the probed name (not part of the official file format)."""

    question_id: int
    image: str
    text: str
    label: str
    object: str

    def to_row(self) -> dict[str, Any]:
        """The official JSONL row."""
        return {"question_id": self.question_id, "image": self.image, "text": self.text, "label": self.label}


@dataclass(frozen=True)
class PopeSet:
    """The three splits built over one image sample."""

    image_ids: tuple[int, ...]
    splits: Mapping[str, tuple[PopeQuestion, ...]]
    fallbacks: Mapping[str, int] = field(default_factory=dict)
    """Negatives drawn at random because no popular/adversarial name was eligible."""


def article(name: str) -> str:
    """'an' before a vowel letter, else 'a' (POPE's rule: by first letter)."""
    return "an" if name[:1].lower() in "aeiou" else "a"


def question_text(name: str, template: str = QUESTION_TEMPLATE) -> str:
    """The POPE question for one object name."""
    return template.format(article=article(name), object=name)


def eligible_images(objects: Mapping[int, Sequence[str]], objects_per_image: int = OBJECTS_PER_IMAGE) -> list[int]:
    """Image ids with at least `objects_per_image` distinct categories, sorted."""
    return sorted(image_id for image_id, names in objects.items() if len(set(names)) >= objects_per_image)


def sample_images(eligible: Sequence[int], n_images: int, seed: int) -> list[int]:
    """A seeded sample of `n_images` ids from `eligible` (order of the draw)."""
    return random.Random(seed).sample(sorted(eligible), n_images)


def object_frequencies(objects: Mapping[int, Sequence[str]], image_ids: Sequence[int]) -> Counter[str]:
    """How many of `image_ids` contain each name."""
    return Counter(name for image_id in image_ids for name in set(objects[image_id]))


def cooccurrences(objects: Mapping[int, Sequence[str]], image_ids: Sequence[int]) -> dict[str, Counter[str]]:
    """For each name, how many of `image_ids` contain it together with each other name."""
    table: dict[str, Counter[str]] = {}
    for image_id in image_ids:
        for a, b in combinations(sorted(set(objects[image_id])), 2):
            table.setdefault(a, Counter())[b] += 1
            table.setdefault(b, Counter())[a] += 1
    return table


def _ranked(counts: Mapping[str, int]) -> list[str]:
    return sorted((name for name, count in counts.items() if count > 0), key=lambda name: (-counts[name], name))


def build_pope(
    objects: Mapping[int, Sequence[str]],
    file_names: Mapping[int, str],
    *,
    n_images: int,
    seed: int,
    objects_per_image: int = OBJECTS_PER_IMAGE,
    template: str = QUESTION_TEMPLATE,
    allow_fewer: bool = False,
) -> PopeSet:
    """Build the three POPE splits from per-image object lists (see the module docstring)."""
    eligible = eligible_images(objects, objects_per_image)
    if len(eligible) < n_images and not allow_fewer:
        raise DataError(
            f"--pope-images {n_images}: only {len(eligible)} annotated images have at least {objects_per_image} object "
            "categories; lower --pope-images."
        )
    selected = sample_images(eligible, min(n_images, len(eligible)), seed)
    vocabulary = sorted({name for image_id in selected for name in objects[image_id]})
    popular = _ranked(object_frequencies(objects, selected))
    partners = {name: _ranked(counts) for name, counts in cooccurrences(objects, selected).items()}

    splits: dict[str, tuple[PopeQuestion, ...]] = {}
    fallbacks: dict[str, int] = {}
    for split in POPE_SPLITS:
        rng = random.Random(f"pope-{split}-{seed}")
        questions: list[PopeQuestion] = []
        fallbacks[split] = 0
        for image_id in selected:
            truth = set(objects[image_id])
            asked: set[str] = set()
            image = file_names[image_id]
            for positive in list(dict.fromkeys(objects[image_id]))[:objects_per_image]:
                asked.add(positive)
                excluded = truth | asked
                ranking = {"popular": popular, "adversarial": partners.get(positive, [])}.get(split, [])
                negative = next((name for name in ranking if name not in excluded), None)
                if negative is None:
                    candidates = [name for name in vocabulary if name not in excluded]
                    if not candidates:
                        raise DataError(
                            f"POPE: no negative object left for image {image} ({len(vocabulary)} names in the sample); "
                            "use more --pope-images."
                        )
                    negative = rng.choice(candidates)
                    if split != "random":
                        fallbacks[split] += 1
                asked.add(negative)
                for name, label in ((positive, "yes"), (negative, "no")):
                    questions.append(
                        PopeQuestion(len(questions) + 1, image, question_text(name, template), label, name)
                    )
        splits[split] = tuple(questions)
    return PopeSet(image_ids=tuple(selected), splits=splits, fallbacks=fallbacks)


def write_pope(root: Path, pope: Mapping[str, Sequence[dict[str, Any]]]) -> None:
    """Write each split's official rows to DATA/pope/coco_pope_{split}.json (JSON Lines)."""
    for split, rows in pope.items():
        atomic.write_jsonl(Path(root) / pope_file(split), [{key: row[key] for key in FIELDS} for row in rows])


@dataclass(frozen=True)
class PopeImport:
    """POPE files read by `import_pope`: normalised rows per split and what was found."""

    splits: Mapping[str, tuple[dict[str, Any], ...]]
    report: Mapping[str, Any]
    warnings: tuple[str, ...]
    image_root: str | None = None
    """Where the images were written, relative to the data directory (the hub's parquet layout only)."""

    def image_ids(self) -> set[int]:
        """COCO ids of every image the splits ask about (names without an id are skipped)."""
        ids = {image_id_from_name(row["image"]) for rows in self.splits.values() for row in rows}
        return {image_id for image_id in ids if image_id is not None}


def _split_file(directory: Path, split: str) -> Path:
    name = Path(pope_file(split)).name
    tried = [directory / name, directory / (Path(name).stem + ".jsonl")]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(f"--pope-from {directory}: no {split} split (tried {', '.join(str(p) for p in tried)}).")


def _read_split(path: Path) -> tuple[list[dict[str, Any]], int]:
    """One official split through the scorer's reader, normalised for a data directory."""
    from seedcli.evals.pope_scoring import read_questions

    questions, typos = read_questions(path)
    rows = []
    for number, row in enumerate(questions, start=1):
        where = f"--pope-from {path} question {number}"
        try:
            question_id = int(row["question_id"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: question_id {row['question_id']!r} is not an integer.") from None
        image = check_image_path(str(row["image"]), where=where)
        rows.append({"question_id": question_id, "image": image, "text": str(row["text"]), "label": row["label"]})
    return rows, typos


def import_pope(
    directory: Path, *, objects_per_image: int = OBJECTS_PER_IMAGE, images_to: Path | None = None
) -> PopeImport:
    """Read official POPE files (or, with `images_to`, the hub's parquet layout) and report counts, labels and typos."""
    from seedcli.data import pope_hub

    directory = Path(directory)
    hub = images_to is not None and pope_hub.is_hub_layout(directory)
    if not hub and not directory.is_dir():
        raise DataError(f"--pope-from {directory}: no such directory.")
    hub_rows, hub_files = pope_hub.read_hub_pope(directory, images_to) if hub else ({}, {})  # type: ignore[arg-type]
    splits: dict[str, tuple[dict[str, Any], ...]] = {}
    report: dict[str, Any] = {}
    warnings: list[str] = []
    image_sets: dict[str, set[str]] = {}
    expected_per_image = 2 * objects_per_image
    for split in POPE_SPLITS:
        if hub:
            rows, typos, path = hub_rows[split], 0, Path(hub_files[split][0])
        else:
            path = _split_file(directory, split)
            rows, typos = _read_split(path)
        per_image = Counter(row["image"] for row in rows)
        labels = Counter(row["label"] for row in rows)
        odd_images = sum(count != expected_per_image for count in per_image.values())
        expected = expected_per_image * len(per_image)
        report[split] = {
            "file": str(path),
            "questions": len(rows),
            "images": len(per_image),
            "yes": labels["yes"],
            "no": labels["no"],
            "typos_fixed": typos,
            "images_without_6_questions": odd_images,
        }
        if typos:
            warnings.append(f"POPE {split}: fixed {typos} 'imange' keys.")
        if len(rows) != expected or odd_images:
            warnings.append(
                f"POPE {split}: {len(rows)} questions over {len(per_image)} images, expected {expected} "
                f"({expected_per_image} per image; {odd_images} images differ)."
            )
        if labels["yes"] != labels["no"]:
            warnings.append(f"POPE {split}: labels are not balanced ({labels['yes']} yes, {labels['no']} no).")
        splits[split] = tuple(rows)
        image_sets[split] = set(per_image)
    if len({frozenset(images) for images in image_sets.values()}) > 1:
        warnings.append("POPE: the splits do not use the same images.")
    image_root = pope_hub.IMAGE_DIR if hub else None
    return PopeImport(splits=splits, report=report, warnings=tuple(warnings), image_root=image_root)
