"""Render the CLI reference (docs/cli.md) from the config dataclasses and the command help.

`python -m seedcli.cli.reference > docs/cli.md` regenerates it; a test fails when the committed
file no longer matches what `seed <command> --help` documents.
"""

from __future__ import annotations

import dataclasses
import inspect

from seedcli.config.base import field_types, flag_name
from seedcli.errors import exit_code_line


def _default(field: dataclasses.Field) -> str:  # type: ignore[type-arg]
    value = field.default
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(none)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def render() -> str:
    """The whole reference as Markdown."""
    import typer

    from seedcli.cli.app import _register, app
    from seedcli.cli.options import COMMAND_CONFIGS

    _register()
    group = typer.main.get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated from the config dataclasses by `python -m seedcli.cli.reference > docs/cli.md`;",
        "a test checks it against the code. Global options: `--version`, `--debug` (tracebacks), `-h/--help`.",
        f"Exit codes: {exit_code_line()}.",
        "",
    ]
    for name, command in _commands(group):
        lines += [f"## seed {name}", "", inspect.cleandoc(command.help or ""), ""]
        cfg_cls = COMMAND_CONFIGS.get(name)
        if cfg_cls is None:
            continue
        types = field_types(cfg_cls)
        lines += ["| flag | default | meaning |", "|---|---|---|"]
        for field in dataclasses.fields(cfg_cls):
            spelled = field.name.upper() if field.metadata.get("argument") else flag_name(field)
            choices = field.metadata.get("choices")
            meaning = field.metadata.get("help", "").replace("|", "\\|")
            if choices:
                meaning += f" One of: {', '.join(choices)}."
            if field.metadata.get("multiple"):
                meaning += " Repeatable."
            elif typing_is_tuple(types[field.name]):
                meaning += " Comma-separated."
            lines.append(f"| `{spelled}` | `{_default(field)}` | {meaning} |")
        extra = [
            p
            for p in command.params
            if p.name not in {f.name for f in dataclasses.fields(cfg_cls)} and p.name != "help"
        ]
        for param in extra:
            lines.append(f"| `{'/'.join(param.opts)}` | | {(param.help or '').replace('|', chr(92) + '|')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _commands(group: object, prefix: str = "") -> list[tuple[str, object]]:
    """(full name, command) of every command, sub-apps' commands after their group's entry."""
    out: list[tuple[str, object]] = []
    for name in sorted(group.commands):  # type: ignore[attr-defined]
        command = group.commands[name]  # type: ignore[attr-defined]
        full = f"{prefix}{name}"
        out.append((full, command))
        if hasattr(command, "commands"):
            out += _commands(command, prefix=f"{full} ")
    return out


def typing_is_tuple(tp: object) -> bool:
    """Whether a (possibly Optional) annotation is a tuple type."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not tuple else [tp]
    return any(typing.get_origin(a) is tuple for a in args) or typing.get_origin(tp) is tuple


if __name__ == "__main__":
    print(render(), end="")
