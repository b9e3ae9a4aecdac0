"""Checkpoint order, seeds, locks, resume rules and the worker argv: the engine's bookkeeping as pure functions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from seedcli import rundir
from seedcli.config.base import affects_result
from seedcli.config.distill import DistillConfig
from seedcli.core import checkpoint
from seedcli.errors import ConfigError
from seedcli.reporting import NullReporter
from seedcli.seeds import derive_seed


def test_positions_order_rounds_before_steps(tmp_path: Path) -> None:
    for name in ("step-1-900", "step-2-3", "step-2-10"):
        (tmp_path / name).mkdir()
        (tmp_path / name / checkpoint.STATE).write_text("{}")
    assert checkpoint.position(checkpoint.newest(tmp_path)) == (2, 10)
    assert checkpoint.position(tmp_path / "step-7") == (1, 7)
    assert checkpoint.position(tmp_path / ".step-7.x.partial") is None
    assert checkpoint.name(2, 10, rounds=2) == "step-2-10" and checkpoint.name(1, 10, rounds=1) == "step-10"


def test_derive_seed_is_sha256_of_the_parts() -> None:
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"noise:0:1:2:").digest()[:8], "little")
    assert derive_seed("noise", 0, 1, 2) == expected
    assert derive_seed("noise", 0, 12) != derive_seed("noise", 0, 1, 2)  # separators keep parts apart
    assert derive_seed(7, "tokens", b"\x01\x02") == int.from_bytes(
        hashlib.sha256(b"7:tokens:\x01\x02").digest()[:8], "little"
    )


def test_memory_only_fields_may_change_on_resume_and_the_rest_do_not() -> None:
    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    for name in (
        "loss_chunk",
        "gradient_checkpointing",
        "teacher_batching",
        "attn_implementation",
        "save_every",
        "log_every",
    ):
        assert not affects_result(fields[name]), name
    for name in ("lr", "seed", "temperature", "model", "data", "max_steps", "noise_alpha", "lora_r", "method"):
        assert affects_result(fields[name]), name


def _saved_run(tmp_path: Path, **settings) -> Path:
    cfg = DistillConfig(out=str(tmp_path), device="cpu", **settings)
    doc = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}}
    doc["resolved"] = {"global_batch": cfg.batch_size * cfg.grad_accum, "world_size": 1}
    (tmp_path / rundir.CONFIG).write_text(json.dumps(doc))
    return tmp_path


def test_resume_takes_config_json_unless_a_flag_is_given(tmp_path: Path) -> None:
    run = _saved_run(tmp_path, save_every=7, log_every=3, lr=1e-4, loss_chunk=None)
    plain = rundir.resumed_config(
        DistillConfig(out=str(run), resume=True), run, frozenset({"out", "resume"}), 1, NullReporter()
    )
    assert (plain.save_every, plain.log_every, plain.lr) == (7, 3, 1e-4)
    asked = DistillConfig(out=str(run), resume=True, save_every=500, loss_chunk=64)
    changed = rundir.resumed_config(
        asked, run, frozenset({"out", "resume", "save_every", "loss_chunk"}), 1, NullReporter()
    )
    assert (changed.save_every, changed.loss_chunk, changed.log_every) == (500, 64, 3)  # 500 is the default, but typed
    with pytest.raises(ConfigError, match="--lr"):
        rundir.resumed_config(DistillConfig(out=str(run), resume=True), run, frozenset({"lr"}), 1, NullReporter())


def test_workers_see_the_same_explicit_flags() -> None:
    from seedcli.cli.options import config_argv

    cfg = DistillConfig(out="r", resume=True, save_every=500, lr=3e-6)
    argv = config_argv("distill", cfg, given=frozenset({"out", "resume", "save_every"}))
    assert argv[argv.index("--save-every") + 1] == "500"
    assert "--lr" in argv and "--log-every" not in argv
    assert "--save-every" not in config_argv("distill", cfg)


def test_a_held_lock_names_its_pid_and_a_released_one_is_free(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys, time; from seedcli.rundir import Lock; Lock(sys.argv[1]); print('held', flush=True); "
        "time.sleep(60)"
    )
    root = str(Path(__file__).resolve().parents[2])
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another seed process \\(pid {holder.pid}\\)"):
            rundir.Lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with rundir.Lock(tmp_path) as lock:
        assert (tmp_path / rundir.LOCK).read_text().strip() == str(os.getpid())
        assert lock.path == tmp_path / rundir.LOCK


def test_safetensors_problems_are_found_without_loading(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4, 4)}, str(path))
    assert rundir.safetensors_problem(path) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    assert "truncated" in rundir.safetensors_problem(path)
    path.write_bytes(b"")
    assert rundir.safetensors_problem(path) == "empty"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!garbage!")
    assert rundir.safetensors_problem(path) == "unreadable header"


def test_truncating_metrics_also_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / rundir.METRICS
    path.write_text('{"round": 1, "step": 1}\n{"round": 1, "step": 2}\n{"round": 1, "st')
    rundir.truncate_metrics(tmp_path, 1, 2)
    assert path.read_text() == '{"round": 1, "step": 1}\n{"round": 1, "step": 2}\n'
    rundir.truncate_metrics(tmp_path, 1, 0)
    assert path.read_text() == ""


def test_a_damaged_adapter_is_named_as_corrupt(tmp_path: Path) -> None:
    from seedcli.errors import DataError

    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(b"\x08")
    with pytest.raises(DataError, match="corrupt") as caught:
        rundir.check_adapter(tmp_path)
    assert str(weights) in str(caught.value)
