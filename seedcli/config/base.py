"""Config fields: one place for a flag's name, type, default, help and validation.

Each command's config is a frozen dataclass whose fields are declared with `option(...)`. The CLI
generates its flags from these fields (seedcli.cli.options), so a default or help text exists once.
`__post_init__` calls `check(self)`, which validates choices and bounds and names the bad flag. Every
float must be finite (NaN and infinity are refused for all fields, by one rule here).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from seedcli.errors import ConfigError


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    multiple: bool = False,
    argument: bool = False,
    short: str | None = None,
    panel: str | None = None,
    affects_result: bool = True,
) -> Any:
    """Declare a config field with its CLI metadata.

    `flag` overrides the generated `--field-name`; `min`/`max` bound numbers (inclusive unless
    `min_exclusive`/`max_exclusive`); `multiple` makes a tuple field a repeatable flag (otherwise
    tuples are comma-separated); `argument` makes it positional; `panel` groups flags in `--help`.
    `affects_result=False` marks a field that changes how a run is carried out (memory, logging,
    checkpoints, processes) but not what it computes: `--resume` accepts a new value.
    """
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "multiple": multiple,
        "argument": argument,
        "short": short,
        "panel": panel,
        "affects_result": affects_result,
    }
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field[Any]) -> str:
    """The CLI spelling of a field (`--noise-alpha`)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def affects_result(field: dataclasses.Field[Any]) -> bool:
    """Whether a field changes what a run computes (False: it may change when resuming)."""
    return bool(field.metadata.get("affects_result", True))


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass."""
    return typing.get_type_hints(cls)


def _bad(field: dataclasses.Field[Any], message: str) -> ConfigError:
    return ConfigError(f"{flag_name(field)} {message}")


def check(cfg: Any) -> None:
    """Validate choices and numeric bounds declared on the fields of `cfg`."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        meta = field.metadata
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if item is None:
                continue
            choices = meta.get("choices")
            if choices and item not in choices:
                raise _bad(field, f"must be one of {', '.join(choices)} (got {item!r}).")
            if isinstance(item, float) and not math.isfinite(item):
                # NaN passes every comparison and infinity trains to garbage: refuse both for all floats.
                raise _bad(field, f"must be a finite number (got {item}).")
            low, high = meta.get("min"), meta.get("max")
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if low is not None and (item <= low if meta.get("min_exclusive") else item < low):
                    op = ">" if meta.get("min_exclusive") else ">="
                    raise _bad(field, f"must be {op} {low} (got {item}).")
                if high is not None and (item >= high if meta.get("max_exclusive") else item > high):
                    op = "<" if meta.get("max_exclusive") else "<="
                    raise _bad(field, f"must be {op} {high} (got {item}).")


def require(condition: bool, flag: str, message: str) -> None:
    """Raise a ConfigError naming `flag` unless `condition` holds (cross-field checks)."""
    if not condition:
        raise ConfigError(f"{flag} {message}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists, paths strings)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (int, float, str, bool, list, dict)):
            value = str(value)
        out[field.name] = value
    return out


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config from `to_dict` output; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"config has unknown fields {unknown} for {cls.__name__}; was it written by a newer seedcli?")
    # to_dict writes tuples as JSON lists; every list-valued field is a tuple field.
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


DIST_PANEL = "Distributed"


def gpus_option() -> Any:
    """`--gpus`: one process per GPU on this node (shared by every command that runs data-parallel)."""
    return option(
        None,
        "Processes on this node, one GPU each; relaunches itself through torch's elastic launcher "
        "(or joins torchrun/SLURM when started by one).",
        min=1,
        panel=DIST_PANEL,
        affects_result=False,
    )


def nproc_option() -> Any:
    """`--nproc`: processes on any device (gloo on CPU)."""
    return option(
        None,
        "Processes on this node on any device: --device cpu --nproc 2 runs the same code on gloo.",
        min=1,
        panel=DIST_PANEL,
        affects_result=False,
    )


def nccl_timeout_option() -> Any:
    """`--nccl-timeout-s`: how long a collective waits for the slowest process."""
    return option(
        1800.0,
        "Seconds a collective waits for the slowest process before the run fails (NCCL and gloo).",
        min=0.0,
        min_exclusive=True,
        panel=DIST_PANEL,
        affects_result=False,
    )


def check_processes(cfg: Any) -> None:
    """--gpus and --nproc agree, and --gpus is not asked of a CPU run."""
    require(
        cfg.gpus is None or cfg.nproc is None or cfg.gpus == cfg.nproc,
        "--gpus",
        f"{cfg.gpus} and --nproc {cfg.nproc} disagree; give one of them.",
    )
    require(
        cfg.gpus is None or cfg.device != "cpu",
        "--gpus",
        "runs one process per GPU; with --device cpu use --nproc instead.",
    )
