"""The step benchmark's data-wait share: the loop's per-step shares weighted by step time."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_step.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # the script imports its sibling shapes.py
    spec = importlib.util.spec_from_file_location("distill_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_share_weights_each_step_by_its_time(bench) -> None:
    # Batch 2: 4 samples/s = a 0.5 s step that waited 20%, 2 samples/s = a 1 s step that waited 50%.
    lines = [{"samples_per_s": 4.0, "data_wait_share": 0.2}, {"samples_per_s": 2.0, "data_wait_share": 0.5}]
    assert bench.data_wait_share(lines, samples_per_step=2) == pytest.approx((0.1 + 0.5) / 1.5)


def test_no_wait_is_zero_and_no_lines_is_nan(bench) -> None:
    assert bench.data_wait_share([{"samples_per_s": 3.0, "data_wait_share": 0.0}], samples_per_step=1) == 0.0
    assert math.isnan(bench.data_wait_share([], samples_per_step=1))


def test_reporter_keeps_metrics_lines(bench) -> None:
    reporter = bench.ClockReporter(sync=False)
    reporter.log({"step": 1, "data_wait_share": 0.25})
    assert reporter.lines == [{"step": 1, "data_wait_share": 0.25}]
