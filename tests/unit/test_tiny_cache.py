"""The tiny-model cache: concurrent builders of one entry build it once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from seedcli.models import tiny


def test_concurrent_builders_wait_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEEDCLI_CACHE", str(tmp_path))
    builds: list[Path] = []

    def build(out: Path) -> None:  # slow enough that both callers find the entry missing
        builds.append(out)
        time.sleep(0.5)
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(tiny.BUILDERS, "tiny-test-entry", build)
    tiny.fingerprint("tiny-test-entry")  # import transformers before the race, not inside it
    paths: list[Path] = []
    start = threading.Barrier(2)  # both callers start together, well inside the first one's build

    def call() -> None:
        start.wait()
        paths.append(tiny.ensure_tiny("tiny-test-entry"))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(builds) == 1
    assert len(paths) == 2 and paths[0] == paths[1] and (paths[0] / "config.json").is_file()
    assert "another process is building it; waiting" in capsys.readouterr().err
    assert not list(tmp_path.glob("tiny/*.partial"))
