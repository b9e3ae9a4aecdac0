"""Atomic writes: complete or absent, never half-written, ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from seedcli import atomic
from seedcli.errors import ConfigError


def test_write_json_and_permissions_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "a.json", {"x": 1})
        with atomic.staged_dir(tmp_path / "d", overwrite=False) as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_staged_dir_leaves_nothing_on_error_and_keeps_the_old_content(tmp_path) -> None:
    final = tmp_path / "out"
    with atomic.staged_dir(final, overwrite=False) as tmp:
        (tmp / "v").write_text("old")
    with pytest.raises(RuntimeError), atomic.staged_dir(final, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
        raise RuntimeError("crash mid-write")
    assert (final / "v").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_non_empty_output_needs_overwrite(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(ConfigError, match="--overwrite"), atomic.staged_dir(tmp_path / "out", overwrite=False):
        pass
    assert (tmp_path / "out" / "x").read_text() == "keep"


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert atomic.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError):
        atomic.read_jsonl(path)


def test_remove_stale_stages_removes_only_this_outputs_debris(tmp_path: Path, monkeypatch) -> None:
    from seedcli.atomic import remove_stale_stages

    for name in (".data.a1.partial", ".data.b2.old", ".data2.c3.partial", ".other.d4.partial", "data"):
        (tmp_path / name).mkdir()
    removed = remove_stale_stages(tmp_path / "data")
    assert sorted(p.name for p in removed) == [".data.a1.partial", ".data.b2.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data2.c3.partial", ".other.d4.partial", "data"]
    monkeypatch.chdir(tmp_path)
    assert remove_stale_stages(Path(".")) == []  # "." is resolved: its own name, looked up in its parent
    assert (tmp_path / ".other.d4.partial").is_dir()
