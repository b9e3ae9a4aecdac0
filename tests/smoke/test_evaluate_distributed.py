"""`seed evaluate --nproc 2`: questions sharded over processes, results identical to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedcli.distributed import free_port
from tests.smoke.test_evaluate_cli import FAST, adapter_run, data_dir  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.smoke, pytest.mark.slow]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_sharded_evaluation_equals_a_single_process(cli, data_dir: Path, adapter_run: Path, tmp_path: Path) -> None:  # noqa: F811
    args = [
        "evaluate",
        "--adapter",
        str(adapter_run),
        "--data",
        str(data_dir),
        "--pope",
        "all",
        "--chair",
        "--device",
        "cpu",
        *FAST,
    ]
    single = tmp_path / "single"
    code, _, err = cli([*args, "--out", str(single), "--json"])
    assert code == 0, err
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seedcli",
            *args,
            "--nproc",
            "2",
            "--master-port",
            str(free_port()),
            "--out",
            str(sharded),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # only rank 0 prints, and only JSON
    assert printed["out"] == str(sharded)
    a = json.loads((single / "results.json").read_text())
    b = json.loads((sharded / "results.json").read_text())
    # Everything but what names this particular run (where, when, how it was launched) is equal.
    per_run = {"created", "out", "samples", "config", "environment"}
    assert {k: v for k, v in b.items() if k not in per_run} == {k: v for k, v in a.items() if k not in per_run}
    assert b["ok"] and b["pope"]["base"] and b["comparisons"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(_rows(sharded)) == strip(_rows(single))  # same rows, same order
    assert not list(sharded.glob("samples.rank-*.jsonl"))


def test_gpus_and_nproc_must_agree(cli) -> None:
    code, _, err = cli(["evaluate", "--pope", "all", "--gpus", "2", "--nproc", "3"])
    assert code == 2 and "--gpus" in err
    code, _, err = cli(["evaluate", "--pope", "all", "--gpus", "2", "--device", "cpu"])
    assert code == 2 and "--nproc" in err
