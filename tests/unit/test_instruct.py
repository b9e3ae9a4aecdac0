"""LLaVA-Instruct conversion: streaming, drop reasons, naming, leakage guard, seeded sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from seedcli.data.coco import alternative_names, image_file_name, image_id_from_name
from seedcli.data.instruct import iter_json_array, scan_instruct, select_records
from seedcli.errors import DataError
from seedcli.reporting import NullReporter


def _image(path: Path, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)


def _conv(question: str = "What is this?", answer: str = "A cat.") -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _write(path: Path, items: list) -> Path:
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path


@pytest.fixture()
def train2014(tmp_path: Path) -> Path:
    root = tmp_path / "train2014"
    for image_id in range(1, 6):
        _image(root / image_file_name(image_id, "train2014"))
    (root / image_file_name(6, "train2014")).write_bytes(b"this is not a jpeg")
    return root


def _scan(path: Path, root: Path, **kwargs):
    return scan_instruct(path, root, reporter=NullReporter(), **kwargs)


def test_each_drop_reason_is_counted(tmp_path: Path, train2014: Path) -> None:
    good = {"id": "1", "image": "000000000001.jpg", "conversations": _conv()}
    items = [
        good,
        {"id": "2", "image": "000000000999.jpg", "conversations": _conv()},  # image_missing
        {"id": "3", "image": "000000000006.jpg", "conversations": _conv()},  # exists, undecodable
        {"id": "4", "image": "000000000002.jpg", "conversations": []},  # empty_conversation
        {
            "id": "5",
            "image": "000000000002.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "  "}],
        },
        {
            "id": "6",
            "image": "000000000002.jpg",
            "conversations": [{"from": "human", "value": "<image>\nHi?"}],
        },  # one-sided
        {
            "id": "7",
            "image": "000000000003.jpg",
            "conversations": [{"from": "gpt", "value": "Alone."}, {"from": "gpt", "value": "Still."}],
        },
        dict(good),  # duplicate_id: same id, same image, same conversation
        {"id": "1", "image": "000000000001.jpg", "conversations": _conv("Colour?", "Grey.")},  # kept as 1#2
        {"id": "8", "image": "/abs/000000000001.jpg", "conversations": _conv()},
        {"id": "9", "image": "../train2014/000000000001.jpg", "conversations": _conv()},
        {"id": "10", "image": "sub/../../000000000001.jpg", "conversations": _conv()},
        {"id": "11", "image": "000000000004.jpg", "conversations": "not a list"},  # malformed_record
        ["not", "an", "object"],  # malformed_record
        {
            "id": "12",
            "image": "000000000004.jpg",
            "conversations": [{"from": "robot", "value": "x"}],
        },  # malformed_record
        {"id": "13", "conversations": _conv()},  # no_image
        {"id": "14", "image": "000000000005.jpg", "conversations": _conv()},  # eval_overlap
        {
            "id": "15",
            "image": "000000000004.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A cat."}],
        },
    ]
    path = _write(tmp_path / "instruct.json", items)
    scan = _scan(path, train2014, eval_ids=frozenset({5}))
    assert scan.read == len(items)
    assert dict(scan.dropped) == {
        "image_missing": 1,
        "empty_conversation": 2,
        "one_sided_conversation": 2,
        "duplicate_id": 1,
        "absolute_image_path": 1,
        "image_path_escapes_root": 2,
        "malformed_record": 3,
        "no_image": 1,
        "eval_overlap": 1,
    }
    assert [r.id for r in scan.records] == ["1", "3", "1#2", "15"]  # an image-only prompt is a user turn
    assert scan.renamed_ids == 1

    kept, unreadable = select_records(
        scan.records, train2014, max_samples=None, seed=0, verify_images=False, workers=1, reporter=NullReporter()
    )
    assert (len(kept), unreadable) == (4, 0)
    kept, unreadable = select_records(
        scan.records, train2014, max_samples=None, seed=0, verify_images=True, workers=1, reporter=NullReporter()
    )
    assert [r.id for r in kept] == ["1", "1#2", "15"]
    assert unreadable == 1


def test_conversion_maps_roles_keeps_turns_and_removes_image_token(tmp_path: Path, train2014: Path) -> None:
    turns = [
        {"from": "human", "value": "What is in the picture?\n<image>"},
        {"from": "gpt", "value": "A grey square."},
        {"from": "human", "value": "Is it large?"},
        {"from": "gpt", "value": "No, it is small."},
    ]
    path = _write(tmp_path / "instruct.json", [{"id": 7, "image": "000000000002.jpg", "conversations": turns}])
    (record,) = _scan(path, train2014).records
    assert record.id == "7"
    assert record.image == "COCO_train2014_000000000002.jpg"
    assert record.messages == (
        {"role": "user", "content": "What is in the picture?"},
        {"role": "assistant", "content": "A grey square."},
        {"role": "user", "content": "Is it large?"},
        {"role": "assistant", "content": "No, it is small."},
    )


def test_malformed_json_reports_the_position(tmp_path: Path, train2014: Path) -> None:
    text = '[\n  {"id": "1", "image": "000000000001.jpg", "conversations": []},\n  {"id": "2" "image": "x.jpg"}\n]\n'
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        _scan(path, train2014)
    message = str(caught.value)
    assert f"line {reference.value.lineno} column {reference.value.colno}" in message
    assert "line 3 column 14" in message
    assert "--instruct" in message and str(path) in message


def test_a_top_level_object_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "object.json"
    path.write_text('{"id": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON array"):
        list(iter_json_array(path, where="--instruct"))


@pytest.mark.parametrize("chunk_bytes", [1, 3, 17, 1 << 20])
def test_streaming_matches_json_loads_for_any_chunk_size(tmp_path: Path, chunk_bytes: int) -> None:
    items = [{"id": i, "text": "naïve café " * (i % 4), "n": 10**i, "nested": [True, None, 1.5]} for i in range(25)] + [
        123456789,
        "tail",
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
    assert list(iter_json_array(path, where="x", chunk_bytes=chunk_bytes)) == items


def test_train2014_and_train2017_names_resolve_both_ways(tmp_path: Path) -> None:
    root2017 = tmp_path / "train2017"
    _image(root2017 / image_file_name(42, "train2017"))
    root2014 = tmp_path / "train2014"
    _image(root2014 / image_file_name(42, "train2014"))
    items = [
        {"id": "a", "image": "000000000042.jpg", "conversations": _conv()},
        {"id": "b", "image": "COCO_train2014_000000000042.jpg", "conversations": _conv()},
    ]
    path = _write(tmp_path / "instruct.json", items)
    assert [r.image for r in _scan(path, root2017).records] == ["000000000042.jpg"] * 2
    assert [r.image for r in _scan(path, root2014).records] == ["COCO_train2014_000000000042.jpg"] * 2


def test_coco_names_and_ids() -> None:
    assert image_id_from_name("COCO_val2014_000000310196.jpg") == 310196
    assert image_id_from_name("COCO_train2014_000000033471.jpg") == 33471
    assert image_id_from_name("000000033471.jpg") == 33471
    assert image_id_from_name("sub/dir/000000000007.png") == 7
    assert image_id_from_name("holiday.jpg") is None
    assert image_file_name(33471, "train2017") == "000000033471.jpg"
    assert image_file_name(310196, "val2014") == "COCO_val2014_000000310196.jpg"
    assert alternative_names("000000033471.jpg") == ("COCO_train2014_000000033471.jpg",)
    assert alternative_names("COCO_train2014_000000033471.jpg") == ("000000033471.jpg",)
    assert alternative_names("COCO_val2014_000000033471.jpg") == ()


def test_leakage_guard_drops_eval_images_unless_allowed(tmp_path: Path, train2014: Path) -> None:
    items = [{"id": str(i), "image": image_file_name(i, "train2017"), "conversations": _conv()} for i in range(1, 6)]
    path = _write(tmp_path / "instruct.json", items)
    guarded = _scan(path, train2014, eval_ids=frozenset({2, 4, 77}))
    assert [r.id for r in guarded.records] == ["1", "3", "5"]
    assert guarded.dropped["eval_overlap"] == 2
    allowed = _scan(path, train2014, eval_ids=frozenset({2, 4, 77}), allow_eval_overlap=True)
    assert [r.id for r in allowed.records] == ["1", "2", "3", "4", "5"]
    assert allowed.dropped["eval_overlap"] == 0


def test_sampling_is_reproducible_by_seed(tmp_path: Path) -> None:
    root = tmp_path / "train2017"
    _image(root / image_file_name(1, "train2017"))
    items = [
        {"id": f"r{i}", "image": image_file_name(1, "train2017"), "conversations": _conv(f"Q{i}?")} for i in range(60)
    ]
    records = _scan(_write(tmp_path / "instruct.json", items), root).records

    def draw(seed: int) -> list[str]:
        chosen, _ = select_records(
            records, root, max_samples=10, seed=seed, verify_images=False, workers=1, reporter=NullReporter()
        )
        return [r.id for r in chosen]

    first = draw(0)
    assert len(first) == 10 and len(set(first)) == 10
    assert first == draw(0)
    assert set(first) != set(draw(1))
    # Kept in input order, and a sample of the input.
    positions = [int(rid[1:]) for rid in first]
    assert positions == sorted(positions)
    everything, _ = select_records(
        records, root, max_samples=1000, seed=0, verify_images=False, workers=1, reporter=NullReporter()
    )
    assert len(everything) == 60
