"""COCO access: image ids and file names, instance categories and reference captions per image.

File names: val2014 and train2014 images carry a split prefix (`COCO_val2014_000000310196.jpg`),
train2017/val2017 names are the bare 12-digit id (`000000310196.jpg`); in every case the number
is the COCO image id, which is how training and evaluation images are compared.

Order of an image's objects: the distinct category names of its instance annotations in order of
first appearance after sorting the annotations by annotation id. POPE asks about "the first 3
ground-truth objects" of an image, so this order decides which objects are probed; sorting by
annotation id makes it independent of how the JSON file happens to be ordered.

The annotation files are read with the standard `json` module rather than pycocotools, whose
loader prints to stdout (reserved for results) and builds indexes we do not need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli.errors import DataError

INSTANCES_FILE = "instances_val2014.json"
CAPTIONS_FILE = "captions_val2014.json"
PREFIXED_SPLITS = ("train2014", "val2014")
BARE_SPLITS = ("train2017", "val2017")
ID_DIGITS = 12

_NAME = re.compile(r"^(?:COCO_(?P<split>[a-z]+\d{4})_)?(?P<id>\d+)$")


def _split_name(name: str) -> tuple[str, str, str]:
    """(directory part with trailing '/', stem, suffix) using plain string operations (hot path)."""
    directory, _, base = name.replace("\\", "/").rpartition("/")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    return (directory + "/" if directory else ""), stem, (dot + suffix)


def image_id_from_name(name: str) -> int | None:
    """COCO image id encoded in a file name (any split's convention), or None if it has none."""
    match = _NAME.match(_split_name(name)[1])
    return int(match.group("id")) if match else None


def image_file_name(image_id: int, split: str, *, ext: str = ".jpg") -> str:
    """The COCO file name of `image_id` in `split` (train2014, val2014, train2017, val2017)."""
    if split in PREFIXED_SPLITS:
        return f"COCO_{split}_{image_id:0{ID_DIGITS}d}{ext}"
    if split in BARE_SPLITS:
        return f"{image_id:0{ID_DIGITS}d}{ext}"
    raise ValueError(f"unknown COCO split {split!r}; expected one of {PREFIXED_SPLITS + BARE_SPLITS}")


def alternative_names(name: str) -> tuple[str, ...]:
    """Other spellings of a training image name: train2017 <-> train2014 (same directory part)."""
    directory, stem, suffix = _split_name(name)
    match = _NAME.match(stem)
    if not match:
        return ()
    image_id = int(match.group("id"))
    split = match.group("split")
    if split is None:
        return (directory + image_file_name(image_id, "train2014", ext=suffix),)
    if split == "train2014":
        return (directory + image_file_name(image_id, "train2017", ext=suffix),)
    return ()


@dataclass(frozen=True)
class CocoInstances:
    """What the builders need from an instances file."""

    images: Mapping[int, str]
    """image id -> file name, for every image listed (with or without annotations)."""
    objects: Mapping[int, tuple[str, ...]]
    """image id -> distinct category names, in order of first annotation (by annotation id)."""
    categories: tuple[str, ...]
    """category names in category-id order."""


def read_json(path: Path, *, flag: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises a DataError naming `flag` and the position."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{flag} {path}: invalid JSON at line {exc.lineno} column {exc.colno} (character {exc.pos}): {exc.msg}."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{flag} {path}: not UTF-8 text (byte {exc.start}).") from None


def parse_instances(data: Any, *, where: str) -> CocoInstances:
    """Index a parsed COCO instances file."""
    try:
        images = {int(img["id"]): str(img["file_name"]) for img in data["images"]}
        names = {int(cat["id"]): str(cat["name"]) for cat in data["categories"]}
        annotations = sorted(data["annotations"], key=lambda ann: int(ann["id"]))
        objects: dict[int, list[str]] = {image_id: [] for image_id in images}
        for ann in annotations:
            image_id, name = int(ann["image_id"]), names[int(ann["category_id"])]
            seen = objects.setdefault(image_id, [])
            if name not in seen:
                seen.append(name)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a COCO instances file ({type(exc).__name__}: {exc}).") from None
    unknown = sorted(set(objects) - set(images))
    if unknown:
        raise DataError(f"{where}: annotations refer to image ids missing from 'images' (first: {unknown[0]}).")
    return CocoInstances(
        images=images,
        objects={image_id: tuple(found) for image_id, found in objects.items()},
        categories=tuple(names[key] for key in sorted(names)),
    )


def parse_captions(data: Any, *, where: str) -> dict[int, tuple[str, ...]]:
    """Reference captions per image id, in annotation-id order."""
    try:
        annotations = sorted(data["annotations"], key=lambda ann: int(ann["id"]))
        captions: dict[int, list[str]] = {}
        for ann in annotations:
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a COCO captions file ({type(exc).__name__}: {exc}).") from None
    return {image_id: tuple(texts) for image_id, texts in captions.items()}


def load_instances(path: Path, *, flag: str = "--coco-annotations") -> CocoInstances:
    """Read and index a COCO instances file."""
    return parse_instances(read_json(path, flag=flag), where=f"{flag} {path}")


def load_captions(path: Path, *, flag: str = "--coco-annotations") -> dict[int, tuple[str, ...]]:
    """Read a COCO captions file into captions per image id."""
    return parse_captions(read_json(path, flag=flag), where=f"{flag} {path}")
