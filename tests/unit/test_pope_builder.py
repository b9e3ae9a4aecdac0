"""POPE builder against docs/protocols.md (POPE), checked with counts computed independently here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from seedcli.data.coco import parse_instances
from seedcli.data.datadir import pope_file
from seedcli.data.pope import build_pope, import_pope, write_pope
from seedcli.errors import DataError

NAMES = [
    "person",
    "car",
    "dog",
    "apple",
    "umbrella",
    "chair",
    "cup",
    "bench",
    "kite",
    "orange",
    "oven",
    "bus",
    "cat",
    "tie",
]
N_IMAGES = 40
SAMPLE = 30


def _coco() -> dict:
    """A COCO instances dict: skewed name frequencies, some images with < 3 categories, shuffled annotations."""
    rng = random.Random(7)
    weights = [len(NAMES) - i for i in range(len(NAMES))]
    images, annotations = [], []
    ann_id = 1000
    for image_id in range(1, N_IMAGES + 1):
        images.append({"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg"})
        k = 2 if image_id % 9 == 0 else rng.randint(3, 6)
        chosen: list[str] = []
        while len(chosen) < k:
            name = rng.choices(NAMES, weights)[0]
            if name not in chosen:
                chosen.append(name)
        for name in chosen + [chosen[0]]:  # a repeated category must not count twice
            ann_id += rng.randint(1, 5)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": NAMES.index(name) + 1})
    rng.shuffle(annotations)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _truth(coco: dict) -> dict[int, list[str]]:
    """Per image: distinct names by increasing annotation id (computed without the library)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[int, list[str]] = {img["id"]: [] for img in coco["images"]}
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        name = names[ann["category_id"]]
        if name not in out[ann["image_id"]]:
            out[ann["image_id"]].append(name)
    return out


def _obj(text: str) -> str:
    words = text.removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)
    assert words[0] == ("an" if words[1][0] in "aeiou" else "a"), text
    return words[1]


@pytest.fixture(scope="module")
def built():
    coco = _coco()
    instances = parse_instances(coco, where="fixture")
    return coco, _truth(coco), build_pope(instances.objects, instances.images, n_images=SAMPLE, seed=3)


def test_images_questions_and_labels(built) -> None:
    coco, truth, pope = built
    eligible = {i for i, names in truth.items() if len(names) >= 3}
    assert len(pope.image_ids) == SAMPLE == len(set(pope.image_ids))
    assert set(pope.image_ids) <= eligible
    for split, questions in pope.splits.items():
        assert len(questions) == 6 * SAMPLE, split
        assert [q.question_id for q in questions] == list(range(1, 6 * SAMPLE + 1))
        assert sum(q.label == "yes" for q in questions) == 3 * SAMPLE
        assert {q.image for q in questions} == {f"COCO_val2014_{i:012d}.jpg" for i in pope.image_ids}
        for start in range(0, len(questions), 6):
            group = questions[start : start + 6]
            image_id = int(group[0].image[-16:-4])
            assert {q.image for q in group} == {group[0].image}
            assert [q.label for q in group] == ["yes", "no"] * 3
            assert [_obj(q.text) for q in group[0::2]] == truth[image_id][:3]
            negatives = [_obj(q.text) for q in group[1::2]]
            assert not set(negatives) & set(truth[image_id])
            assert len(set(negatives)) == 3
            assert all(q.object == _obj(q.text) for q in group)


def _expected_negatives(truth: dict[int, list[str]], selected: tuple[int, ...], rank) -> dict[int, list[str]]:
    out = {}
    for image_id in selected:
        asked: set[str] = set()
        picks = []
        for positive in truth[image_id][:3]:
            asked.add(positive)
            order = rank(positive)
            pick = next(n for n in order if n not in asked and n not in truth[image_id])
            asked.add(pick)
            picks.append(pick)
        out[image_id] = picks
    return out


def _negatives(pope, split: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for q in pope.splits[split]:
        if q.label == "no":
            out.setdefault(int(q.image[-16:-4]), []).append(_obj(q.text))
    return out


def test_popular_negatives_are_the_most_frequent_eligible_names(built) -> None:
    _, truth, pope = built
    frequency = {name: sum(name in truth[i] for i in pope.image_ids) for name in NAMES}
    ranking = sorted((n for n in NAMES if frequency[n]), key=lambda n: (-frequency[n], n))
    assert pope.fallbacks["popular"] == 0
    assert _negatives(pope, "popular") == _expected_negatives(truth, pope.image_ids, lambda _positive: ranking)


def test_adversarial_negatives_are_the_most_cooccurring_eligible_names(built) -> None:
    _, truth, pope = built

    def ranking(positive: str) -> list[str]:
        together = {
            n: sum(positive in truth[i] and n in truth[i] for i in pope.image_ids) for n in NAMES if n != positive
        }
        return sorted((n for n in together if together[n]), key=lambda n: (-together[n], n))

    if pope.fallbacks["adversarial"]:
        pytest.fail("fixture should not need random fallbacks")
    assert _negatives(pope, "adversarial") == _expected_negatives(truth, pope.image_ids, ranking)
    assert _negatives(pope, "adversarial") != _negatives(pope, "popular")


def test_random_negatives_are_seeded_and_from_the_sample_vocabulary(built) -> None:
    coco, truth, pope = built
    vocabulary = {n for i in pope.image_ids for n in truth[i]}
    random_negatives = _negatives(pope, "random")
    assert {n for picks in random_negatives.values() for n in picks} <= vocabulary
    instances = parse_instances(coco, where="fixture")
    again = build_pope(instances.objects, instances.images, n_images=SAMPLE, seed=3)
    assert [q.to_row() for q in again.splits["random"]] == [q.to_row() for q in pope.splits["random"]]
    other = build_pope(instances.objects, instances.images, n_images=SAMPLE, seed=4)
    assert other.image_ids != pope.image_ids
    same_images = build_pope(instances.objects, instances.images, n_images=len(instances.objects) - 4, seed=3)
    assert len(set(map(tuple, _negatives(same_images, "random").values()))) > 1


def test_too_few_eligible_images(built) -> None:
    coco, truth, _ = built
    instances = parse_instances(coco, where="fixture")
    eligible = sum(len(names) >= 3 for names in truth.values())
    with pytest.raises(DataError, match="--pope-images"):
        build_pope(instances.objects, instances.images, n_images=eligible + 1, seed=0)
    clamped = build_pope(instances.objects, instances.images, n_images=eligible + 1, seed=0, allow_fewer=True)
    assert len(clamped.image_ids) == eligible


def test_adversarial_falls_back_to_random_without_partners() -> None:
    objects = {1: ("cat", "dog", "car"), 2: ("bus", "kite", "tie")}
    names = {1: "COCO_val2014_000000000001.jpg", 2: "COCO_val2014_000000000002.jpg"}
    pope = build_pope(objects, names, n_images=2, seed=0)
    assert pope.fallbacks["adversarial"] == 6  # every partner of an object is in its own image
    assert pope.fallbacks["popular"] == 0
    for split in ("random", "adversarial"):
        for image_id, picks in _negatives(pope, split).items():
            assert not set(picks) & set(objects[image_id]) and len(set(picks)) == 3


def test_pope_from_round_trip_and_checks(built, tmp_path: Path) -> None:
    _, _, pope = built
    rows = {split: [q.to_row() for q in questions] for split, questions in pope.splits.items()}
    write_pope(tmp_path, rows)
    first = json.loads((tmp_path / pope_file("random")).read_text().splitlines()[0])
    assert list(first) == ["question_id", "image", "text", "label"]
    imported = import_pope(tmp_path / "pope")
    assert {split: list(r) for split, r in imported.splits.items()} == rows
    assert imported.warnings == ()
    assert imported.report["popular"] | {"file": None} == {
        "file": None,
        "questions": 180,
        "images": 30,
        "yes": 90,
        "no": 90,
        "typos_fixed": 0,
        "images_without_6_questions": 0,
    }
    assert imported.image_ids() == set(pope.image_ids)

    # Released files: "imange" typos, a split with missing questions (the 2,910 trap).
    lines = (tmp_path / pope_file("random")).read_text().splitlines()
    lines[3] = lines[3].replace('"image"', '"imange"')
    (tmp_path / pope_file("random")).write_text("\n".join(lines[:-1]) + "\n")
    imported = import_pope(tmp_path / "pope")
    assert imported.report["random"]["typos_fixed"] == 1
    assert imported.splits["random"][3] == rows["random"][3]
    assert imported.report["random"]["questions"] == 179
    assert imported.report["random"]["images_without_6_questions"] == 1
    assert any("179 questions" in w for w in imported.warnings)
    assert any("not balanced" in w for w in imported.warnings)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda line: line.replace('"label": "no"', '"label": "maybe"'), "must be 'yes' or 'no'"),
        (lambda line: line.replace('"question_id": 2,', '"question_id": 1,'), "duplicate question_id"),
        (lambda line: line.replace('"text"', '"question"'), r"missing field\(s\) text"),
    ],
)
def test_pope_from_rejects_bad_files(built, tmp_path: Path, edit, message: str) -> None:
    _, _, pope = built
    write_pope(tmp_path, {split: [q.to_row() for q in qs] for split, qs in pope.splits.items()})
    path = tmp_path / pope_file("adversarial")
    lines = path.read_text().splitlines()
    lines[1] = edit(lines[1])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        import_pope(tmp_path / "pope")


def test_pope_from_names_the_missing_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--pope-from .*no random split"):
        import_pope(tmp_path)
