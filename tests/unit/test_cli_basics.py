"""The CLI shell: commands, help, version, config/flag agreement, no heavy imports, exit codes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from seedcli import __version__
from seedcli.config.base import flag_name

COMMANDS = ("prepare", "distill", "evaluate", "merge", "demo", "env", "quickstart")


def _click_commands() -> dict[str, click.Command]:
    from seedcli.cli.app import _register, app

    _register()
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_help_lists_the_seven_commands(cli) -> None:
    code, out, _ = cli(["--help"])
    assert code == 0
    for name in COMMANDS:
        assert name in out
    assert set(COMMANDS) <= set(_click_commands())


def test_version(cli) -> None:
    code, out, _ = cli(["--version"])
    assert code == 0 and out.strip() == f"seedcli {__version__}"


def test_every_config_field_is_a_cli_option_with_the_same_default() -> None:
    from seedcli.cli.options import COMMAND_CONFIGS

    commands = _click_commands()
    assert COMMAND_CONFIGS, "no command is generated from a config"
    for name, cfg_cls in COMMAND_CONFIGS.items():
        group, _, sub = name.partition(" ")  # sub-app commands are keyed "detect train"
        command = commands[group].commands[sub] if sub else commands[group]
        params = {p.name: p for p in command.params}
        for field in dataclasses.fields(cfg_cls):
            assert field.name in params, f"{name}: config field {field.name} has no CLI option"
            param = params[field.name]
            if not field.metadata.get("argument"):
                assert flag_name(field) in param.opts, f"{name}: {field.name} is spelled {param.opts}"
            default = field.default
            expected = list(default) if isinstance(default, tuple) and field.metadata.get("multiple") else default
            if isinstance(default, tuple) and not field.metadata.get("multiple"):
                expected = ",".join(str(v) for v in default)
            if expected == [] or expected is None:
                assert param.default in (None, [], ()), f"{name}: {field.name} default {param.default!r}"
            else:
                actual = getattr(param.default, "value", param.default)  # choices are Enums
                assert actual == expected, f"{name}: {field.name} default {actual!r} != {expected!r}"
            assert (param.help or "").strip(), f"{name}: {field.name} has no help"


def test_importing_the_cli_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "from seedcli.cli import app\n"
        "app._register()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'numpy', 'PIL') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the CLI loaded: {out}"


def test_env_json_has_the_bug_report_fields(cli) -> None:
    code, out, _ = cli(["env", "--json"])
    assert code == 0
    report = json.loads(out)
    for key in ("torch", "transformers", "peft", "bitsandbytes"):
        assert key in report["packages"]
    assert report["python"].count(".") == 2
    assert "offline mode set" in report["hub"]
    assert "cuda_available" in report["devices"]


def test_env_table(cli) -> None:
    code, out, err = cli(["env"])
    assert code == 0 and "transformers" in err and "hub" in err
    assert out == ""  # tables go to stderr like every command's; --json prints the report on stdout


def test_bad_flag_value_is_one_red_line_and_exit_2(cli) -> None:
    code, out, err = cli(["env", "--hub-timeout-s", "-1"])
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--hub-timeout-s" in lines[0]


def test_unknown_flag_is_a_usage_error(cli) -> None:
    code, _, err = cli(["env", "--no-such-flag"])
    assert code == 2 and "no-such-flag" in err


@pytest.mark.parametrize(
    ("exc", "code"),
    [("ConfigError", 2), ("DataError", 3), ("ModelError", 4), ("StorageError", 5), ("SeedError", 1)],
)
def test_error_classes_map_to_documented_exit_codes(exc: str, code: int, capsys, monkeypatch) -> None:
    import seedcli.errors as errors
    from seedcli.cli import app as app_module

    def boom(*args, **kwargs):
        raise getattr(errors, exc)("something specific went wrong; do X.")

    monkeypatch.setattr(app_module, "app", boom)
    monkeypatch.setattr(app_module, "_register", lambda: None)
    with pytest.raises(SystemExit) as info:
        app_module.main([])
    assert info.value.code == code
    err = capsys.readouterr().err
    assert "something specific went wrong" in err and "Traceback" not in err


def test_error_text_with_brackets_is_printed_verbatim(capsys, monkeypatch) -> None:
    from seedcli.cli import app as app_module
    from seedcli.errors import DataError

    def boom(*args, **kwargs):
        raise DataError("gloo failed at [/__w/pair.cc:553] reading [bold]x[/bold]")

    monkeypatch.setattr(app_module, "app", boom)
    monkeypatch.setattr(app_module, "_register", lambda: None)
    with pytest.raises(SystemExit) as info:
        app_module.main([])
    assert info.value.code == 3
    assert "[/__w/pair.cc:553] reading [bold]x[/bold]" in capsys.readouterr().err


def test_docs_cli_reference_matches_the_code() -> None:
    from pathlib import Path

    from seedcli.cli.reference import render

    committed = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/cli.md is stale: run `python -m seedcli.cli.reference > docs/cli.md`"


def test_every_command_has_a_generated_config() -> None:
    from seedcli.cli.options import COMMAND_CONFIGS

    _click_commands()
    assert set(COMMANDS) <= set(COMMAND_CONFIGS)


def test_given_fields_come_from_the_parser_not_from_values(monkeypatch):
    """A flag passed at its default value counts as given; an omitted flag does not."""
    import seedcli.cli.distill  # noqa: F401  (registers the command)
    import seedcli.core.distill as core
    from seedcli.cli import options
    from seedcli.cli.app import app

    seen: dict[str, frozenset[str]] = {}

    def fake(cfg, reporter, **kwargs):
        seen["given"] = options.given_fields()
        return {"run_dir": "x"}

    monkeypatch.setattr(core, "distill", fake)
    monkeypatch.setattr(seedcli.cli.distill, "_after_training", lambda *args: None)
    result = CliRunner().invoke(app, ["distill", "--save-every", "500", "--lr", "3e-6", "--no-gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    assert seen["given"] == {"save_every", "lr", "gradient_checkpointing"}


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device", "/data/out/model.safetensors"),
        OSError(30, "Read-only file system", "/mnt/ro/out"),
        NotADirectoryError(20, "Not a directory", "/tmp/file/out"),
        RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'),
    ],
)
def test_file_system_failures_are_one_line_exit_5(exc: Exception, capsys, monkeypatch) -> None:
    from seedcli.cli import app as app_module

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(app_module, "app", boom)
    monkeypatch.setattr(app_module, "_register", lambda: None)
    with pytest.raises(SystemExit) as info:
        app_module.main([])
    assert info.value.code == 5
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err


def test_exit_codes_are_documented_once() -> None:
    from seedcli.errors import EXIT_CODES, exit_code_line

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert f"{code} " in exit_code_line()
        assert f" {code} " in readme.replace("\n", " ")


def test_tables_are_at_least_as_wide_as_their_title(capsys: pytest.CaptureFixture[str]) -> None:
    from seedcli.cli.render import print_table

    title = "dev scores after each stage (single pass)"
    print_table(title, [["sft", "48.1"]], ["stage", "F1"])
    assert title in capsys.readouterr().err  # on one line, not wrapped to the narrow columns
