"""The progress seam: the library reports through a `Reporter`; the CLI decides how to render it.

Library code never imports rich. `PlainReporter` writes one line per event to stderr (job
pipelines, logs); the Rich renderer lives in `seedcli.cli.render`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, TextIO


class Task(Protocol):
    """A unit of long work with an optional total."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Mark `n` more items done; `fields` are shown beside the bar (loss=..., beta=...)."""


class Reporter(Protocol):
    """What the library needs from a progress display."""

    def task(self, description: str, total: int | None, unit: str = "it") -> contextlib.AbstractContextManager[Task]:
        """Open a progress task; close it by leaving the context."""

    def log(self, fields: Mapping[str, Any]) -> None:
        """One structured readout (a logged training step, an evaluation summary)."""

    def info(self, message: str) -> None:
        """A line for the user."""

    def warn(self, message: str) -> None:
        """A warning for the user."""


class _NullTask:
    def advance(self, n: int = 1, **fields: Any) -> None:
        """Ignore progress."""


class NullReporter:
    """Reports nothing (library use, tests)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Task]:
        """A task that shows nothing."""
        yield _NullTask()

    def log(self, fields: Mapping[str, Any]) -> None:
        """Drop the readout."""

    def info(self, message: str) -> None:
        """Drop the message."""

    def warn(self, message: str) -> None:
        """Drop the warning."""


def format_fields(fields: Mapping[str, Any]) -> str:
    """`k=v` pairs with compact floats, for plain one-line output."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _PlainTask:
    def __init__(self, stream: TextIO, description: str, total: int | None, unit: str, every_s: float) -> None:
        self.stream, self.description, self.total, self.unit = stream, description, total, unit
        self.done, self.start, self.every_s, self.last = 0, time.monotonic(), every_s, 0.0

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total is not None and self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            extra = f" {format_fields(fields)}" if fields else ""
            if self.unit == "B":
                total = f"/{_megabytes(self.total)}" if self.total is not None else ""
                eta = f", ETA {_duration((self.total - self.done) / rate)}" if self.total and rate > 0 else ""
                progress = f"{_megabytes(self.done)}{total} MB ({rate / 1e6:.1f} MB/s{eta})"
            else:
                total = f"/{self.total}" if self.total is not None else ""
                progress = f"{self.done}{total} {self.unit} ({rate:.2f} {self.unit}/s)"
            print(f"{self.description}: {progress}{extra}", file=self.stream, flush=True)


class PlainReporter:
    """One line per event on stderr: for pipes, files and CI logs."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Task]:
        """A task printing a progress line at most every `every_s` seconds and at the end."""
        yield _PlainTask(self.stream, description, total, unit, self.every_s)

    def log(self, fields: Mapping[str, Any]) -> None:
        """Print the readout as one `k=v` line."""
        print(format_fields(fields), file=self.stream, flush=True)

    def info(self, message: str) -> None:
        """Print the message."""
        print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """Print the warning with a prefix."""
        print(f"warning: {message}", file=self.stream, flush=True)
