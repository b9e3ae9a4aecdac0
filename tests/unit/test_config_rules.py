"""The config rules that hold for every field of every command: finite floats, exclusive bounds."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from seedcli.config.base import check, field_types, flag_name, option
from seedcli.errors import ConfigError


def _configs() -> dict[str, type]:
    from seedcli.cli.app import _register
    from seedcli.cli.options import COMMAND_CONFIGS

    _register()
    return dict(COMMAND_CONFIGS)


def _float_fields() -> list[tuple[str, str]]:
    found = []
    for command, cls in sorted(_configs().items()):
        for name, tp in field_types(cls).items():
            args = typing.get_args(tp)
            if tp is float or float in args or any(float in typing.get_args(a) for a in args):
                found.append((command, name))
    return found


def test_every_command_has_float_fields_to_check() -> None:
    assert {command for command, _ in _float_fields()} >= {"distill", "evaluate", "env", "quickstart", "prepare"}


def _at_defaults(cls: type, **values: object) -> object:
    """An instance holding the field defaults and `values`, built without __post_init__ (no cross-field rules)."""
    cfg = object.__new__(cls)
    for field in dataclasses.fields(cls):
        object.__setattr__(cfg, field.name, values.get(field.name, field.default))
    return cfg


@pytest.mark.parametrize(("command", "name"), _float_fields())
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_non_finite(command: str, name: str, bad: float) -> None:
    cls = _configs()[command]
    check(_at_defaults(cls))  # the defaults pass the field rules
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = (bad,) * max(1, len(field.default)) if isinstance(field.default, tuple) else bad
    with pytest.raises(ConfigError) as info:
        check(_at_defaults(cls, **{name: value}))
    assert str(info.value).startswith(flag_name(field))
    assert "finite" in str(info.value) or "must be" in str(info.value)


def test_configs_refuse_non_finite_through_their_constructor() -> None:
    from seedcli.config.distill import DistillConfig
    from seedcli.config.env import EnvConfig

    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        DistillConfig(lr=math.inf)
    with pytest.raises(ConfigError, match="--hub-timeout-s must be a finite number"):
        EnvConfig(hub_timeout_s=math.nan)


@dataclasses.dataclass(frozen=True)
class _Bounded:
    open_interval: float = option(0.5, "in (0, 1)", min=0.0, min_exclusive=True, max=1.0, max_exclusive=True)
    half_open: float = option(0.5, "in (0, 1]", min=0.0, min_exclusive=True, max=1.0)

    def __post_init__(self) -> None:
        check(self)


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("open_interval", 0.0, False),
        ("open_interval", 1.0, False),
        ("open_interval", 1e-9, True),
        ("open_interval", 1 - 1e-9, True),
        ("half_open", 0.0, False),
        ("half_open", 1.0, True),
        ("half_open", 1.0 + 1e-9, False),
    ],
)
def test_exclusive_bounds(field: str, value: float, ok: bool) -> None:
    if ok:
        _Bounded(**{field: value})
        return
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be"):
        _Bounded(**{field: value})


def test_jsd_beta_and_plausibility_gamma_match_the_maths() -> None:
    from seedcli.config.distill import DistillConfig

    for bad in ({"jsd_beta": 0.0}, {"jsd_beta": 1.0}, {"plausibility_gamma": 0.0}):
        with pytest.raises(ConfigError):
            DistillConfig(**bad)
    DistillConfig(jsd_beta=0.01, plausibility_gamma=1.0)
