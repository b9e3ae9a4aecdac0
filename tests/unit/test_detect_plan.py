"""The stage plan of `seed detect train` under every switch."""

from __future__ import annotations

from pathlib import Path

from seedcli.config.detect import DetectTrainConfig
from seedcli.detect.train import plan

L, M, S = "tiny-qwen2-vl-l", "tiny-qwen2-vl-m", "tiny-qwen2-vl-s"


def _names(**kwargs: object) -> list[tuple[str, int, tuple[int, ...], bool]]:
    return [(s.name, s.student, tuple(i for i, _ in s.teachers), s.online) for s in plan(DetectTrainConfig(**kwargs))]


def test_default_pyramid_is_online_with_ternary_refinement() -> None:
    assert _names() == [
        ("sft", 0, (), False),
        ("kd-1", 1, (0,), True),
        ("kd-2", 2, (1,), True),
        ("refine", 2, (0, 1), False),
    ]


def test_switches() -> None:
    assert [online for *_, online in _names(offline=True)] == [False] * 4
    assert _names(pyramid=False) == [("sft", 0, (), False), ("kd-2", 2, (0,), True), ("refine", 2, (0,), False)]
    assert [name for name, *_ in _names(refine=False)] == ["sft", "kd-1", "kd-2"]
    assert _names(models=(S,)) == [("sft", 0, (), False)]
    assert _names(models=(L, S)) == [("sft", 0, (), False), ("kd-1", 1, (0,), True), ("refine", 1, (0,), False)]


def test_refinement_weights_and_epochs() -> None:
    refine = plan(DetectTrainConfig(refine_labels=0.2, refine_large=0.3, refine_medium=0.5, refine_epochs=3))[-1]
    assert refine.label_weight == 0.2 and refine.teachers == ((0, 0.3), (1, 0.5)) and refine.epochs == 3


def test_transfer_set_goes_only_where_the_teachers_are_frozen() -> None:
    assert not any(s.transfer for s in plan(DetectTrainConfig(offline=True)))  # off by default
    assert [s.transfer for s in plan(DetectTrainConfig(transfer=True))] == [False, False, False, True]
    assert [s.transfer for s in plan(DetectTrainConfig(transfer=True, offline=True))] == [False, True, True, True]
    given = DetectTrainConfig(transfer_files=(Path("u.jsonl"),), offline=True)
    assert [s.transfer for s in plan(given)] == [False, True, True, True]
