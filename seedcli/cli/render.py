"""Rich rendering for the CLI: a progress Reporter on stderr and summary tables.

Library code reports through `seedcli.reporting.Reporter`; commands pick the renderer here. Rich
bars are used only when stderr is a terminal (and not in --json mode); pipes, files and CI logs
get `PlainReporter`'s one line per event.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from seedcli.reporting import PlainReporter, Reporter, Task, format_fields


class _CountColumn(ProgressColumn):
    """'done/total unit' with byte sizes in human units."""

    def render(self, task: Any) -> Text:
        unit = task.fields.get("unit", "it")
        show = decimal if unit == "B" else (lambda n: f"{int(n):,}")
        total = f"/{show(task.total)}" if task.total is not None else ""
        suffix = "" if unit == "B" else f" {unit}"
        return Text(f"{show(task.completed)}{total}{suffix}", style="progress.download")


class _SpeedColumn(ProgressColumn):
    """Transfer speed, for byte tasks only (downloads, extraction, reading)."""

    def render(self, task: Any) -> Text:
        if task.fields.get("unit") != "B" or not task.speed:
            return Text("")
        return Text(f"{decimal(int(task.speed))}/s", style="progress.data.speed")


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, n: int = 1, **fields: Any) -> None:
        if fields:
            self.progress.update(self.task_id, advance=n, extra=format_fields(fields))
        else:
            self.progress.update(self.task_id, advance=n)


class RichReporter:
    """Progress bars on stderr; nested tasks share one live display."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._open = 0

    def _live(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                _CountColumn(),
                _SpeedColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=self.console,
            )
            self._progress.start()
        return self._progress

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Task]:
        """A progress bar that stays visible when done."""
        progress = self._live()
        self._open += 1
        task_id = progress.add_task(description, total=total, unit=unit, extra="")
        try:
            yield _RichTask(progress, task_id)
        finally:
            self._open -= 1
            if self._open == 0:
                progress.stop()
                self._progress = None

    def log(self, fields: Mapping[str, Any]) -> None:
        """Print one `k=v` readout."""
        self.console.print(format_fields(fields), highlight=False)

    def info(self, message: str) -> None:
        """Print a message."""
        self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        """Print a warning in yellow."""
        self.console.print(Text("warning: ", style="bold yellow") + Text(message))


def make_reporter(json_mode: bool) -> Reporter:
    """Rich bars when stderr is a terminal and not in --json mode, else plain lines on stderr."""
    if not json_mode and sys.stderr.isatty():
        return RichReporter()
    return PlainReporter()


def print_table(title: str, rows: Sequence[Sequence[Any]], columns: Sequence[str] | None = None) -> None:
    """Print a table on stderr; without `columns` it is a headerless key/value table."""
    # At least as wide as its title, which Rich would otherwise wrap to the width of narrow columns.
    table = Table(title=title, show_header=columns is not None, min_width=len(title) + 2)
    for index, name in enumerate(columns or [""] * max((len(r) for r in rows), default=0)):
        table.add_column(name, style="bold" if index == 0 else None, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(stderr=True).print(table)
