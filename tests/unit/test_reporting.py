"""Plain progress output for pipes: one readable line per event."""

from __future__ import annotations

import io

from seedcli.reporting import PlainReporter, format_fields


def test_plain_task_prints_counts_rates_and_fields() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream=stream, every_s=0.0)
    with reporter.task("distill", total=4, unit="step") as task:
        task.advance(2, loss=1.23456)
    line = stream.getvalue().strip()
    assert line.startswith("distill: 2/4 step (") and line.endswith("loss=1.235")


def test_byte_tasks_are_shown_in_megabytes() -> None:
    stream = io.StringIO()
    with PlainReporter(stream=stream, every_s=0.0).task("reading x.json", total=230_000_000, unit="B") as task:
        task.advance(115_000_000)
    assert stream.getvalue().startswith("reading x.json: 115.0/230.0 MB (")


def test_format_fields() -> None:
    assert format_fields({"a": 0.000123456, "b": 3, "c": None}) == "a=0.0001235 b=3 c=None"
