"""Config files: `--config FILE` (YAML or JSON) with the same keys as a command's config fields.

A file holds a mapping of field names to values (`lr: 2.0e-6`, `lora_targets: [q_proj, v_proj]`);
`noise-alpha` and `noise_alpha` both name the field `noise_alpha`. A run directory's config.json is
accepted as it is: its `config` block is read and its record of what the run found (`resolved`,
`seedcli_version`, `command`) is ignored, because those are derived again by the new run.
Values are checked against the field types here; choices and bounds are checked by the config
class itself, exactly as for flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from seedcli.config.base import field_types, to_dict
from seedcli.errors import ConfigError

# Keys of a run's config.json around its `config` block: a record of the run, not settings.
RUN_RECORD_KEYS = ("seedcli_version", "command", "config", "resolved")


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config {path}: invalid JSON at line {exc.lineno} column {exc.colno}.") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json file."
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path}: invalid YAML{where}.") from None


def read_config_file(path: Path | str, cls: type, command: str) -> dict[str, Any]:
    """The field values a config file sets for `cls` (typed, keys checked); ConfigError names any bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file.")
    data = _parse(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {path}: must hold a mapping of settings (key: value), not a {type(data).__name__}."
        )
    if isinstance(data.get("config"), dict) and set(data) <= set(RUN_RECORD_KEYS):
        recorded = data.get("command")
        if recorded is not None and recorded != command:
            raise ConfigError(f"--config {path}: this is the config of `seed {recorded}`, not of `seed {command}`.")
        data = data["config"]
    names = [f.name for f in dataclasses.fields(cls)]
    types = field_types(cls)
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in names:
            closest = _closest(key, names)
            raise ConfigError(
                f"--config {path}: unknown key {raw_key!r} for `seed {command}`; the closest valid key is {closest!r}."
            )
        values[key] = _typed(value, types[key], f"--config {path}: {key}")
    return values


def _closest(key: str, names: list[str]) -> str:
    """The valid key most like `key`: difflib's best, else one sharing the first word, else difflib at any score."""
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return close[0]
    head = key.split("_")[0]
    same_head = [name for name in names if name.split("_")[0] == head]
    return (
        difflib.get_close_matches(key, same_head, n=1, cutoff=0.0)
        or difflib.get_close_matches(key, names, n=1, cutoff=0.0)
    )[0]


def _typed(value: Any, tp: Any, where: str) -> Any:
    """`value` as the field type `tp` wants it; a ConfigError naming the key when it cannot be."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
    inner = args[0] if optional else tp
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} may not be null.")
    if typing.get_origin(inner) is tuple:
        elem = (typing.get_args(inner) or (str,))[0]
        items = value if isinstance(value, list) else [value]
        return tuple(_scalar(item, elem, where) for item in items)
    return _scalar(value, inner, where)


def _scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 2e-6 (no dot) as a string
            except ValueError:
                pass
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where} expects {tp.__name__}, got {value!r}.")


def to_yaml(cfg: Any) -> str:
    """The config as YAML with the field names as keys: a valid `--config` file."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
