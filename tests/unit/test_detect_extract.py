"""Options read from free text: objects (CHAIR synonyms, world words), attributes, relations, limits."""

from __future__ import annotations

from pathlib import Path

from seedcli.detect.extract import extract_options, item_from_text, world_object_words
from seedcli.detect.items import parse_item
from seedcli.detect.screen import rates


def _options(text: str, **kwargs: object) -> list[tuple[str, str]]:
    return [(o.kind, o.text) for o in extract_options(text, **kwargs).options]  # type: ignore[arg-type]


def test_a_world_caption_gives_every_kind_in_text_order() -> None:
    text = "The image shows a big fork and a small cat. The fork is left of the cat."
    assert _options(text) == [
        ("attribute", "big fork"),
        ("object", "fork"),
        ("attribute", "small cat"),
        ("object", "cat"),
        ("relation", "fork is left of the cat"),
    ]
    assert [o.id for o in extract_options(text).options] == ["A", "B", "C", "D", "E"]


def test_objects_use_chair_synonyms_plurals_and_merged_terms() -> None:
    found = _options("Two Puppies, a hot-dog and a toilet seat near the dining table.")
    assert found == [
        ("object", "puppies"),
        ("object", "hot-dog"),
        ("object", "toilet seat"),
        ("object", "dining table"),
    ]
    assert _options("A seat next to a toilet.") == [("object", "toilet")]  # CHAIR's toilet-seat rule holds


def test_world_words_are_objects_even_where_chair_does_not_know_them() -> None:
    assert {"fork", "knife", "puppy", "bike", "kitten"} <= world_object_words()
    assert _options("A gizmo beside a cup.") == [("object", "cup")]
    assert _options("A red gizmo is beside a cup.", object_words=frozenset({"gizmo"})) == [
        ("attribute", "red gizmo"),
        ("object", "gizmo"),
        ("relation", "gizmo is beside a cup"),
        ("object", "cup"),
    ]


def test_attributes_need_a_listed_word_directly_before_the_object() -> None:
    assert ("attribute", "yellow   frisbee") in _options("A yellow   frisbee.")
    assert _options("A shiny car.") == [("object", "car")]  # not a listed size or colour word
    assert _options("A car that is red.") == [("object", "car")]  # not before the object
    assert _options("A red, round clock.") == [("object", "clock")]  # "red" does not qualify "clock" directly
    assert _options("An orange cat.") == [("object", "orange"), ("object", "cat")]  # CHAIR's fruit, no colour


def test_relation_patterns() -> None:
    cases = {
        "The dogs are next to a red car.": "dogs are next to a red car",
        "A cup is on top of the clock.": "cup is on top of the clock",
        "The umbrella is to the right of an apple.": "umbrella is to the right of an apple",
        "The bike is behind the bus.": "bike is behind the bus",
        "A cat is on the bed.": "cat is on the bed",
        "The spoon is below knife.": "spoon is below knife",
    }
    for text, relation in cases.items():
        assert ("relation", relation) in _options(text), text
    assert not [k for k, _ in _options("The dog is happy and the car is red.") if k == "relation"]
    assert not [k for k, _ in _options("The dog is, left of the cat.") if k == "relation"]  # not word after word
    assert not [k for k, _ in _options("The dog is left of the tree.") if k == "relation"]  # "tree" is no object


def test_no_option_and_duplicates() -> None:
    assert _options("Nothing to see here, just a blurry photo.") == []
    assert _options("") == []
    assert item_from_text("x", "Nothing at all.", Path("img.png")) is None
    assert _options("A dog. Another dog. A dog.") == [("object", "dog")]


def test_the_limit_cuts_and_counts() -> None:
    text = " ".join(f"A {w}." for w in ("dog", "cat", "car", "cup", "fork"))
    extraction = extract_options(text, limit=3)
    assert [o.text for o in extraction.options] == ["dog", "cat", "car"] and extraction.truncated == 2


def test_items_pass_the_format_validation(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    text = "Two Dogs are next to a RED car."
    item = item_from_text("x", text, image)
    assert item is not None
    row = item.to_row(tmp_path)
    assert parse_item(row, image_root=tmp_path, where="t", require_labels=False) == item


def test_rates_count_captions_without_options() -> None:
    def option(kind: str, flag: bool) -> dict[str, object]:
        return {"kind": kind, "hallucinated": flag}

    records = [
        {"options": [option("object", True), option("attribute", False)], "hallucinated": ["A"], "truncated": 0},
        {"options": [option("object", False), option("relation", False)], "hallucinated": [], "truncated": 1},
        {"options": [], "hallucinated": [], "truncated": 0},
    ]
    scored = rates(records)  # type: ignore[arg-type]
    assert scored["n_captions"] == 3 and scored["n_no_options"] == 1 and scored["n_truncated_options"] == 1
    assert scored["n_options"] == 4 and scored["flagged_pct"] == 25.0
    assert scored["kinds"]["object"] == {"n": 2, "flagged": 1, "flagged_pct": 50.0}
    assert scored["kinds"]["relation"]["flagged_pct"] == 0.0
    assert scored["n_flagged_captions"] == 1 and abs(scored["captions_flagged_pct"] - 100 / 3) < 1e-9
    assert rates([])["flagged_pct"] is None
