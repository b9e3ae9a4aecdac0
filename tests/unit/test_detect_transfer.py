"""The transfer set of `seed detect train`: which files, read how, and the world's unlabelled split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedcli.config.detect import DetectTrainConfig
from seedcli.detect import world
from seedcli.detect.items import read_items
from seedcli.detect.train import load_items, transfer_files
from seedcli.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def detect(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "detect"
    spec = world.WorldSpec(track1=(6, 2, 2), track2=(4, 2, 2), unlabelled=(5, 3))
    counts = world.build_detect_sets(out, seed=7, spec=spec)
    assert counts["track1_unlabelled"] == 5 and counts["track2_unlabelled"] == 3
    return out


def test_unlabelled_split_has_no_labels_and_leaves_the_labelled_splits_unchanged(detect: Path, tmp_path: Path) -> None:
    rows = [
        json.loads(line) for t in (1, 2) for line in (detect / f"track{t}-unlabelled.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 8 and not any("labels" in row for row in rows)
    bare = tmp_path / "detect"
    world.build_detect_sets(bare, seed=7, spec=world.WorldSpec(track1=(6, 2, 2), track2=(4, 2, 2), unlabelled=(0, 0)))
    for name in ("track1-train", "track1-test", "track2-dev"):
        assert (bare / f"{name}.jsonl").read_text() == (detect / f"{name}.jsonl").read_text()


def test_transfer_files_are_opt_in_and_come_from_the_data_directory_only_with_its_training_items(detect: Path) -> None:
    data = detect.parent
    found = [detect / "track1-unlabelled.jsonl", detect / "track2-unlabelled.jsonl"]
    assert transfer_files(DetectTrainConfig(data=data)) == []  # off by default
    assert transfer_files(DetectTrainConfig(data=data, transfer=True)) == found
    train = (detect / "track1-train.jsonl",)
    given = (detect / "track2-unlabelled.jsonl",)
    assert transfer_files(DetectTrainConfig(data=data, train_files=train, transfer_files=given)) == list(given)
    with pytest.raises(ConfigError, match="--transfer-files"):
        transfer_files(DetectTrainConfig(data=data, transfer=True, train_files=train))
    with pytest.raises(DataError, match="seed prepare --synthetic --detect"):
        transfer_files(DetectTrainConfig(data=data / "elsewhere", transfer=True))


def test_transfer_items_drop_labels_and_may_not_reuse_training_ids(detect: Path) -> None:
    train = load_items([detect / "track1-train.jsonl"])
    labelled_file = detect / "track1-test.jsonl"
    assert all(item.labels is not None for item in read_items(labelled_file))
    transfer = load_items([labelled_file], labelled=False, taken={item.id for item in train})
    assert len(transfer) == 2 and all(item.labels is None for item in transfer)
    with pytest.raises(DataError, match="also appears"):
        load_items([detect / "track1-train.jsonl"], labelled=False, taken={item.id for item in train})


def test_prepare_sizes_the_unlabelled_split_only_with_detect() -> None:
    from seedcli.config.prepare import DEFAULT_UNLABELLED, PrepareConfig

    assert world.WorldSpec().unlabelled == (DEFAULT_UNLABELLED, DEFAULT_UNLABELLED // 2)  # one default, two places
    assert PrepareConfig(synthetic=True, detect=True, detect_unlabelled=1440).detect_unlabelled == 1440
    with pytest.raises(ConfigError, match="--detect-unlabelled"):
        PrepareConfig(synthetic=True, detect_unlabelled=1440)
    with pytest.raises(ConfigError, match="--detect-unlabelled"):
        PrepareConfig(synthetic=True, detect=True, detect_unlabelled=0)
