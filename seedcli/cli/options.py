"""Generate Typer commands from config dataclasses, so flags, defaults and help exist once."""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from seedcli.config.base import field_types, flag_name
from seedcli.config.files import read_config_file, to_yaml
from seedcli.errors import ConfigError


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parameter(field: dataclasses.Field[Any], tp: Any) -> inspect.Parameter:
    meta = field.metadata
    inner, optional = _unwrap_optional(tp)
    is_tuple = typing.get_origin(inner) is tuple
    default = field.default
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("panel"):
        kwargs["rich_help_panel"] = meta["panel"]
    if is_tuple:
        (elem, *_rest) = typing.get_args(inner) or (str,)
        if meta.get("multiple"):
            annotation: Any = list[elem]  # type: ignore[valid-type]
            default = list(default) if default else None
        else:
            annotation = str | None if optional else str
            default = ",".join(str(v) for v in default) if default is not None else None
            kwargs["help"] += " (comma-separated)"
    else:
        annotation = tp
        if meta.get("choices"):
            # An Enum is the choice type every Typer version understands (newer ones vendor click).
            choice = enum.Enum(f"{field.name}_choice", {c: c for c in meta["choices"]}, type=str)  # type: ignore[misc]
            annotation = choice | None if optional else choice
            default = choice(default) if default is not None else None
    if meta.get("argument"):
        info = typer.Argument(default, **kwargs)
    else:
        names = [flag_name(field)]
        if inner is bool:
            names = [f"{flag_name(field)}/--no-{flag_name(field)[2:]}"]
        if meta.get("short"):
            names.append(meta["short"])
        info = typer.Option(default, *names, **kwargs)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _convert(field: dataclasses.Field[Any], tp: Any, value: Any) -> Any:
    inner, _ = _unwrap_optional(tp)
    if isinstance(value, enum.Enum):
        return value.value
    if typing.get_origin(inner) is not tuple:
        return value
    if value is None:
        # An unset repeatable flag means "none given"; an unset comma flag keeps its None default.
        return () if field.metadata.get("multiple") and field.default is not None else value
    (elem, *_rest) = typing.get_args(inner) or (str,)
    items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
    try:
        return tuple(elem(v) for v in items)
    except ValueError:
        raise ConfigError(
            f"{flag_name(field)} expects comma-separated {elem.__name__} values (got {value!r})."
        ) from None


COMMAND_CONFIGS: dict[str, type] = {}
# Config fields the user set explicitly (flag or environment) for the command now running.
_GIVEN: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("seedcli_given", default=frozenset())
_CTX = "seedcli_ctx"
_CONFIG_FILE = "seedcli_config_file"
_PRINT_CONFIG = "seedcli_print_config"


def _record_given(ctx: typer.Context, names: set[str], from_file: frozenset[str] = frozenset()) -> frozenset[str]:
    """Tell explicitly given fields from defaults through the command-line parser, not by comparing values.

    Keys of a `--config` file count as given too; returns the fields given on the command line itself.
    """
    defaults = {"DEFAULT", "DEFAULT_MAP"}
    explicit = set()
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in defaults:
            explicit.add(name)
    _GIVEN.set(frozenset(explicit | set(from_file)))
    return frozenset(explicit)


def given_fields() -> frozenset[str]:
    """Config fields given explicitly for the running command; empty outside a CLI invocation."""
    return _GIVEN.get()


def config_command(
    app: typer.Typer,
    cfg_cls: type,
    *,
    name: str,
    help: str,
    extra: tuple[inspect.Parameter, ...] = (),
    epilog: str | None = None,
    key: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `body(cfg, **extra)` as command `name` with one flag per field of `cfg_cls`.

    `key` names the command in COMMAND_CONFIGS when it lives in a sub-app ("detect train").
    """
    COMMAND_CONFIGS[key or name] = cfg_cls
    hints = field_types(cfg_cls)
    fields = dataclasses.fields(cfg_cls)
    params = [_parameter(f, hints[f.name]) for f in fields]
    # Positional arguments must come first in the generated signature.
    params.sort(key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))
    names = {f.name for f in fields}

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(body)
        def command(**kwargs: Any) -> Any:
            config_file, print_config = kwargs.pop(_CONFIG_FILE), kwargs.pop(_PRINT_CONFIG)
            from_file = read_config_file(config_file, cfg_cls, name) if config_file is not None else {}
            on_command_line = _record_given(kwargs.pop(_CTX), names, frozenset(from_file))
            values = {f.name: _convert(f, hints[f.name], kwargs[f.name]) for f in fields}
            # Flags given on the command line override the file; the file overrides defaults.
            values.update({key: value for key, value in from_file.items() if key not in on_command_line})
            cfg = cfg_cls(**values)
            if print_config:
                typer.echo(to_yaml(cfg), nl=False)
                return None
            return body(cfg, **{k: v for k, v in kwargs.items() if k not in names})

        ctx = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        own = (*extra, *_config_file_options())
        command.__signature__ = inspect.Signature([*params, *own, ctx])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in (*params, *own, ctx)}
        app.command(name=name, help=help, epilog=epilog)(command)
        return command

    return decorate


def _config_file_options() -> tuple[inspect.Parameter, inspect.Parameter]:
    """`--config FILE` and `--print-config`, shared by every generated command."""
    config_file = typer.Option(
        None,
        "--config",
        help="Read settings from a YAML or JSON file (keys = the config fields; a run's config.json works). "
        "Flags given on the command line override it.",
    )
    print_config = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit.")
    return (
        inspect.Parameter(_CONFIG_FILE, inspect.Parameter.KEYWORD_ONLY, default=config_file, annotation=Path | None),
        inspect.Parameter(_PRINT_CONFIG, inspect.Parameter.KEYWORD_ONLY, default=print_config, annotation=bool),
    )


def json_option() -> inspect.Parameter:
    """The shared `--json` flag: print only JSON on stdout."""
    return inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--json", help="Print only the result as JSON on stdout."),
        annotation=bool,
    )


def config_argv(command: str, cfg: Any, *, as_json: bool = False, given: frozenset[str] = frozenset()) -> list[str]:
    """The CLI arguments that rebuild `cfg`, for relaunched workers.

    Fields at their default are omitted unless named in `given` (the flags the user typed), so a
    worker's parser sees the same explicit flags as the command that started it.
    """
    args = [command]
    positional: list[str] = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if value is None or (value == field.default and field.name not in given):
            continue
        if field.metadata.get("argument"):
            positional.append(str(value))
        elif isinstance(value, bool):
            args.append(flag_name(field) if value else "--no-" + flag_name(field)[2:])
        elif isinstance(value, tuple) and field.metadata.get("multiple"):
            for item in value:
                args += [flag_name(field), str(item)]
        elif isinstance(value, tuple):
            args += [flag_name(field), ",".join(str(v) for v in value)]
        else:
            args += [flag_name(field), str(value)]  # str(float) is exact: the shortest repr that round-trips
    return args + positional + (["--json"] if as_json else [])
