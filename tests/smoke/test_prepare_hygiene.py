"""`seed prepare` does not follow links out of the image root, and cleans its own staging debris."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seedcli.data.datadir import open_data_dir
from tests.smoke.test_prepare_cli import _args, _image, _run, data  # noqa: F401  (data is a fixture)

pytestmark = pytest.mark.smoke


def _train_images(out: Path) -> set[str]:
    return {record.image for record in open_data_dir(out).iter_train()}


def test_link_out_of_the_image_root_is_dropped_not_followed(data: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    outside = tmp_path / "elsewhere" / "secret.jpg"
    _image(outside, 7)
    train = data / "train2017"
    escaping, inside = "000000000001.jpg", "000000000002.jpg"
    (train / escaping).unlink()
    os.symlink(outside, train / escaping)
    (train / inside).rename(train / "real-2.jpg")
    os.symlink(train / "real-2.jpg", train / inside)  # a link that stays inside the root is fine
    out = tmp_path / "seed-data"
    code, stdout, stderr = _run([*_args(data, out), "--json"], capsys)
    assert code == 0, stderr
    images = _train_images(out)
    assert escaping not in images and inside in images
    assert json.loads(stdout)["dropped"]["image_path_escapes_root"] == 1


def test_link_to_a_directory_outside_the_root_is_dropped(data: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    outside = tmp_path / "elsewhere"
    _image(outside / "000000000003.jpg", 9)
    train = data / "train2017"
    os.symlink(outside, train / "sub")
    instruct = data / "llava_instruct_150k.json"
    records = json.loads(instruct.read_text())
    records[2]["image"] = "sub/000000000003.jpg"
    instruct.write_text(json.dumps(records))
    out = tmp_path / "seed-data"
    code, stdout, stderr = _run([*_args(data, out), "--json"], capsys)
    assert code == 0, stderr
    assert not any(name.startswith("sub/") for name in _train_images(out))
    assert json.loads(stdout)["dropped"]["image_path_escapes_root"] == 1


def test_staging_debris_is_removed_at_the_next_start(data: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    out = tmp_path / "seed-data"
    partial = tmp_path / ".seed-data.k3j2x1.partial"
    old = tmp_path / ".seed-data.a8b7c6.old"
    other = tmp_path / ".other.k3j2x1.partial"  # another output's stage is not ours to remove
    for path in (partial, old, other):
        (path / "train").mkdir(parents=True)
    code, _, stderr = _run(_args(data, out), capsys)
    assert code == 0, stderr
    assert not partial.exists() and not old.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".seed-data")) == []
