"""Experiment trackers for `seed distill --report-to`: TensorBoard, Weights & Biases, Trackio.

metrics.jsonl stays the source of truth; a tracker gets a copy of every line written there (every
numeric value, at the global optimizer step), the resolved config once (config.json), and the
summary at the end (summary.json). Everything stays on this machine unless the user asks for more:
TensorBoard writes event files to RUN/tensorboard/, wandb runs in offline mode (RUN/wandb/, upload
later with `wandb sync`) unless WANDB_MODE says otherwise, and Trackio logs to its local database
unless TRACKIO_SPACE_ID names a Space. Only the process that writes metrics.jsonl logs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from seedcli.errors import ConfigError

CHOICES = ("tensorboard", "wandb", "trackio", "none")
# tracker -> (module that must be importable, seedcli extra that installs it)
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}
TENSORBOARD_DIR = "tensorboard"
PROJECT = "seedcli"


class Tracker(Protocol):
    """One experiment tracker, started lazily on the first metrics line."""

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        """Open the tracker's run and record the resolved config."""

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Record one metrics line's numeric values at a global step."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Record the summary and close."""


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a metrics line (nulls, e.g. kl of an SFT run, and non-numbers left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as `a/b` keys (trackers show flat configs best)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


class TensorBoardTracker:
    """Scalars under train/<key>, the config and the summary as text; event files in RUN/tensorboard/."""

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        """Open a SummaryWriter in RUN/tensorboard (a resumed run adds an event file there)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", _as_code(config), 0)

    def log(self, values: Mapping[str, float], step: int) -> None:
        """One scalar per value."""
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The summary as text, and its final numbers as summary/<key> scalars."""
        self.writer.add_text("summary", _as_code(summary), 0)
        for key, value in numeric(flatten(summary.get("final", {}))).items():
            self.writer.add_scalar(f"summary/{key}", value, 0)
        self.writer.close()


class WandbTracker:
    """A wandb run in RUN/wandb; offline unless WANDB_MODE is set (then wandb's own rules apply)."""

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        """wandb.init with the resolved config."""
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=dict(config), mode=mode)

    def log(self, values: Mapping[str, float], step: int) -> None:
        """run.log at the global step."""
        self.run.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Numbers of the summary into run.summary, then finish."""
        self.run.summary.update(numeric(flatten(summary)))
        self.run.finish()


class TrackioTracker:
    """A Trackio run in its local database (a Space only when TRACKIO_SPACE_ID is set)."""

    def __init__(self) -> None:
        self.module: Any = None

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        """trackio.init with the resolved config (resume="allow": a resumed run continues its Trackio run)."""
        import trackio

        self.module = trackio
        trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=run_dir.name, config=dict(config), resume="allow"
        )

    def log(self, values: Mapping[str, float], step: int) -> None:
        """trackio.log at the global step."""
        self.module.log(dict(values), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The summary's final numbers as a last log, then finish."""
        final = numeric(flatten(summary.get("final", {}), "summary/"))
        if final:
            self.module.log(final)
        self.module.finish()


FACTORIES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def _as_code(data: Mapping[str, Any]) -> str:
    # TensorBoard renders text as Markdown; indenting keeps the JSON verbatim.
    return "\n".join("    " + line for line in json.dumps(data, indent=2, default=str).splitlines())


def check_installed(names: Sequence[str]) -> None:
    """A one-line ConfigError naming the extra to install for the first tracker that is missing."""
    for name in names:
        if name == "none":
            continue
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {name} needs the {module} package: pip install 'seedcli[{extra}]'")


class Trackers:
    """The trackers of one run: started on the first metrics line, fed every line, finished with the summary."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)
        self.started = False
        self.steps_per_round = 0

    def metrics_line(self, run_dir: Path, row: Mapping[str, Any]) -> None:
        """Log one metrics.jsonl line to every tracker (at (round - 1) x steps per round + step)."""
        if not self.started:
            self._start(run_dir)
        step = (int(row.get("round", 1)) - 1) * self.steps_per_round + int(row.get("step", 0))
        values = numeric(row)
        for tracker in self.trackers:
            tracker.log(values, step)

    def finish(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        """Give every tracker the summary and close it (starting it first if no line was logged)."""
        if not self.started:
            self._start(run_dir)
        for tracker in self.trackers:
            tracker.finish(summary)

    def _start(self, run_dir: Path) -> None:
        document = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        self.steps_per_round = int(document.get("resolved", {}).get("total_steps_per_round") or 0)
        config = {"config": document.get("config", {}), "resolved": document.get("resolved", {})}
        for tracker in self.trackers:
            tracker.start(Path(run_dir), config)
        self.started = True


def open_trackers(names: Sequence[str]) -> Trackers | None:
    """The trackers `--report-to` names (None for none); fails early when one is not installed."""
    chosen = list(dict.fromkeys(name for name in names if name != "none"))
    if not chosen:
        return None
    check_installed(chosen)
    return Trackers([FACTORIES[name]() for name in chosen])


def log_metrics(trackers: Trackers | None, run_dir: Path, row: Mapping[str, Any]) -> None:
    """The training loop's hook, next to the metrics.jsonl write: a no-op without trackers."""
    if trackers is not None:
        trackers.metrics_line(run_dir, row)
