"""Reliability of `seed distill` under crashes, concurrent use and bad inputs (each test pins a bug fixed)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seedcli import rundir
from seedcli.config.distill import DistillConfig
from seedcli.core import checkpoint
from seedcli.core import distill as engine
from seedcli.errors import ConfigError, DataError, Interrupted, StorageError
from seedcli.reporting import NullReporter
from tests.smoke.test_distill import adapter_tensors, config, metrics, write_train_data

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("round", "step", "loss", "kl", "ce", "beta", "confidence", "grad_norm", "tokens", "skipped_steps")

# Trains `cfg` in a fresh process that kills itself with SIGKILL (no handler runs) when (round, step)
# is logged, or when the checkpoint save of that position has written its adapter ("save").
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from seedcli.config.base import from_dict
    from seedcli.config.distill import DistillConfig
    from seedcli.core import checkpoint, distill as engine
    from seedcli.reporting import NullReporter

    cfg = from_dict(DistillConfig, json.loads(sys.argv[1]))
    at, moment = tuple(json.loads(sys.argv[2])), sys.argv[3]

    class Killer(NullReporter):
        def log(self, fields):
            if moment == "log" and (fields["round"], fields["step"]) == at:
                os.kill(os.getpid(), signal.SIGKILL)

    if moment == "save":  # die inside the staged directory, after the adapter, before the optimizer
        import safetensors.torch
        real = safetensors.torch.save_file
        def dying(tensors, path, *args, **kwargs):
            staged = os.path.basename(os.path.dirname(path))
            name = f"step-{at[1]}" if cfg.rounds == 1 else f"step-{at[0]}-{at[1]}"
            if path.endswith("optimizer.safetensors") and staged.startswith(f".{name}."):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(tensors, path, *args, **kwargs)
        safetensors.torch.save_file = dying
    engine.distill(cfg, Killer())
    """
)


# Another process that holds a run directory's lock the way seed does: flock on RUN/.lock, its PID inside.
HOLDER = (
    "import fcntl, os, sys, time; fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
    "time.sleep(600)"
)


def kill_during(cfg: DistillConfig, at: tuple[int, int], moment: str = "log") -> None:
    """Run `cfg` in a subprocess that SIGKILLs itself at `at`; asserts that it really died that way."""
    from seedcli.config.base import to_dict

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", KILLER, json.dumps(to_dict(cfg)), json.dumps(list(at)), moment]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def same_metrics(a: Path, b: Path) -> None:
    ra, rb = metrics(a), metrics(b)
    assert [(r["round"], r["step"]) for r in ra] == [(r["round"], r["step"]) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in KEYS:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["round"], x["step"], key)


def same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_train_data(tmp_path_factory.mktemp("data"))


# --- crash and resume -------------------------------------------------------------------------------------------


def test_kill_before_the_first_checkpoint_then_resume_logs_each_step_once(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "straight", max_steps=4, save_every=100)
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "broken"))
    kill_during(broken, (1, 2))
    assert [r["step"] for r in metrics(tmp_path / "broken")] == [1, 2]
    engine.distill(replace(broken, resume=True), NullReporter())
    assert [r["step"] for r in metrics(tmp_path / "broken")] == [1, 2, 3, 4]
    same_metrics(tmp_path / "broken", tmp_path / "straight")
    same_adapter(tmp_path / "broken", tmp_path / "straight")


def test_plain_resume_keeps_the_runs_own_settings_and_metrics(data_dir: Path, tmp_path: Path, cli) -> None:
    """kill -9 after step 3 of 6, then `seed distill --out RUN --resume` without the original flags."""
    cfg = config(data_dir, tmp_path / "straight", max_steps=6, save_every=1, keep_checkpoints=1)
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "broken"))
    kill_during(broken, (1, 3))
    code, out, err = cli(["distill", "--out", str(tmp_path / "broken"), "--resume"])
    assert code == 0, err
    saved = json.loads((tmp_path / "broken" / "config.json").read_text())["config"]
    assert (saved["save_every"], saved["log_every"], saved["keep_checkpoints"]) == (1, 1, 1)
    assert [r["step"] for r in metrics(tmp_path / "broken")] == [1, 2, 3, 4, 5, 6]
    same_metrics(tmp_path / "broken", tmp_path / "straight")
    same_adapter(tmp_path / "broken", tmp_path / "straight")


def test_kill_during_a_checkpoint_save_then_resume_cleans_the_staging(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "straight", max_steps=4, save_every=1)
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "broken"))
    kill_during(broken, (1, 2), moment="save")
    checkpoints = tmp_path / "broken" / "checkpoints"
    assert [p.name.split(".")[1] for p in checkpoints.glob(".step-*.partial")] == ["step-2"]
    engine.distill(replace(broken, resume=True), NullReporter())
    assert not list(checkpoints.glob(".step-*")), "staging debris must be removed at the next start"
    same_metrics(tmp_path / "broken", tmp_path / "straight")
    same_adapter(tmp_path / "broken", tmp_path / "straight")


class _InterruptAt(NullReporter):
    def __init__(self, at: tuple[int, int]) -> None:
        self.at = at

    def log(self, fields) -> None:
        if (fields["round"], fields["step"]) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("at", [(1, 3), (2, 3)])
def test_two_round_run_interrupted_anywhere_resumes_to_the_same_adapters(data_dir: Path, tmp_path: Path, at) -> None:
    cfg = config(
        data_dir, tmp_path / "straight", rounds=2, max_steps=4, save_every=1, keep_checkpoints=2, lora_dropout=0.1
    )
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "broken"))
    with pytest.raises(Interrupted):
        engine.distill(broken, _InterruptAt(at))
    newest = checkpoint.newest(tmp_path / "broken" / "checkpoints")
    assert newest is not None and newest.name == "step-{}-{}".format(*at), (
        "the checkpoint saved on SIGINT must be newest"
    )
    engine.distill(replace(broken, resume=True), NullReporter())
    same_metrics(tmp_path / "broken", tmp_path / "straight")
    for r in (1, 2):
        a, b = (rundir.round_adapter(tmp_path / run, r) / "adapter_model.safetensors" for run in ("broken", "straight"))
        assert a.read_bytes() == b.read_bytes(), f"round {r} adapter differs"
    same_adapter(tmp_path / "broken", tmp_path / "straight")


def test_two_round_kill_9_in_round_2_resumes_bit_for_bit(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "straight", rounds=2, max_steps=3, save_every=1, lora_dropout=0.1)
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "broken"))
    kill_during(broken, (2, 2))
    engine.distill(replace(broken, resume=True), NullReporter())
    same_metrics(tmp_path / "broken", tmp_path / "straight")
    same_adapter(tmp_path / "broken", tmp_path / "straight")


# --- resume rules ---------------------------------------------------------------------------------------------------


def test_resume_accepts_memory_only_flags(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "r", max_steps=3)
    with pytest.raises(Interrupted):
        engine.distill(cfg, _InterruptAt((1, 1)))
    with pytest.raises(ConfigError, match="--lr"):  # a result-changing flag given explicitly, even at its default
        engine.distill(DistillConfig(out=str(tmp_path / "r"), resume=True), NullReporter(), given=frozenset({"lr"}))
    memory = {
        "loss_chunk": 3,
        "gradient_checkpointing": True,
        "teacher_batching": "separate",
        "attn_implementation": "eager",
    }
    engine.distill(replace(cfg, resume=True, **memory), NullReporter(), given=frozenset({"out", "resume", *memory}))
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert {k: saved[k] for k in memory} == memory


def test_a_second_process_cannot_resume_a_live_run(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "r", max_steps=2)
    with pytest.raises(Interrupted):
        engine.distill(cfg, _InterruptAt((1, 1)))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            cfg.out,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            engine.distill(replace(cfg, resume=True), NullReporter())
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            engine.distill(replace(cfg, overwrite=True), NullReporter())
    finally:
        holder.kill()
        holder.wait()
    engine.distill(replace(cfg, resume=True), NullReporter())  # the lock died with its process
    assert (tmp_path / "r" / "summary.json").is_file()


# --- failed starts, damaged files, bad images ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [(["--max-length", "8"], 3, "first batch"), (["--lora-targets", "nope_proj"], 2, "--lora-targets")],
)
def test_a_start_that_cannot_work_fails_cleanly_and_leaves_nothing(
    data_dir: Path, tmp_path: Path, cli, args, code, needle
) -> None:
    run = tmp_path / "run"
    base = [
        "distill",
        "--model",
        "tiny-llava",
        "--data",
        str(data_dir),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--max-steps",
        "1",
    ]
    got, out, err = cli([*base, *args])
    assert got == code and needle in err and "Traceback" not in err, err
    assert not run.exists()


def test_a_failure_in_the_first_step_removes_the_new_run(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise DataError("injected")

    monkeypatch.setattr(engine.losses, "seed_loss", broken)
    with pytest.raises(DataError, match="injected"):
        engine.distill(config(data_dir, tmp_path / "r"), NullReporter())
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", ["truncate-adapter", "empty-optimizer", "garbage-state"])
def test_a_damaged_checkpoint_is_named_as_corrupt(data_dir: Path, tmp_path: Path, damage: str) -> None:
    cfg = config(data_dir, tmp_path / "r", max_steps=3)
    with pytest.raises(Interrupted):
        engine.distill(cfg, _InterruptAt((1, 1)))
    ckpt = tmp_path / "r" / "checkpoints" / "step-1"
    target = {
        "truncate-adapter": ckpt / "adapter" / "adapter_model.safetensors",
        "empty-optimizer": ckpt / "optimizer.safetensors",
        "garbage-state": ckpt / "state.json",
    }[damage]
    data = target.read_bytes()
    target.write_bytes(
        {"truncate-adapter": data[: len(data) // 2], "empty-optimizer": b"", "garbage-state": b"{not json"}[damage]
    )
    with pytest.raises(DataError, match="corrupt") as caught:
        engine.distill(replace(cfg, resume=True), NullReporter())
    assert str(target) in str(caught.value) and "\n" not in str(caught.value)


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    cfg = config(data_dir, tmp_path / "r", max_steps=4, save_every=1)
    real = safetensors.torch.save_file
    calls = {"n": 0}

    def filling(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # the second checkpoint (optimizer + rng per save)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", filling)
    with pytest.raises(StorageError, match="disk full") as caught:
        engine.distill(cfg, NullReporter())
    assert "step-1 is kept" in str(caught.value)
    checkpoints = tmp_path / "r" / "checkpoints"
    assert checkpoint.newest(checkpoints) == checkpoints / "step-1"
    assert not list(checkpoints.glob(".*")), "the failed save's staging is removed"


def _with_bad_images(root: Path, kind: str) -> Path:
    from PIL import Image

    data = write_train_data(root)
    for name in ("3.png", "6.png"):
        size = (3, 1000) if kind == "aspect" else (300, 300)  # 333:1, beyond Qwen2-VL's limit of 200:1
        Image.new("RGB", size, (90, 90, 90)).save(data / "images" / name)
    return data


@pytest.mark.parametrize(("model", "kind"), [("tiny-llava", "bomb"), ("tiny-qwen2-vl", "aspect")])
def test_a_bad_image_is_skipped_with_a_counted_warning(tmp_path: Path, monkeypatch, model: str, kind: str) -> None:
    from PIL import Image

    if kind == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300 x 300 is then a decompression bomb
    data = _with_bad_images(tmp_path / "data", kind)
    warned: list[str] = []

    class Warnings(NullReporter):
        def warn(self, message: str) -> None:
            warned.append(message)

    cfg = config(data, tmp_path / "r", model=model, max_steps=4, batch_size=2, grad_accum=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        summary = engine.distill(cfg, Warnings())
    assert summary["final"]["skipped_samples"] == 2  # both records, once each (4 steps = one epoch)
    assert warned and {w.split(":")[0] for w in warned} == {"skipping record 3", "skipping record 6"}


# --- small engine facts ---------------------------------------------------------------------------------------------


def test_sft_honours_loss_chunk(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    seen: list[int] = []
    original = engine.losses.chunked

    def spy(fn, *tensors, chunk, **kwargs):
        seen.append(chunk)
        return original(fn, *tensors, chunk=chunk, **kwargs)

    monkeypatch.setattr(engine.losses, "chunked", spy)
    plain = engine.distill(config(data_dir, tmp_path / "plain", method="sft", max_steps=2), NullReporter())
    assert seen == []
    chunked = engine.distill(
        config(data_dir, tmp_path / "chunked", method="sft", max_steps=2, loss_chunk=3), NullReporter()
    )
    assert seen and set(seen) == {3}
    assert chunked["final"]["last"]["loss"] == pytest.approx(plain["final"]["last"]["loss"], rel=1e-5)


def test_no_seed_comes_from_the_builtin_hash() -> None:
    import builtins

    def forbidden(value):
        raise AssertionError("seeds must not depend on the Python version's hash()")

    cfg = DistillConfig(seed=3)
    expected = engine._noise_generator(cfg, 1, 2, 5).initial_seed(), engine._step_seed(cfg, 1, 2, 0)
    original, builtins.hash = builtins.hash, forbidden  # only around the two calls: pytest itself needs hash()
    try:
        got = engine._noise_generator(cfg, 1, 2, 5).initial_seed(), engine._step_seed(cfg, 1, 2, 0)
    finally:
        builtins.hash = original
    assert got == expected


def test_gradient_checkpointing_uses_the_current_transformers_api() -> None:
    from seedcli.models.loading import load

    loaded = load("tiny-llava", device="cpu")
    with warnings.catch_warnings():
        # peft itself reads the deprecated is_gradient_checkpointing (not ours to change); the enable call is.
        warnings.filterwarnings("error", message=".*gradient_checkpointing_enable", category=FutureWarning)
        wrapped = engine._wrap(loaded.model, DistillConfig(gradient_checkpointing=True, lora_r=4), loaded.family)
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in wrapped.get_base_model().modules())


def _evaluation_data(root: Path) -> Path:
    """The evaluation tests' data directory (three images, POPE random split)."""
    from seedcli import atomic
    from seedcli.data.datadir import pope_file, write_manifest
    from tests.conftest import image_file
    from tests.smoke.test_evaluate_cli import IMAGES, _pope_lines

    for name, color in IMAGES.items():
        image_file(root / "images" / name, color)
    atomic.write_jsonl(root / pope_file("random"), _pope_lines("random"))
    write_manifest(root, source={"kind": "test"}, seed=0, counts={}, dropped={}, image_roots={"pope": "images"})
    return root


def test_a_second_evaluation_on_a_live_out_is_refused(cli, tmp_path: Path) -> None:
    from tests.smoke.test_evaluate_cli import FAST

    data = _evaluation_data(tmp_path / "data")
    out = tmp_path / "results"
    args = [
        "evaluate",
        "--model",
        "tiny-llava",
        "--data",
        str(data),
        "--pope",
        "random",
        "--limit",
        "1",
        "--out",
        str(out),
        *FAST,
    ]
    assert cli(args)[0] == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli(args)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"pid {holder.pid}" in err and "Traceback" not in err
    assert cli(args)[0] == 0


# --- the background data pipeline ---------------------------------------------------------------------------------


def test_encoding_workers_give_the_synchronous_adapter_bit_for_bit_and_resume_exactly(
    data_dir: Path, tmp_path: Path
) -> None:
    sync = config(data_dir, tmp_path / "sync", max_steps=4, num_workers=0, lora_dropout=0.1, save_every=100)
    engine.distill(sync, NullReporter())
    workers = replace(sync, out=str(tmp_path / "workers"), num_workers=2)
    engine.distill(workers, NullReporter())
    same_metrics(tmp_path / "workers", tmp_path / "sync")
    same_adapter(tmp_path / "workers", tmp_path / "sync")
    assert all(0.0 <= r["data_wait_share"] <= 1.0 for r in metrics(tmp_path / "workers"))
    broken = replace(workers, out=str(tmp_path / "broken"))
    with pytest.raises(Interrupted):
        engine.distill(broken, _InterruptAt((1, 2)))
    engine.distill(
        replace(broken, resume=True, num_workers=1), NullReporter(), given=frozenset({"resume", "num_workers"})
    )
    same_metrics(tmp_path / "broken", tmp_path / "sync")
    same_adapter(tmp_path / "broken", tmp_path / "sync")


def test_an_error_in_an_encoding_worker_reaches_the_training_process_unchanged(
    data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    encode = engine._encode_micro

    def failing(*args, **kwargs):
        if args[6] == 1:  # the second optimizer step, encoded in a worker
            raise DataError("injected failure at step 2")
        return encode(*args, **kwargs)

    monkeypatch.setattr(engine, "_encode_micro", failing)
    with pytest.raises(DataError) as caught:
        engine.distill(config(data_dir, tmp_path / "r", max_steps=3, num_workers=1), NullReporter())
    assert str(caught.value) == "injected failure at step 2"
    assert [r["step"] for r in metrics(tmp_path / "r")] == [1], "a run that logged steps is kept"


def test_plain_resume_relaunches_as_many_processes_as_the_run_had(tmp_path: Path, cli, monkeypatch) -> None:
    from seedcli import distributed

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"nproc": 2, "device": "cpu"}}))
    seen = {}
    monkeypatch.setattr(distributed, "relaunch_cli", lambda argv, **kwargs: seen.update(argv=argv, **kwargs))
    code, _, err = cli(["distill", "--out", str(run), "--resume"])
    assert code == 0, err
    assert seen["nproc"] == 2 and seen["argv"][seen["argv"].index("--nproc") + 1] == "2"
    seen.clear()
    cli(["distill", "--out", str(run), "--resume", "--nproc", "1"])  # a flag typed now wins: one process
    assert seen == {}
