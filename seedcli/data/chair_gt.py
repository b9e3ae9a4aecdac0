"""CHAIR evaluation images and their ground-truth objects (docs/protocols.md, CHAIR).

The images are a seeded sample of COCO image ids (never file-system order). An image's ground
truth is the set of categories of its instance annotations plus the COCO categories mentioned in
its reference captions, found by the same mention extractor that scores generated captions
(`seedcli.evals.chair.caption_objects`), so ground truth and predictions share one vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.data.datadir import CHAIR_FILE
from seedcli.errors import DataError

CHAIR_IMAGES = 500

Extractor = Callable[[str], list[tuple[str, str]]]


def sample_chair_ids(pool: Iterable[int], n_images: int, seed: int, *, allow_fewer: bool = False) -> list[int]:
    """A seeded sample of `n_images` ids from `pool` (order of the draw)."""
    ids = sorted(set(pool))
    if len(ids) < n_images and not allow_fewer:
        raise DataError(
            f"--chair-images {n_images}: only {len(ids)} captioned images are available; lower --chair-images."
        )
    return random.Random(seed).sample(ids, min(n_images, len(ids)))


def _default_extractor() -> Extractor:
    from seedcli.evals.chair import caption_objects

    return caption_objects


def ground_truth_objects(
    instance_objects: Sequence[str],
    captions: Sequence[str],
    extract: Extractor | None = None,
) -> list[str]:
    """Sorted categories of one image: instance categories plus those its captions mention."""
    extract = extract or _default_extractor()
    found = set(instance_objects)
    for caption in captions:
        found.update(category for _surface, category in extract(caption))
    return sorted(found)


def chair_rows(
    image_ids: Sequence[int],
    objects: Mapping[int, Sequence[str]],
    captions: Mapping[int, Sequence[str]],
    file_names: Mapping[int, str],
    extract: Extractor | None = None,
) -> list[dict[str, Any]]:
    """One {"image_id", "image", "objects"} row per image, in the given order."""
    extract = extract or _default_extractor()
    return [
        {
            "image_id": image_id,
            "image": file_names[image_id],
            "objects": ground_truth_objects(objects.get(image_id, ()), captions.get(image_id, ()), extract),
        }
        for image_id in image_ids
    ]


def write_chair(root: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write DATA/chair/images.jsonl."""
    atomic.write_jsonl(Path(root) / CHAIR_FILE, list(rows))
