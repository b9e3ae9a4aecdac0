"""What `seed prepare` would fetch: the plan, --data-root, the offline message, zip member checks."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from seedcli.config.prepare import PrepareConfig
from seedcli.data import fetch
from seedcli.errors import ConfigError, DataError
from seedcli.reporting import NullReporter


@pytest.fixture(autouse=True)
def _empty_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans must not depend on what this machine's hub cache holds."""
    monkeypatch.setattr(fetch, "_hub_cached", lambda: None)


def _keys(cfg: PrepareConfig) -> set[str]:
    return {need.remote.key for need in fetch.plan(fetch.with_data_root(cfg))[1]}


def test_data_root_moves_only_default_paths(tmp_path: Path) -> None:
    cfg = fetch.with_data_root(PrepareConfig(data_root=tmp_path, instruct=Path("mine.json")))
    assert cfg.instruct == Path("mine.json")
    assert cfg.coco_annotations == tmp_path / "annotations" and cfg.coco_images == tmp_path / "val2014"
    default = PrepareConfig()
    assert fetch.with_data_root(default) is default  # data/ is the default root: nothing moves


def test_plan_lists_only_what_the_run_needs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert _keys(PrepareConfig(data_root=root)) == {"instruct", "train2014", "annotations", "val2014"}
    assert _keys(PrepareConfig(data_root=root, train=False)) == {"annotations", "val2014"}
    assert _keys(PrepareConfig(data_root=root, pope=False, chair=False)) == {"instruct", "train2014"}
    official = PrepareConfig(data_root=root, train=False, chair=False, pope_from=Path("official"))
    assert _keys(official) == {"val2014", "pope_random", "pope_popular", "pope_adversarial"}
    assert fetch.plan(fetch.with_data_root(official))[0].pope_from == root / "pope"
    # A path given elsewhere is never fetched into; an existing layout directory is used as it is.
    assert _keys(PrepareConfig(data_root=root, train=False, coco_images=tmp_path / "mine")) == {"annotations"}
    (root / "train2017").mkdir(parents=True)
    cfg, needs = fetch.plan(fetch.with_data_root(PrepareConfig(data_root=root, pope=False, chair=False)))
    assert cfg.images == root / "train2017" and [n.remote.key for n in needs] == ["instruct"]
    assert not (root / "downloads").exists()  # planning writes nothing


def test_offline_message_is_one_line_with_targets_urls_and_sizes(tmp_path: Path) -> None:
    cfg = PrepareConfig(data_root=tmp_path / "data", out=tmp_path / "out", max_samples=50000, offline=True)
    with pytest.raises(DataError) as raised:
        fetch.ensure_inputs(cfg, NullReporter())
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--offline: missing ")
    table = fetch.sources()
    for key in ("instruct", "annotations", "val2014", "train2014"):
        assert table[key].url in message
    assert "http://images.cocodataset.org/zips/train2014.zip (13.5 GB)" in message
    assert "20.6 GB to fetch" in message and "--coco-images" in message
    assert not (tmp_path / "data").exists()


def test_urls_follow_the_mirror_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.COCO_URL_ENV, "http://mirror.example/coco/")
    monkeypatch.setenv(fetch.POPE_URL_ENV, "http://mirror.example/pope")
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example")
    table = fetch.sources()
    assert table["val2014"].url == "http://mirror.example/coco/zips/val2014.zip"
    assert table["pope_random"].url == "http://mirror.example/pope/coco_pope_random.json"
    assert table["instruct"].url.startswith("http://hub.example/datasets/liuhaotian/LLaVA-Instruct-150K/resolve/main/")


def test_pinned_checksums_are_sha256() -> None:
    for remote in fetch.sources().values():
        assert remote.hub or (remote.sha256 is not None and len(remote.sha256) == 64 and remote.exact_size)


def test_confirmation_is_needed_above_1_gb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cfg = PrepareConfig(data_root=tmp_path / "data", train=False, chair=False, pope_from=Path("official"))
    with pytest.raises(ConfigError, match="--yes is needed to download 6.6 GB"):
        fetch.ensure_inputs(cfg, NullReporter())
    assert not (tmp_path / "data").exists()


def test_zip_members_leaving_the_directory_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("val2014/ok.jpg", b"x")
        zipped.writestr("val2014/../../escape.jpg", b"x")
    with pytest.raises(DataError, match="leaves the extraction directory"):
        fetch.extract(archive, "val2014", tmp_path / "val2014", NullReporter())
    assert not (tmp_path / "val2014").exists() and not (tmp_path.parent / "escape.jpg").exists()


def test_an_archive_without_the_folder_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("train2014/a.jpg", b"x")
    (tmp_path / "val2014.zip").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="has no val2014/ folder"):
        fetch.extract(tmp_path / "val2014.zip", "val2014", tmp_path / "val2014", NullReporter())


def test_hub_files_are_checked_against_their_etag(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"hello\n")
    sha256 = hashlib.sha256(b"hello\n").hexdigest()
    git_sha1 = hashlib.sha1(b"blob 6\0hello\n").hexdigest()  # what the hub sends for a small (non-LFS) file
    assert fetch._verify_hub_file(path, sha256, 6, "URL") == sha256
    assert fetch._verify_hub_file(path, git_sha1, 6, "URL") == sha256
    with pytest.raises(DataError, match="checksum mismatch for URL"):
        fetch._verify_hub_file(path, "0" * 64, 6, "URL")
    assert not path.exists()  # a corrupt copy is removed


def test_human_sizes() -> None:
    assert fetch.human(999) == "999 B"
    assert fetch.human(252_872_794) == "252.9 MB"
    assert fetch.human(13_510_573_713) == "13.5 GB"
