"""Multi-process `seed distill` on CPU (gloo, 2 processes) and the helpers of seedcli.distributed.

Two processes with --batch-size 2 see the same global batch as one with --batch-size 4, so the loss
trajectory and the adapter must agree; the replicas must be bit-identical; checkpoints must resume
on 2 and on 1 process; a failure on rank 1 must stop everything with rank 1's message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import seedcli.cli.distill
from seedcli import distributed
from seedcli.config.distill import DistillConfig
from seedcli.core import distill as engine
from seedcli.errors import ConfigError
from seedcli.reporting import NullReporter
from tests.smoke.test_distill import _InterruptAt, write_train_data
from tests.smoke.test_distill import config as distill_config

pytestmark = pytest.mark.smoke

# A hung collective fails after this many seconds instead of blocking the suite.
COLLECTIVE_TIMEOUT_S = 60.0
SUBPROCESS_TIMEOUT_S = 420
KEYS = ("loss", "kl", "ce", "beta", "confidence", "grad_norm", "tokens")


def config(data: Path, out: Path, **overrides) -> DistillConfig:
    """The distill tests' small config, with the whole global batch in one micro-batch."""
    settings = {"batch_size": 4, "grad_accum": 1, "nccl_timeout_s": COLLECTIVE_TIMEOUT_S, **overrides}
    return distill_config(data, out, **settings)


def cli_args(cfg: DistillConfig) -> list[str]:
    from seedcli.cli.options import config_argv

    return config_argv("distill", cfg)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same_trajectory(a: Path, b: Path) -> None:
    ra, rb = metrics(a), metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb, strict=True):
        for key in KEYS:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-6) -> None:
    ta, tb = adapter(a), adapter(b)
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=atol)


def run_cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m seedcli ARGS` in a fresh process (the elastic launcher needs a real argv)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "seedcli", *args], capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S
    )


def _train_worker(cfg_doc: dict, hook: str | None) -> dict:
    """Entry point of one worker under the elastic launcher (module level, so spawn can import it)."""
    from seedcli.config.base import from_dict

    cfg = from_dict(DistillConfig, cfg_doc)
    reporter = _InterruptAt(2) if hook == "interrupt" else NullReporter()
    seen: dict = {}
    if hook == "fsdp":
        from torch.distributed.tensor import DTensor

        shard = distributed.shard_frozen_base

        def counting(model, collective):
            sharded = shard(model, collective)
            seen["dtensor_params"] = sum(isinstance(p, DTensor) for p in sharded.parameters())
            seen["plain_params"] = sum(not isinstance(p, DTensor) for p in sharded.parameters())
            return sharded

        distributed.shard_frozen_base = counting
    summary = engine.distill(cfg, reporter)
    return {"rank": int(os.environ["RANK"]), "replicas": summary["replicas"], **seen}


def launch_training(cfg: DistillConfig, hook: str | None = None) -> dict[int, dict]:
    from seedcli.config.base import to_dict

    return distributed.launch(_train_worker, (to_dict(cfg), hook), nproc=2, master_port=distributed.free_port())


def _gather_worker(records: list) -> list:
    collective = distributed.init_collective(device_type="cpu", timeout_s=COLLECTIVE_TIMEOUT_S)
    try:
        mine = distributed.shard(records, collective.rank, collective.world)
        return distributed.gather_records(mine)
    finally:
        distributed.shutdown()


# --- fixtures: the single-process reference and the 2-process run through the CLI ----------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_train_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def single(data_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    engine.distill(config(data_dir, out), NullReporter())
    return out


@pytest.fixture(scope="module")
def pair(data_dir: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("pair") / "run"
    cfg = config(data_dir, out, batch_size=2, nproc=2, master_port=distributed.free_port())
    done = run_cli(cli_args(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


# --- pure helpers ------------------------------------------------------------------------------------------


def test_shard_is_contiguous_and_balanced() -> None:
    assert [distributed.shard(list(range(5)), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [distributed.shard("abcdefg", r, 3) for r in range(3)] == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert [distributed.shard([9], r, 3) for r in range(3)] == [[9], [], []]
    for n in range(8):
        for world in range(1, 5):
            parts = [distributed.shard(list(range(n)), r, world) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        distributed.shard([1], 2, 2)


def test_placement_from_torchrun_and_slurm_environments() -> None:
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29400",
    }
    assert distributed.placement(torchrun) == distributed.Placement(3, 8, 1, 2, "10.0.0.1", 29400, "torchrun")
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08],cpu1",
        "MASTER_PORT": "29500",
    }
    assert distributed.placement(slurm) == distributed.Placement(5, 8, 1, 4, "gpu07", 29500, "slurm")
    assert distributed.placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source == "single"
    assert distributed.placement({}) == distributed.Placement(0, 1, 0, 1, None, None, "single")
    assert [distributed.first_host(s) for s in ("node1", "a[3-5]", "b-[009,12]x", "c1,c2")] == [
        "node1",
        "a3",
        "b-009",
        "c1",
    ]
    with pytest.raises(ConfigError, match="RANK"):
        distributed.placement({"RANK": "x", "WORLD_SIZE": "2"})


def test_distributed_flags_are_validated() -> None:
    with pytest.raises(ConfigError, match="--gpus"):
        DistillConfig(gpus=2, nproc=4)
    with pytest.raises(ConfigError, match="--gpus"):
        DistillConfig(gpus=2, device="cpu")
    with pytest.raises(ConfigError, match="--node-rank"):
        DistillConfig(nnodes=2, node_rank=2, master_addr="h", master_port=1234)
    with pytest.raises(ConfigError, match="--nnodes"):
        DistillConfig(nnodes=2)
    with pytest.raises(ConfigError, match="--strategy"):
        DistillConfig(strategy="fsdp", rounds=2)
    with pytest.raises(ConfigError, match="--strategy"):
        DistillConfig(strategy="fsdp", quantization="4bit")
    with pytest.raises(ConfigError, match="--nccl-timeout-s"):
        DistillConfig(nccl_timeout_s=0)
    assert DistillConfig(gpus=2, nproc=2).nproc == 2


def test_library_call_asking_for_processes_without_a_launcher_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="launcher"):
        engine.distill(config(data_dir, tmp_path / "r", nproc=2), NullReporter())
    assert not (tmp_path / "r").exists()


def test_cli_relaunches_outside_a_launcher_with_flags_that_rebuild_the_config(cli, monkeypatch, tmp_path: Path) -> None:
    launched, received = {}, []
    monkeypatch.setattr(distributed, "relaunch_cli", lambda argv, **kw: launched.update(argv=argv, **kw))
    monkeypatch.setattr(engine, "distill", lambda cfg, reporter, **kw: received.append(cfg) or {"run_dir": "R"})
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    args = [
        "distill",
        "--model",
        "tiny-llava",
        "--device",
        "cpu",
        "--nproc",
        "2",
        "--lr",
        "3e-05",
        "--beta-values",
        "1.0,0.5",
        "--beta-quantiles",
        "0.5",
        "--gradient-checkpointing",
        "--strategy",
        "fsdp",
    ]
    code, out, err = cli(args)
    assert code == 0 and out == "" and not received, err
    assert launched["nproc"] == 2 and launched["nnodes"] == 1 and launched["argv"][0] == "distill"
    # The workers get a fixed --out (a timestamp per worker would split the run) and the same config.
    assert "--out" in launched["argv"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, _ = cli(launched["argv"])
    assert code == 0 and out == "", "only rank 0 prints the run directory"
    expected = DistillConfig(
        model="tiny-llava",
        device="cpu",
        nproc=2,
        lr=3e-5,
        beta_values=(1.0, 0.5),
        beta_quantiles=(0.5,),
        gradient_checkpointing=True,
        strategy="fsdp",
    )
    assert received == [replace(expected, out=received[0].out)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(seedcli.cli.distill, "_after_training", lambda *args: None)  # "R" is not a real run directory
    code, out, _ = cli(launched["argv"])
    assert code == 0 and out.strip() == "R"


def test_gather_records_restores_the_order_over_two_processes() -> None:
    records = [
        {"question_id": i, "answer": "oui" if i % 2 else "non \u00e9", "scores": [i / 3, None]} for i in range(5)
    ]
    results = distributed.launch(_gather_worker, (records,), nproc=2, master_port=distributed.free_port())
    assert results == {0: records, 1: records}
    assert distributed.launch(_gather_worker, ([{"only": 1}],), nproc=2, master_port=distributed.free_port()) == {
        0: [{"only": 1}],
        1: [{"only": 1}],
    }
    assert distributed.gather_records(records) == records  # no process group: unchanged


# --- training on two processes ----------------------------------------------------------------------------


def test_two_processes_follow_the_single_process_trajectory(single: Path, pair) -> None:
    run, done = pair
    assert done.stdout.strip().splitlines() == [str(run)], "rank 0 alone prints the run directory"
    assert_same_trajectory(run, single)
    assert_same_adapter(run, single)
    saved = json.loads((run / "config.json").read_text())
    assert saved["resolved"]["global_batch"] == 4 and saved["resolved"]["world_size"] == 2
    assert saved["resolved"]["backend"] == "gloo" and saved["config"]["batch_size"] == 2


def test_replicas_are_identical_and_match_the_saved_adapter(pair) -> None:
    run, _ = pair
    replicas = json.loads((run / "summary.json").read_text())["replicas"]
    assert replicas["world_size"] == 2
    saved = distributed.digest(adapter(run))[: distributed.DIGEST_HEX]
    assert replicas["adapter_digests"] == [saved, saved]


def test_fsdp_shards_the_base_and_follows_the_single_process_trajectory(
    data_dir: Path, single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fsdp"
    results = launch_training(config(data_dir, out, batch_size=2, nproc=2, strategy="fsdp"), hook="fsdp")
    lora = sum(1 for k in adapter(single) if "lora_" in k)
    for rank in (0, 1):
        assert results[rank]["dtensor_params"] > 0, "the frozen base must be sharded"
        assert results[rank]["replicas"]["adapter_digests"][0] == results[rank]["replicas"]["adapter_digests"][1]
    assert lora > 0
    assert_same_trajectory(out, single)
    assert_same_adapter(out, single)


def test_resume_an_interrupted_two_process_run_on_two_and_on_one_process(
    data_dir: Path, single: Path, pair, tmp_path: Path
) -> None:
    straight, _ = pair
    broken = tmp_path / "broken"
    cfg = config(data_dir, broken, batch_size=2, nproc=2, save_every=100)
    with pytest.raises(distributed.RankFailed, match="Interrupted"):
        launch_training(cfg, hook="interrupt")
    assert (broken / "checkpoints" / "step-2" / "state.json").is_file() and not (broken / "summary.json").exists()
    on_one = tmp_path / "on-one"
    shutil.copytree(broken, on_one)

    launch_training(replace(cfg, resume=True))
    assert [r["step"] for r in metrics(broken)] == [1, 2, 3]
    assert_same_adapter(broken, straight)
    assert_same_trajectory(broken, straight)

    # One process, same global batch: --grad-accum 2 is chosen to replace the second process.
    engine.distill(DistillConfig(out=str(on_one), resume=True, device="cpu"), NullReporter())
    saved = json.loads((on_one / "config.json").read_text())
    assert (
        saved["config"]["batch_size"],
        saved["config"]["grad_accum"],
        saved["resolved"]["world_size"],
        saved["resolved"]["global_batch"],
    ) == (2, 2, 1, 4)
    assert_same_trajectory(on_one, single)
    assert_same_adapter(on_one, single)


def test_resume_refuses_a_batch_that_changes_the_global_batch(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    cfg = config(data_dir, run, max_steps=2, batch_size=2, grad_accum=2)
    with pytest.raises(engine.Interrupted):
        engine.distill(cfg, _InterruptAt(1))
    with pytest.raises(ConfigError, match="global batch is 4"):
        engine.distill(DistillConfig(out=str(run), resume=True, device="cpu", grad_accum=3), NullReporter())


FAIL_ON_RANK_1 = textwrap.dedent(
    """
    import os
    if os.environ.get("RANK") == "1":
        import seedcli.core.distill as engine
        from seedcli.errors import DataError
        encode = engine._encode_micro

        def failing(*args, **kwargs):
            if args[6] == 1:  # the second optimizer step
                raise DataError("injected failure on rank 1 at step 2")
            return encode(*args, **kwargs)

        engine._encode_micro = failing
    """
)


def test_a_failure_on_rank_1_stops_both_processes_with_its_message(data_dir: Path, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    out = tmp_path / "run"
    cfg = config(data_dir, out, batch_size=2, nproc=2, master_port=distributed.free_port())
    done = run_cli(cli_args(cfg), {"PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode == 3, done.stderr[-3000:]  # DataError's exit code, from rank 1
    assert "rank 1 failed: DataError: injected failure on rank 1 at step 2" in done.stderr
    assert done.stdout == "" and not (out / "summary.json").exists()
    assert [r["step"] for r in metrics(out)] == [1], "rank 0 stopped at the step where rank 1 failed"


# --- gpu tier (opt-in: pytest --gpu) -----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_gpus_1_on_cuda_with_each_strategy(data_dir: Path, tmp_path: Path, strategy: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    base = config(data_dir, tmp_path / "ref", device="cuda", dtype="fp32")
    engine.distill(base, NullReporter())
    cfg = dataclasses.replace(base, out=str(tmp_path / strategy), gpus=1, strategy=strategy)
    done = run_cli(cli_args(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / strategy / "config.json").read_text())["resolved"]
    assert saved["device"].startswith("cuda")
    assert saved["strategy"] == ("fsdp" if strategy == "fsdp" else "single")
    assert_same_trajectory(tmp_path / strategy, tmp_path / "ref")
    assert_same_adapter(tmp_path / strategy, tmp_path / "ref", atol=1e-5)
