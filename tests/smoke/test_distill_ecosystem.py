"""`seed distill` end to end with a config file, TensorBoard, its model card and report.html."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from seedcli import trackers
from tests.smoke.test_distill import write_train_data

pytestmark = pytest.mark.smoke

SETTINGS = {
    "model": "tiny-llava",
    "device": "cpu",
    "max_steps": 3,
    "batch_size": 2,
    "grad_accum": 2,
    "lr": 5e-3,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_targets": ["q_proj", "v_proj"],
    "log_every": 1,
    "warmup_ratio": 0.0,
    "report_to": ["tensorboard"],
}


def flags(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key == "report_to":
            for item in value:
                args += [flag, item]
        elif isinstance(value, list):
            args += [flag, ",".join(value)]
        else:
            args += [flag, str(value)]
    return args


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_config_file_run_equals_flag_run_and_writes_tracker_card_and_report(tmp_path, cli):
    pytest.importorskip("tensorboard")
    data = write_train_data(tmp_path / "data")
    run = tmp_path / "run"
    settings = {**SETTINGS, "data": str(data), "out": str(run)}

    code, stdout, stderr = cli(["distill", *flags(settings)])
    assert code == 0, stderr
    from_flags = (run / "config.json").read_text(encoding="utf-8")
    saved = tmp_path / "saved-config.json"
    shutil.copy(run / "config.json", saved)

    # TensorBoard holds every value of metrics.jsonl at its step.
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    scalars = read_scalars(run / trackers.TENSORBOARD_DIR)
    for row in metrics:
        for key, value in trackers.numeric(row).items():
            assert (row["step"], pytest.approx(value, rel=1e-6, abs=1e-12)) in scalars[f"train/{key}"], key

    # The adapter's card parses as hub metadata; report.html has the curves.
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "adapter" / "README.md")
    assert card.data.library_name == "peft" and "seedcli" in card.data.tags
    report = (run / "report.html").read_text(encoding="utf-8")
    assert 'aria-label="loss (total)"' in report and 'aria-label="KL (distillation term)"' in report

    # The same run from a YAML file, and from the first run's config.json, writes the same config.json.
    shutil.rmtree(run)
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
    code, _, stderr = cli(["distill", "--config", str(config_file)])
    assert code == 0, stderr
    assert (run / "config.json").read_text(encoding="utf-8") == from_flags
    shutil.rmtree(run)
    code, _, stderr = cli(["distill", "--config", str(saved)])
    assert code == 0, stderr
    assert (run / "config.json").read_text(encoding="utf-8") == from_flags
    assert "Traceback" not in stderr and "warning" not in stderr.lower()
