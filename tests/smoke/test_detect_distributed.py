"""`seed detect train --nproc 2` on CPU (gloo): the same run as one process with the same global batch.

Two processes split every global batch of --batch-size questions and sum their size-weighted
gradients, so the weights agree with one process within float tolerance (the sums run in another
order, so not bit for bit); the replicas are identical; an interrupted two-process run resumed on
two processes gives the straight two-process run's weights bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seedcli import distributed
from seedcli.config.detect import DetectTrainConfig
from seedcli.reporting import NullReporter
from tests.smoke.test_detect import _StopAt, small_run
from tests.smoke.test_detect import data as data  # noqa: F401  (the module-scoped data fixture)

pytestmark = pytest.mark.smoke

TIMEOUT_S = 420
# (stage, rung) pairs every run below saves: sft trains rung 0, online kd-1 both, refine rung 1.
SAVED = (("sft", 0), ("kd-1", 0), ("kd-1", 1), ("refine", 1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one thread per process: float sums depend on the thread count, and the runs compared
    below start as this process (one process), as spawned workers (which inherit its environment) and as CLI
    processes (OMP_NUM_THREADS=1), so a machine's default thread count must not enter the comparison."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def settings(data: Path, **overrides: object) -> dict:  # noqa: F811
    return small_run(
        data,
        **{
            "dev_files": (data / "detect" / "small-dev.jsonl",),
            "tuning": "lora",
            "lora_r": 4,
            "lora_dropout": 0.0,  # dropout masks depend on how the batch is split
            "nccl_timeout_s": 60.0,
            **overrides,
        },
    )


def cli_args(cfg: DetectTrainConfig) -> list[str]:
    from seedcli.cli.options import config_argv

    return ["detect", *config_argv("train", cfg)]


def weights(run: Path, stage: str, rung: int) -> dict[str, torch.Tensor]:
    folder = run / "stages" / stage / f"rung-{rung}"
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(folder / name))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_worker(cfg_doc: dict, stop: str | None) -> int:
    """One worker under the elastic launcher (module level, so spawn can import it)."""
    from seedcli.config.base import from_dict
    from seedcli.detect.train import train

    summary = train(from_dict(DetectTrainConfig, cfg_doc), _StopAt(stop) if stop else NullReporter())
    return int(summary["processes"])


def launch(cfg: DetectTrainConfig, stop: str | None = None) -> dict[int, int]:
    from seedcli.config.base import to_dict

    return distributed.launch(_train_worker, (to_dict(cfg), stop), nproc=2, master_port=distributed.free_port())


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m seedcli ARGS` in a fresh process (the elastic launcher needs a real argv)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "seedcli", *args], capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def single(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from seedcli.detect.train import train

    out = tmp_path_factory.mktemp("single") / "run"
    train(DetectTrainConfig(out=out, **settings(data)), NullReporter())
    return out


@pytest.fixture(scope="module")
def pair(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:  # noqa: F811
    out = tmp_path_factory.mktemp("pair") / "run"
    done = run_cli(cli_args(DetectTrainConfig(out=out, nproc=2, **settings(data))))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_match_one_process(single: Path, pair) -> None:  # noqa: ANN001
    run, done = pair
    assert done.stdout.strip().splitlines() == [str(run)], "rank 0 alone prints the run directory"
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    for stage, rung in SAVED:
        a, b = weights(single, stage, rung), weights(run, stage, rung)
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    for x, y in zip(metrics(single), metrics(run), strict=True):
        assert x.keys() == y.keys() and (x["stage"], x["epoch"]) == (y["stage"], y["epoch"])
        for key in set(x) - {"stage", "epoch"}:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["stage"], key)
    # Dev scores are predicted in shares and gathered: the same scores and thresholds.
    dev_single = json.loads((single / "summary.json").read_text())["dev"]
    dev_pair = json.loads((run / "summary.json").read_text())["dev"]
    assert dev_single.keys() == dev_pair.keys() == {"sft", "kd-1", "refine"}
    for stage in dev_single:
        assert dev_pair[stage]["thresholds"] == dev_single[stage]["thresholds"]
        assert dev_pair[stage]["track1"]["options"] == pytest.approx(dev_single[stage]["track1"]["options"])


def test_resume_an_interrupted_two_process_run_on_two_and_on_one_process(
    data: Path, single: Path, pair, tmp_path: Path
) -> None:  # noqa: ANN001, F811
    straight, _ = pair
    broken = tmp_path / "broken"
    cfg = DetectTrainConfig(out=broken, nproc=2, **settings(data))
    with pytest.raises(distributed.RankFailed):
        launch(cfg, stop="kd-1")
    assert json.loads((broken / "checkpoints" / "kd-1" / "state.json").read_text())["epoch"] == 1
    assert json.loads((broken / "state.json").read_text())["completed"] == ["sft"]
    on_one = tmp_path / "on-one"
    shutil.copytree(broken, on_one)
    assert launch(DetectTrainConfig(out=broken, nproc=2, resume=True, **settings(data))) == {0: 2, 1: 2}
    for stage, rung in SAVED:
        a, b = weights(straight, stage, rung), weights(broken, stage, rung)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (stage, rung)

    # The global batch does not depend on the process count, so one process may resume it too.
    from seedcli.detect.train import train

    train(DetectTrainConfig(out=on_one, resume=True, **settings(data)), NullReporter())
    for stage, rung in SAVED:
        a, b = weights(single, stage, rung), weights(on_one, stage, rung)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_full_weights_on_two_processes_match_one_process(data: Path, tmp_path: Path) -> None:  # noqa: F811
    from seedcli.detect.items import read_items
    from seedcli.detect.train import train

    # Each epoch ends with a batch of one question: the second process then has an empty share.
    questions = sum(max(1, len(item.options)) for item in read_items(data / "detect" / "small-train.jsonl"))
    common = settings(data, tuning="auto", dev_files=(), epochs=1, batch_size=questions - 1)
    train(DetectTrainConfig(out=tmp_path / "one", **common), NullReporter())
    assert launch(DetectTrainConfig(out=tmp_path / "two", nproc=2, **common)) == {0: 2, 1: 2}
    assert json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]["tuning"] == ["full", "full"]
    for stage, rung in SAVED:
        a, b = weights(tmp_path / "one", stage, rung), weights(tmp_path / "two", stage, rung)
        assert a.keys() == b.keys() and a
        for key in a:
            # AdamW divides by the gradient's running RMS: a weight whose gradient is ~0 amplifies the
            # reordered float sums up to a fraction of --lr (1e-3) per step, hence the absolute 1e-5.
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_library_call_asking_for_processes_without_a_launcher_is_an_error(data: Path, tmp_path: Path) -> None:  # noqa: F811
    from seedcli.detect.train import train
    from seedcli.errors import ConfigError

    with pytest.raises(ConfigError, match="launcher"):
        train(DetectTrainConfig(out=tmp_path / "r", nproc=2, **settings(data)), NullReporter())
    assert not (tmp_path / "r").exists()


def test_cli_relaunches_with_a_fixed_run_directory(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from seedcli.detect import train as engine

    launched: dict = {}
    monkeypatch.setattr(distributed, "relaunch_cli", lambda argv, **kw: launched.update(argv=argv, **kw))
    monkeypatch.setattr(engine, "train", lambda cfg, reporter: pytest.fail("the launcher process must not train"))
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = cli(["detect", "train", "--device", "cpu", "--nproc", "2", "--tuning", "lora", "--lora-r", "4"])
    assert code == 0 and out == "", err
    argv = launched["argv"]
    assert launched["nproc"] == 2 and argv[:2] == ["detect", "train"]
    assert argv[argv.index("--out") + 1].startswith(str(Path("runs") / "detect-"))
    assert {"--nproc", "--tuning", "--lora-r"} <= set(argv)
