"""CHAIR evaluation images and ground truth (docs/protocols.md, CHAIR)."""

from __future__ import annotations

import random

import pytest

from seedcli.data.chair_gt import chair_rows, ground_truth_objects, sample_chair_ids
from seedcli.data.coco import parse_captions, parse_instances
from seedcli.errors import DataError

COCO_INSTANCES = {
    "images": [
        {"id": 139, "file_name": "COCO_val2014_000000000139.jpg"},
        {"id": 285, "file_name": "COCO_val2014_000000000285.jpg"},
    ],
    "categories": [
        {"id": 1, "name": "person"},
        {"id": 18, "name": "dog"},
        {"id": 34, "name": "frisbee"},
        {"id": 62, "name": "chair"},
    ],
    "annotations": [
        {"id": 9, "image_id": 139, "category_id": 34},
        {"id": 3, "image_id": 139, "category_id": 18},
        {"id": 12, "image_id": 139, "category_id": 18},
        {"id": 20, "image_id": 285, "category_id": 62},
    ],
}
COCO_CAPTIONS = {
    "annotations": [
        {"id": 1, "image_id": 139, "caption": "A puppy catches a frisbee near a man."},
        {"id": 2, "image_id": 139, "caption": "Two dogs play on the grass next to a hot dog stand."},
        {"id": 3, "image_id": 285, "caption": "An empty room."},
    ]
}


def test_ground_truth_of_a_hand_computed_image() -> None:
    instances = parse_instances(COCO_INSTANCES, where="fixture")
    captions = parse_captions(COCO_CAPTIONS, where="fixture")
    # instances: dog (annotation 3) before frisbee (annotation 9); captions add person (man),
    # dog (puppy, dogs) and hot dog; "grass" and "stand" are no COCO objects.
    assert instances.objects[139] == ("dog", "frisbee")
    rows = chair_rows([139, 285], instances.objects, captions, instances.images)
    assert rows == [
        {"image_id": 139, "image": "COCO_val2014_000000000139.jpg", "objects": ["dog", "frisbee", "hot dog", "person"]},
        {"image_id": 285, "image": "COCO_val2014_000000000285.jpg", "objects": ["chair"]},
    ]


def test_ground_truth_uses_the_given_extractor() -> None:
    def extract(text: str) -> list[tuple[str, str]]:
        return [(word, word.upper()) for word in text.split()]

    assert ground_truth_objects(["cat"], ["x y", "y"], extract) == ["X", "Y", "cat"]


def test_sample_is_seeded_and_independent_of_pool_order() -> None:
    pool = list(range(1000, 1300))
    first = sample_chair_ids(pool, 50, seed=0)
    assert len(first) == 50 == len(set(first)) and set(first) <= set(pool)
    shuffled = pool[:]
    random.Random(5).shuffle(shuffled)
    assert sample_chair_ids(shuffled, 50, seed=0) == first
    assert sample_chair_ids(pool, 50, seed=1) != first
    assert first == random.Random(0).sample(sorted(pool), 50)


def test_sample_larger_than_the_pool() -> None:
    with pytest.raises(DataError, match="--chair-images 11"):
        sample_chair_ids(range(10), 11, seed=0)
    assert sorted(sample_chair_ids(range(10), 11, seed=0, allow_fewer=True)) == list(range(10))
