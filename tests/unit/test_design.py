"""Design rules checked over the source: layering of imports, and choices that exist once."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

import seedcli
from seedcli.core import choices

PACKAGE = Path(seedcli.__file__).parent
CLI_ONLY = ("typer", "rich", "click")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                names.add(".".join([*parts, node.module] if node.module else parts))
            else:
                names.add(node.module or "")
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def test_core_imports_no_cli_library() -> None:
    core = sorted((PACKAGE / "core").rglob("*.py"))
    assert core, "seedcli/core not found"
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if _top(n) in CLI_ONLY) for path in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_does_not_import_the_cli_package() -> None:
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        assert not [n for n in _imports(path) if n == "seedcli.cli" or n.startswith("seedcli.cli.")], path


def test_losses_import_only_torch() -> None:
    # Pure tensor functions: torch, the standard library, and the torch-free choice constants.
    allowed_seedcli = {"seedcli.core.choices"}
    imported = _imports(PACKAGE / "core" / "losses.py")
    third_party = {n for n in imported if _top(n) not in sys.stdlib_module_names and _top(n) != "__future__"}
    assert {n for n in third_party if _top(n) != "torch"} <= allowed_seedcli, third_party


def test_choice_constants_import_nothing() -> None:
    assert _imports(PACKAGE / "core" / "choices.py") <= {"__future__"}


def _command_configs() -> dict[str, type]:
    from seedcli.cli.app import _register
    from seedcli.cli.options import COMMAND_CONFIGS

    _register()
    return dict(COMMAND_CONFIGS)


def _core_constants() -> dict[str, tuple[str, ...]]:
    """The tuple each choice field must offer, taken from the modules that act on the value."""
    from seedcli.core import losses, purify, teacher_cache
    from seedcli.models import loading

    return {
        "dtype": loading.DTYPES,
        "device": loading.DEVICES,
        "quantization": loading.QUANTIZATION,
        "attn_implementation": choices.ATTN_IMPLEMENTATIONS,
        "divergence": losses.DIVERGENCE_KINDS,
        "purify_space": purify.PURIFY_SPACES,
        "token_confidence": purify.CONFIDENCE_KINDS,
        "teacher_cache": ("off", *teacher_cache.MODES),
    }


# Choice fields whose tuple deliberately differs from the core constant of the same name.
SPECIAL = {("merge", "dtype"): ("base", *choices.WEIGHT_DTYPES)}


def test_config_choices_equal_core_constants() -> None:
    expected = _core_constants()
    checked = set()
    for command, cfg_cls in sorted(_command_configs().items()):
        for field in dataclasses.fields(cfg_cls):
            offered = field.metadata.get("choices")
            if not offered:
                continue
            want = SPECIAL.get((command, field.name), expected.get(field.name))
            if want is None:
                continue  # a choice only the config and its command know (e.g. --method)
            assert tuple(offered) == tuple(want), f"seed {command} --{field.name}: {offered} != {want}"
            checked.add(field.name)
    # The fields the review found copied by hand are among those checked.
    assert set(expected) <= checked


@pytest.mark.parametrize("name", ["DTYPES", "DEVICES", "QUANTIZATION"])
def test_loading_reexports_the_constants(name: str) -> None:
    from seedcli.models import loading

    assert getattr(loading, name) is getattr(choices, name)


def test_nothing_points_users_to_files_outside_the_repository() -> None:
    """Code, docs and tests refer to docs/ for the protocols, never to the team's private notes."""
    root = PACKAGE.parent
    banned = ("PROTOCOLS" + ".md", "../" + "shared")
    paths = [root / "README.md", *root.glob("seedcli/**/*.py"), *root.glob("docs/**/*.md")]
    paths += [*root.glob("tests/**/*.py"), *root.glob("benchmarks/**/*.py")]
    found = [
        f"{path.relative_to(root)}: {word}"
        for path in paths
        for word in banned
        if word in path.read_text(encoding="utf-8")
    ]
    assert not found, found
