"""`--config FILE` and `--print-config`: keys, types, precedence, run config.json, given fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from seedcli.config.base import to_dict
from seedcli.config.distill import DistillConfig
from seedcli.config.files import read_config_file, to_yaml
from seedcli.errors import ConfigError


@pytest.fixture
def captured(monkeypatch):
    """Run `seed distill` in-process with the engine replaced: returns (invoke, seen config and given fields)."""
    import seedcli.cli.distill
    import seedcli.core.distill as core
    from seedcli.cli import options
    from seedcli.cli.app import app

    seen: dict = {}

    def fake(cfg, reporter, **kwargs):
        seen["cfg"], seen["given"] = cfg, options.given_fields()
        return {"run_dir": "x"}

    monkeypatch.setattr(core, "distill", fake)
    monkeypatch.setattr(seedcli.cli.distill, "_after_training", lambda *args: None)
    return (lambda args: CliRunner().invoke(app, args)), seen


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_values_are_typed_like_the_fields(tmp_path):
    path = write(tmp_path / "c.yaml", "lr: 2e-6\nlora-targets: [q_proj, v_proj]\nmax_steps: 3\nbeta_values: [1, 0.5]\n")
    values = read_config_file(path, DistillConfig, "distill")
    # YAML 1.1 reads 2e-6 (no dot) as a string; the float field takes it as a number.
    assert values == {"lr": 2e-6, "lora_targets": ("q_proj", "v_proj"), "max_steps": 3, "beta_values": (1.0, 0.5)}


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'noise_alfa'.*closest valid key is 'noise_alpha'"):
        read_config_file(write(tmp_path / "c.yaml", "noise_alfa: 0.3\n"), DistillConfig, "distill")
    with pytest.raises(ConfigError, match=r"unknown key 'lr_rate'.*'lr'"):
        read_config_file(write(tmp_path / "d.json", '{"lr_rate": 1}'), DistillConfig, "distill")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: two\n", "epochs expects int"),
        ("resume: 1\n", "resume expects bool"),
        ("model: null\n", "model may not be null"),
        ("- lr\n", "must hold a mapping"),
        ("lr: [1\n", "invalid YAML at line"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        read_config_file(write(tmp_path / "c.yaml", text), DistillConfig, "distill")


def test_a_run_config_json_is_read_through_its_config_block(tmp_path):
    cfg = DistillConfig(model="tiny-llava", lr=3e-6, lora_targets=("q_proj",))
    document = {"seedcli_version": "0", "command": "distill", "config": to_dict(cfg), "resolved": {"dtype": "float32"}}
    path = write(tmp_path / "config.json", json.dumps(document))
    assert DistillConfig(**read_config_file(path, DistillConfig, "distill")) == cfg
    with pytest.raises(ConfigError, match="config of `seed distill`, not of `seed merge`"):
        from seedcli.config.merge import MergeConfig

        read_config_file(path, MergeConfig, "merge")


def test_flags_on_the_command_line_override_the_file_and_both_count_as_given(tmp_path, captured):
    invoke, seen = captured
    path = write(tmp_path / "c.yaml", "lr: 1.0e-5\nmax_steps: 7\nmodel: tiny-llava\n")
    result = invoke(["distill", "--config", str(path), "--max-steps", "3", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert (seen["cfg"].lr, seen["cfg"].max_steps, seen["cfg"].model) == (1e-5, 3, "tiny-llava")
    assert seen["given"] == {"lr", "max_steps", "model", "seed"}


def test_print_config_round_trips_and_runs_nothing(tmp_path, captured):
    invoke, seen = captured
    result = invoke(["distill", "--lr", "3e-6", "--lora-targets", "q_proj,v_proj", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "cfg" not in seen  # printed, not run
    printed = yaml.safe_load(result.output)
    expected = DistillConfig(lr=3e-6, lora_targets=("q_proj", "v_proj"))
    assert printed == to_dict(expected)
    path = write(tmp_path / "printed.yaml", result.output)
    assert DistillConfig(**read_config_file(path, DistillConfig, "distill")) == expected
    assert to_yaml(expected) == result.output


def test_config_file_errors_exit_2_through_the_cli(tmp_path, capsys):
    from tests.conftest import run_cli

    path = write(tmp_path / "c.yaml", "lora_rank: 8\n")
    code, out, err = run_cli(["distill", "--config", str(path)], capsys)
    assert code == 2
    assert "unknown key 'lora_rank'" in err and "'lora_r'" in err and out == ""
    code, _, err = run_cli(["evaluate", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "no such file" in err


def test_every_command_takes_config_and_print_config():
    from seedcli.cli.app import _register, app
    from seedcli.cli.options import COMMAND_CONFIGS

    _register()
    import typer

    group = typer.main.get_command(app)
    for name in COMMAND_CONFIGS:
        top, _, sub = name.partition(" ")  # sub-app commands are keyed "detect train"
        command = group.commands[top].commands[sub] if sub else group.commands[name]  # type: ignore[attr-defined]
        options = {opt for param in command.params for opt in param.opts}
        assert {"--config", "--print-config"} <= options, name
