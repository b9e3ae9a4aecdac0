"""The detection JSONL reader: good items, and one-line errors (exit code 3) for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from seedcli.detect.items import import_items, read_items
from seedcli.errors import DataError

CAPTION = "The image shows a red fork and a cat. The fork is left of the cat."
OPTIONS = [
    {"id": "A", "text": "red fork", "kind": "attribute"},
    {"id": "B", "text": "cat", "kind": "object"},
    {"id": "C", "text": "fork is left of the cat", "kind": "relation"},
]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "x.png")
    return tmp_path


def _write(root: Path, *rows: dict) -> Path:
    path = root / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _track1(**changes: object) -> dict:
    row = {"id": "i1", "image": "x.png", "caption": CAPTION, "options": OPTIONS, "labels": ["A"]}
    row.update(changes)
    return row


def test_reads_both_tracks(root: Path) -> None:
    claim = {"id": "i2", "image": "x.png", "context": "a cat", "claim": "the cat is red.", "labels": ["not_factual"]}
    items = read_items(_write(root, _track1(), claim), require_labels=True)
    assert [i.track for i in items] == [1, 2]
    assert items[0].hallucinated() == {"A": True, "B": False, "C": False}
    assert items[1].factual() is False
    assert items[0].image == root / "x.png"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_track1(options=[]), "non-empty 'options'"),
        ({k: v for k, v in _track1().items() if k != "options"}, "non-empty 'options'"),
        (_track1(image="missing.png"), "unknown image 'missing.png'"),
        (_track1(caption="  "), "'caption' is empty"),
        (
            _track1(options=[{"id": "A", "text": "blue dog", "kind": "attribute"}], labels=[]),
            "does not occur in the caption",
        ),
        (_track1(options=[{"id": "A", "text": "cat", "kind": "colour"}], labels=[]), "has kind 'colour'"),
        (_track1(labels=["Z"]), "unknown option ids ['Z']"),
        ({"id": "i3", "image": "x.png", "claim": "x", "labels": ["maybe"]}, "claim labels must be"),
        ({"id": "i4", "image": "x.png", "caption": CAPTION, "claim": "x"}, "exactly one of"),
        ({"image": "x.png", "caption": CAPTION, "options": OPTIONS}, "missing 'id'"),
    ],
)
def test_bad_items_raise_one_line_data_errors(root: Path, row: dict, message: str) -> None:
    with pytest.raises(DataError) as info:
        read_items(_write(root, row))
    text = str(info.value)
    assert message in text and "\n" not in text and "items.jsonl:1" in text
    assert info.value.exit_code == 3


def test_missing_labels_only_matter_when_required(root: Path) -> None:
    path = _write(root, {k: v for k, v in _track1().items() if k != "labels"})
    assert read_items(path)[0].labels is None
    with pytest.raises(DataError, match="missing 'labels'"):
        read_items(path, require_labels=True)


def test_invalid_json_and_duplicates(root: Path) -> None:
    path = root / "bad.jsonl"
    path.write_text(json.dumps(_track1()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2: invalid JSON"):
        read_items(path)
    with pytest.raises(DataError, match="appears twice"):
        read_items(_write(root, _track1(), _track1()))


def test_import_copies_images_and_rereads(root: Path, tmp_path: Path) -> None:
    source = _write(root, _track1())
    dest = tmp_path / "data" / "detect" / "ext.jsonl"
    assert import_items(source, dest) == 1
    (root / "x.png").unlink()  # the imported copy no longer needs the original
    items = read_items(dest, require_labels=True)
    assert items[0].image.is_file() and items[0].image.parent == dest.parent / "images" / "ext"
    assert not Path(json.loads(dest.read_text().splitlines()[0])["image"]).is_absolute()


def test_written_images_are_relative_to_the_file_even_from_relative_paths(root: Path, monkeypatch) -> None:  # noqa: ANN001
    from seedcli.detect.items import write_items

    monkeypatch.chdir(root)
    _write(root, _track1())
    items = read_items(Path("items.jsonl"))  # relative paths all along
    write_items(Path("beside.jsonl"), items)
    assert json.loads((root / "beside.jsonl").read_text())["image"] == "x.png"
    (root / "sub").mkdir()
    write_items(Path("sub/out.jsonl"), items)  # the image is not below sub/: written absolute
    assert json.loads((root / "sub" / "out.jsonl").read_text())["image"] == str((root / "x.png").resolve())
    assert read_items(root / "sub" / "out.jsonl")[0].image.is_file()
