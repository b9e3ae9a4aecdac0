"""Experiment trackers: missing extras, global steps, offline defaults, TensorBoard files read back."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from seedcli import trackers
from seedcli.errors import ConfigError

ROWS = [
    {"round": 1, "step": 2, "loss": 0.5, "kl": 0.25, "ce": 0.1, "lr": 1e-3, "tokens": 40, "confidence": -0.2},
    {"round": 1, "step": 4, "loss": 0.4, "kl": None, "ce": 0.2, "lr": 5e-4, "tokens": 41, "confidence": -0.1},
    {"round": 2, "step": 2, "loss": 0.3, "kl": 0.1, "ce": 0.05, "lr": 1e-3, "tokens": 39, "confidence": -0.3},
]


def run_dir(tmp_path: Path) -> Path:
    document = {
        "command": "distill",
        "config": {"model": "tiny-llava", "lr": 1e-3},
        "resolved": {"total_steps_per_round": 4},
    }
    (tmp_path / "config.json").write_text(json.dumps(document), encoding="utf-8")
    return tmp_path


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, run_dir, config):
        self.calls.append(("start", config))

    def log(self, values, step):
        self.calls.append(("log", step, dict(values)))

    def finish(self, summary):
        self.calls.append(("finish", summary))


def test_a_missing_tracker_names_the_extra(monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"--report-to wandb needs the wandb package: pip install 'seedcli\[wandb\]'"):
        trackers.open_trackers(["none", "wandb"])
    assert trackers.open_trackers(["none"]) is None
    assert trackers.open_trackers([]) is None


def test_lines_go_to_every_tracker_at_the_global_step(tmp_path):
    recorder = Recorder()
    group = trackers.Trackers([recorder])
    for row in ROWS:
        trackers.log_metrics(group, run_dir(tmp_path), row)
    group.finish(tmp_path, {"final": {"last": {"loss": 0.3}}})
    kinds = [call[0] for call in recorder.calls]
    assert kinds == ["start", "log", "log", "log", "finish"]
    assert recorder.calls[0][1]["config"]["model"] == "tiny-llava"
    assert [call[1] for call in recorder.calls[1:4]] == [2, 4, 6]  # round 2 step 2 = 4 + 2
    assert "kl" not in recorder.calls[2][2]  # null values (no KL) are not numbers
    assert recorder.calls[1][2] == {k: float(v) for k, v in ROWS[0].items()}
    trackers.log_metrics(None, tmp_path, ROWS[0])  # no trackers: nothing happens


def test_wandb_runs_offline_unless_told_otherwise(tmp_path, monkeypatch):
    seen: dict = {}

    class Run:
        summary: dict = {}

        def log(self, values, step):
            seen.setdefault("logged", []).append((step, values))

        def finish(self):
            seen["finished"] = True

    def init(**kwargs):
        seen["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    group = trackers.Trackers([trackers.WandbTracker()])
    group.metrics_line(run_dir(tmp_path), ROWS[0])
    group.finish(tmp_path, {"final": {"last": {"loss": 0.3}}, "run_dir": str(tmp_path)})
    assert seen["init"]["mode"] == "offline" and seen["init"]["dir"] == str(tmp_path)
    assert seen["logged"][0][0] == 2 and seen["finished"]
    monkeypatch.setenv("WANDB_MODE", "online")
    trackers.WandbTracker().start(tmp_path, {})
    assert seen["init"]["mode"] == "online"


def test_trackio_logs_locally(tmp_path, monkeypatch):
    seen: dict = {"log": []}
    fake = types.SimpleNamespace(
        init=lambda **kwargs: seen.update(init=kwargs),
        log=lambda values, step=None: seen["log"].append((step, values)),
        finish=lambda: seen.update(finished=True),
    )
    monkeypatch.setitem(sys.modules, "trackio", fake)
    group = trackers.Trackers([trackers.TrackioTracker()])
    group.metrics_line(run_dir(tmp_path), ROWS[2])
    group.finish(tmp_path, {"final": {"last": {"loss": 0.3}}})
    assert "space_id" not in seen["init"] and seen["init"]["config"]["resolved"]["total_steps_per_round"] == 4
    assert seen["log"][0][0] == 6 and seen["log"][-1][1] == {"summary/last/loss": 0.3} and seen["finished"]


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_value(tmp_path):
    pytest.importorskip("tensorboard")
    group = trackers.open_trackers(["tensorboard"])
    for row in ROWS:
        trackers.log_metrics(group, run_dir(tmp_path), row)
    group.finish(tmp_path, {"final": {"last": {"loss": 0.3}}})
    scalars = read_scalars(tmp_path / trackers.TENSORBOARD_DIR)
    for index, row in enumerate(ROWS):
        step = [2, 4, 6][index]
        for key, value in trackers.numeric(row).items():
            assert (step, pytest.approx(value, rel=1e-6)) in scalars[f"train/{key}"], key
    assert scalars["summary/last/loss"] == [(0, pytest.approx(0.3))]


def test_distill_stops_before_any_work_when_the_tracker_is_missing(monkeypatch, capsys):
    import seedcli.core.distill as core
    from tests.conftest import run_cli

    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "trackio" else real(name))
    monkeypatch.setattr(core, "distill", lambda *args, **kwargs: pytest.fail("training started"))
    code, out, err = run_cli(["distill", "--model", "tiny-llava", "--report-to", "trackio"], capsys)
    assert code == 2 and out == ""
    assert "pip install 'seedcli[trackio]'" in err
