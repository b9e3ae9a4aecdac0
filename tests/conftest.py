"""Test settings: offline, a shared tiny-model cache, and the opt-in gpu tier."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are built once per test session (a few seconds) unless the caller shares a cache.
os.environ.setdefault("SEEDCLI_CACHE", tempfile.mkdtemp(prefix="seedcli-test-cache-"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gpu", action="store_true", default=False, help="run tests marked gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--gpu") or os.environ.get("SEED_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="gpu tier is opt-in: pass --gpu or set SEED_GPU_TESTS=1")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `seed ARGS` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from seedcli.cli.app import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Call the CLI in-process: cli(["env", "--json"]) -> (code, stdout, stderr)."""
    return lambda args: run_cli(list(args), capsys)


@pytest.fixture(scope="session")
def tiny_llava():  # noqa: ANN201
    """The tiny LLaVA model, loaded once per session."""
    from seedcli.models.loading import load

    return load("tiny-llava", device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen():  # noqa: ANN201
    """The tiny Qwen2-VL model, loaded once per session."""
    from seedcli.models.loading import load

    return load("tiny-qwen2-vl", device="cpu")


@pytest.fixture
def red_image():  # noqa: ANN201
    """A small RGB image."""
    from PIL import Image

    return Image.new("RGB", (48, 40), (200, 30, 30))


def image_file(path: Path, color: tuple[int, int, int] = (10, 200, 10)) -> Path:
    """Write a small PNG and return its path."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), color).save(path)
    return path
