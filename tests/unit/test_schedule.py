"""The learning-rate schedule shared by distill and the world model."""

from __future__ import annotations

import math

import pytest

from seedcli.core.distill import warmup_cosine


def test_warmup_then_cosine_to_zero() -> None:
    f = warmup_cosine(total=10, warmup=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0
    assert f(6) == pytest.approx(0.5)  # half-way through the 8 decay steps
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_floor_and_no_warmup() -> None:
    f = warmup_cosine(total=4, warmup=0, floor=0.1)
    assert f(0) == 1.0
    assert f(4) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
