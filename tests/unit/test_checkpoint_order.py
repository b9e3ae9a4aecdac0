"""Checkpoints are ordered by (round, step): prune keeps, and newest returns, the latest position."""

from __future__ import annotations

from pathlib import Path

import pytest

from seedcli.core import checkpoint


def _save(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / checkpoint.STATE).write_text("{}")
    return path


@pytest.mark.parametrize(
    "names", [[f"step-2-{s}" for s in (100, 200, 300, 400)], [f"step-{s}" for s in (8, 9, 10, 11)]]
)
def test_prune_keeps_the_newest_by_step_and_newest_returns_it(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        _save(tmp_path, name)
        checkpoint.prune(tmp_path, 2)
        assert checkpoint.newest(tmp_path) == tmp_path / name, "the checkpoint just written must survive and be newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[-2:])
