"""CHAIR: synonym table, singularisation, mention extraction on hand-checked captions, metrics."""

from __future__ import annotations

import pytest

from seedcli.errors import DataError
from seedcli.evals.chair import (
    caption_categories,
    caption_objects,
    categories,
    chair_metrics,
    load_synonyms,
    parse_synonyms,
    singularize,
)


def test_packaged_synonym_table() -> None:
    table = load_synonyms()
    assert len(categories()) == 80
    assert len(set(table.values())) == 80
    assert table["puppy"] == "dog"
    assert table["man"] == "person"
    assert table["motor bike"] == "motorcycle"  # preceded by two spaces in the file
    assert table["bison"] == "cow"  # followed by a trailing space in the file
    assert table["iphone"] == "cell phone"  # lowercased
    assert table["cheesecake"] == "cake"  # after ",  " in the file
    assert table["person"] == "person" and table["dining table"] == "dining table"
    assert "" not in table


def test_parse_synonyms_tolerates_duplicates_and_spaces_and_refuses_conflicts() -> None:
    table = parse_synonyms("dog, puppy,  pup , puppy\n\ncat,  kitten ,\n")
    assert table == {"dog": "dog", "puppy": "dog", "pup": "dog", "cat": "cat", "kitten": "cat"}
    with pytest.raises(DataError, match="'pup' is listed under both 'dog' and 'cat'"):
        parse_synonyms("dog, pup\ncat, pup\n", "syn.txt")


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("men", "man"), ("women", "woman"), ("mice", "mouse"), ("geese", "goose"), ("teeth", "tooth"),
        ("feet", "foot"), ("knives", "knife"), ("leaves", "leaf"), ("wolves", "wolf"), ("shelves", "shelf"),
        ("buses", "bus"), ("glasses", "glass"), ("benches", "bench"), ("boxes", "box"), ("dishes", "dish"),
        ("ponies", "pony"), ("puppies", "puppy"), ("dogs", "dog"), ("giraffes", "giraffe"), ("stoves", "stove"),
        ("policemen", "policeman"), ("grandchildren", "grandchild"), ("calves", "calf"), ("couches", "couch"),
        ("tvs", "tv"), ("collies", "collie"), ("minibuses", "minibus"),
        # table words stay as written
        ("people", "people"), ("children", "children"), ("oxen", "oxen"), ("skis", "skis"), ("scissors", "scissors"),
        # not plurals
        ("bus", "bus"), ("glass", "glass"), ("grass", "grass"), ("dress", "dress"), ("tennis", "tennis"),
        ("this", "this"), ("was", "was"), ("sheep", "sheep"), ("specimen", "specimen"),
    ],
)  # fmt: skip
def test_singularize(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


@pytest.mark.parametrize(
    ("caption", "mentions"),
    [
        ("Two dogs and three cats.", [("dog", "dog"), ("cat", "cat")]),
        ("A fire hydrant next to a stop sign", [("fire hydrant", "fire hydrant"), ("stop sign", "stop sign")]),
        ("Hot dogs on a plate", [("hot dog", "hot dog")]),
        (
            "A baby elephant walks with adult elephants.",
            [("baby elephant", "elephant"), ("adult elephant", "elephant")],
        ),
        ("A baby sleeps.", [("baby", "person")]),
        ("A toilet seat is up.", [("toilet seat", "toilet")]),
        ("A bathroom with a toilet and a seat.", [("toilet", "toilet")]),
        ("The seat of the toilet is open.", [("toilet", "toilet")]),
        ("A wooden seat.", [("seat", "chair")]),
        ("A man on a motor bike.", [("man", "person"), ("motor bike", "motorcycle")]),
        ("A dog chases another dog.", [("dog", "dog"), ("dog", "dog")]),
        ("A puppy", [("puppy", "dog")]),
        ("A man", [("man", "person")]),
        ("Sports balls and tennis rackets", [("sports ball", "sports ball"), ("tennis racket", "tennis racket")]),
        ("A passenger train on train tracks.", [("passenger train", "train")]),
        ("A passenger jet.", [("passenger jet", "airplane")]),
        ("A man in a bow tie.", [("man", "person"), ("bow tie", "tie")]),
        ("A stove top oven and wine glasses.", [("stove top oven", "oven"), ("wine glass", "wine glass")]),
        ("A Teddy-Bear on the TV", [("teddy bear", "teddy bear"), ("tv", "tv")]),
        ("People and children, no animals.", [("people", "person"), ("children", "person")]),
        ("Baby animals at home plate.", []),
        ("", []),
    ],
)
def test_caption_objects(caption: str, mentions: list[tuple[str, str]]) -> None:
    assert caption_objects(caption) == mentions


def test_caption_categories() -> None:
    assert caption_categories("A puppy and a kitten on a sofa with a dog.") == {"dog", "cat", "couch"}


ITEMS = [
    # mentions person, horse, dog; dog hallucinated; 2 of 2 ground truth mentioned; 9 words
    {"image_id": 1, "caption": "A man rides a horse next to a dog.", "gt_objects": {"person", "horse"}},
    # mentions cat, couch; none hallucinated; 2 of 3 mentioned; 6 words
    {"image_id": 2, "caption": "Two cats sleep on a couch.", "gt_objects": ["cat", "couch", "remote"]},
    # mentions pizza, pizza, fork, dining table; fork hallucinated; 2 of 2 mentioned; 11 words
    {"image_id": 3, "caption": "A pizza and a pizza and a fork on a table.", "gt_objects": {"pizza", "dining table"}},
]


def test_chair_metrics_on_three_captions() -> None:
    m = chair_metrics(ITEMS)
    assert (m["n_captions"], m["n_mentions"], m["n_hallucinated_mentions"], m["n_hallucinated_captions"]) == (
        3,
        9,
        2,
        2,
    )
    assert (m["n_gt_objects"], m["n_gt_mentioned"]) == (7, 6)
    assert m["chair_i_pct"] == pytest.approx(100 * 2 / 9)
    assert m["chair_s_pct"] == pytest.approx(100 * 2 / 3)
    assert m["recall_pct"] == pytest.approx(100 * 6 / 7)
    assert m["mean_length_words"] == pytest.approx(26 / 3)
    first, second, third = m["per_image"]
    assert first["hallucinated"] == [("dog", "dog")]
    assert second["hallucinated"] == [] and second["gt_mentioned"] == ["cat", "couch"]
    assert third["mentions"] == [("pizza", "pizza"), ("pizza", "pizza"), ("fork", "fork"), ("table", "dining table")]
    assert third["hallucinated"] == [("fork", "fork")]
    assert "chair_s_ci_pct" not in m


def test_chair_metrics_bootstrap_intervals() -> None:
    m = chair_metrics(ITEMS, bootstrap=200, seed=3)
    assert m == chair_metrics(ITEMS, bootstrap=200, seed=3)
    low_s, high_s = m["chair_s_ci_pct"]
    low_i, high_i = m["chair_i_ci_pct"]
    assert 0.0 <= low_s <= m["chair_s_pct"] <= high_s <= 100.0
    assert 0.0 <= low_i <= m["chair_i_pct"] <= high_i <= 100.0
    assert low_s < high_s


def test_chair_metrics_without_mentions_or_ground_truth() -> None:
    m = chair_metrics([{"image_id": 1, "caption": "Nothing to see here.", "gt_objects": []}])
    assert (m["chair_i_pct"], m["chair_s_pct"], m["recall_pct"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("items", "pattern"),
    [
        ([], "at least one caption"),
        ([{"image_id": 1, "caption": "a dog", "gt_objects": ["dogs"]}], "dogs not COCO categories"),
        (
            [{"image_id": 1, "caption": "a", "gt_objects": []}, {"image_id": 1, "caption": "b", "gt_objects": []}],
            "repeat image_id 1",
        ),
        ([{"image_id": 1, "caption": "a dog"}], "lacks gt_objects"),
    ],
)
def test_chair_metrics_refuses_bad_items(items: list[dict], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        chair_metrics(items)
