"""`seed detect train --tuning lora` on the tiny rungs: adapters per stage, run/evaluate load them, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seedcli.config.detect import DetectTrainConfig
from seedcli.errors import ConfigError
from tests.smoke.test_detect import RUNGS, _StopAt, _train_args, small_run
from tests.smoke.test_detect import data as data  # noqa: F401  (the module-scoped data fixture)

pytestmark = pytest.mark.smoke

LORA = ["--tuning", "lora", "--lora-r", "4", "--lora-alpha", "32"]  # scale 8: a visible change after one epoch


def test_lora_pipeline_train_run_evaluate(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001, F811
    detect = data / "detect"
    run = tmp_path / "run"
    code, out, err = cli([*_train_args(detect, run), *LORA])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tuning"] == dict.fromkeys(RUNGS.split(","), "lora")
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["tuning"] == ["lora"] * 3
    for stage, rungs in (("sft", [0]), ("kd-1", [0, 1]), ("kd-2", [1, 2]), ("refine", [2])):
        for i in rungs:
            saved = run / "stages" / stage / f"rung-{i}"
            assert sorted(p.name for p in saved.iterdir()) == [
                "adapter_config.json",
                "adapter_model.safetensors",
                "rung.json",
            ]
            assert json.loads((saved / "rung.json").read_text())["base"] == RUNGS.split(",")[i]

    test, dev = detect / "small-test.jsonl", detect / "small-dev.jsonl"
    code, out, err = cli(["detect", "run", "--model", f"{run}@kd-1", "--input", str(test), "--device", "cpu"])
    assert code == 0, err
    assert all(0.0 <= o["p_hallucinated"] <= 1.0 for o in json.loads(out.splitlines()[0])["options"])

    # Scored on the dev items with the stored thresholds and one pass, the loaded adapters reproduce the
    # dev scores training computed with the adapters in memory (the base alone would not).
    args = ["detect", "evaluate", "--model", str(run), "--model", f"{run}@sft", "--input", str(dev)]
    code, out, err = cli([*args, "--shifts", "1", "--no-calibrate", "--device", "cpu", "--json"])
    assert code == 0, err
    final, sft = json.loads(out)["models"]
    for entry, stage in ((final, "refine"), (sft, "sft")):
        stored = summary["dev"][stage]
        assert entry["track1"]["options"]["f1"] == pytest.approx(stored["track1"]["options"]["f1"], abs=1e-6)
        assert entry["track2"]["accuracy"] == pytest.approx(stored["track2"]["accuracy"], abs=1e-6)
    _assert_adapter_applied(run, test)

    # An adapter given another base (rung.json edited) is refused with one line, exit code 4.
    rung = run / "stages" / "sft" / "rung-0" / "rung.json"
    rung.write_text(json.dumps({"base": RUNGS.split(",")[2], "quantization": "none"}))
    code, _, err = cli(["detect", "run", "--model", f"{run}@sft", "--input", str(test), "--device", "cpu"])
    assert code == 4 and len(err.strip().splitlines()) == 1 and "another base model" in err, err


def _assert_adapter_applied(run: Path, items_file: Path) -> None:
    """`seed detect run` on a LoRA stage gives the base + adapter's probabilities, not the base's."""
    from peft import PeftModel

    from seedcli.config.detect import DetectRunConfig
    from seedcli.detect.infer import predict
    from seedcli.detect.items import read_items
    from seedcli.detect.runner import run as run_detector
    from seedcli.models.loading import load
    from seedcli.reporting import NullReporter

    records = run_detector(
        DetectRunConfig(model=run, stage="sft", input=items_file, shifts=1, device="cpu"), NullReporter()
    )
    got = [o["p_hallucinated"] for r in records for o in r.get("options", [])]
    items = read_items(items_file)
    base = load(RUNGS.split(",")[0], device="cpu")
    plain = predict(base, base.model, items, shifts=1, batch_size=64)
    adapted = PeftModel.from_pretrained(base.model, str(run / "stages" / "sft" / "rung-0"))
    expected = predict(base, adapted, items, shifts=1, batch_size=64)
    track1 = [i for i, item in enumerate(items) if item.track == 1]
    assert got == pytest.approx([p for i in track1 for p in expected[i]], abs=2e-6)
    assert max(abs(a - b) for i in track1 for a, b in zip(plain[i], expected[i])) > 1e-3, "the adapter is a no-op"


def test_auto_is_full_for_small_rungs_and_lora_above(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from seedcli.detect import train

    rung = SimpleNamespace(model=torch.nn.Linear(10, 10))  # 110 parameters
    assert train.tuning_of(DetectTrainConfig(), rung) == "full"
    assert train.tuning_of(DetectTrainConfig(tuning="lora"), rung) == "lora"
    monkeypatch.setattr(train, "FULL_MAX_PARAMS", 109)
    assert train.tuning_of(DetectTrainConfig(), rung) == "lora"
    assert train.tuning_of(DetectTrainConfig(tuning="full"), rung) == "full"


def test_lora_flags_are_validated() -> None:
    with pytest.raises(ConfigError, match="--quantization"):
        DetectTrainConfig(quantization="4bit")
    with pytest.raises(ConfigError, match="--gpus"):
        DetectTrainConfig(gpus=2, nproc=3)
    with pytest.raises(ConfigError, match="--gpus"):
        DetectTrainConfig(gpus=2, device="cpu")
    assert DetectTrainConfig(tuning="lora", quantization="8bit").quantization == "8bit"


def test_bad_lora_target_is_one_line_and_leaves_nothing(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001, F811
    run = tmp_path / "run"
    code, _, err = cli([*_train_args(data / "detect", run), "--tuning", "lora", "--lora-targets", "qkv_proj"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--lora-targets qkv_proj matches no attention projection" in err
    assert not run.exists()


def _ladder(data: Path, tmp_path: Path, **overrides: object):  # noqa: ANN202
    from seedcli.core.collective import LocalCollective
    from seedcli.detect import train

    settings = {"batch_size": 16, "device": "cpu", "tuning": "lora", **overrides}
    cfg = DetectTrainConfig(
        models=tuple(RUNGS.split(",")[1:]),
        train_files=(data / "detect" / "small-train.jsonl",),
        data=tmp_path / "none",
        **settings,
    )
    ladder = train._load_ladder(cfg, LocalCollective(torch.device("cpu")))
    models = [train._rung_model(cfg, i, loaded, "lora", None, tmp_path) for i, loaded in enumerate(ladder)]
    return cfg, ladder, models


@pytest.mark.parametrize("online", [True, False])
def test_only_adapter_weights_change(data: Path, tmp_path: Path, online: bool) -> None:  # noqa: F811
    from seedcli.detect import train
    from seedcli.reporting import NullReporter

    cfg, ladder, models = _ladder(data, tmp_path)
    before = [{k: v.detach().clone() for k, v in m.named_parameters()} for m in models]
    stage = train.Stage("kd-1", 1, ((0, 1.0),), 1.0, online, 1)
    items = train.load_items(list(cfg.train_files))
    trained = train.run_stage(cfg, stage, ladder, models, items, tmp_path, NullReporter(), tuning=["lora", "lora"])
    assert trained == ([1, 0] if online else [1])
    for i, model in enumerate(models):
        changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[i][k])}
        # Every adapter matrix of a trained rung moved (B starts at zero, so the adapter is live).
        lora = {k for k, _ in model.named_parameters() if "lora_" in k}
        assert changed == (lora if i in trained else set()), i
        assert not any(p.requires_grad for p in model.parameters()), "frozen again after the stage"


def test_metrics_line_is_the_epoch_mean(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """metrics.jsonl holds each epoch's loss and parts averaged over its questions, not its last batch."""
    from seedcli.detect import train
    from seedcli.reporting import NullReporter

    cfg, ladder, models = _ladder(data, tmp_path, batch_size=5)
    seen: list[tuple[int, float, dict[str, float]]] = []
    batch_loss = train._batch_loss

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loss, parts = batch_loss(*args, **kwargs)
        seen.append((len(args[5]), float(loss.detach()), dict(parts)))
        return loss, parts

    monkeypatch.setattr(train, "_batch_loss", recording)
    stage = train.Stage("kd-1", 1, ((0, 1.0),), 1.0, True, 2)
    items = train.load_items(list(cfg.train_files))
    train.run_stage(cfg, stage, ladder, models, items, tmp_path, NullReporter(), tuning=["lora", "lora"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    per_epoch = len(seen) // 2
    assert per_epoch > 1 and seen[per_epoch - 1][0] < 5, "several batches, the last one short"
    for line, batches in zip(lines, (seen[:per_epoch], seen[per_epoch:]), strict=True):
        n = sum(size for size, _, _ in batches)
        assert line["loss"] == pytest.approx(sum(size * loss for size, loss, _ in batches) / n, rel=1e-6)
        for name in ("ce", "kl0", "teacher_ce", "mutual"):
            assert line[name] == pytest.approx(sum(size * parts[name] for size, _, parts in batches) / n, rel=1e-6)
        assert line["loss"] != pytest.approx(batches[-1][1], rel=1e-3)
        # The parts account for the whole loss: student CE + KL to the teacher + the online teacher's CE and mutual KL.
        whole = stage.label_weight * line["ce"] + line["kl0"] + line["teacher_ce"] + cfg.mutual_weight * line["mutual"]
        assert line["loss"] == pytest.approx(whole, rel=1e-6)


def test_lora_resume_mid_stage_is_bit_identical(data: Path, tmp_path: Path) -> None:  # noqa: F811
    from safetensors.torch import load_file

    from seedcli.detect.train import train
    from seedcli.reporting import NullReporter

    # LoRA dropout draws random numbers: resume must draw the same.
    common = small_run(data, tuning="lora", lora_r=4, lora_dropout=0.1)
    train(DetectTrainConfig(out=tmp_path / "straight", **common), NullReporter())
    with pytest.raises(KeyboardInterrupt):
        train(DetectTrainConfig(out=tmp_path / "resumed", **common), _StopAt("kd-1"))
    checkpoint = tmp_path / "resumed" / "checkpoints" / "kd-1"
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    assert all("lora_" in k for k in load_file(str(checkpoint / "rung-1.safetensors"))), "adapter-only checkpoint"
    train(DetectTrainConfig(out=tmp_path / "resumed", resume=True, **common), NullReporter())
    for stage, rungs in (("sft", [0]), ("kd-1", [0, 1]), ("refine", [1])):
        for i in rungs:
            name = f"stages/{stage}/rung-{i}/adapter_model.safetensors"
            a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (stage, i)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_weights(data: Path, tmp_path: Path, tuning: str) -> None:  # noqa: F811
    from safetensors.torch import load_file

    from seedcli.detect.train import train
    from seedcli.reporting import NullReporter

    common = dict(
        models=(RUNGS.split(",")[2],),
        train_files=(data / "detect" / "small-train.jsonl",),
        dev_files=(),
        data=tmp_path / "none",
        epochs=1,
        batch_size=16,
        device="cpu",
        tuning=tuning,
        lora_dropout=0.1,  # recomputation must draw the same dropout masks
    )
    for name, flag in (("plain", False), ("checkpointed", True)):
        train(DetectTrainConfig(out=tmp_path / name, gradient_checkpointing=flag, **common), NullReporter())
    file = "adapter_model.safetensors" if tuning == "lora" else "model.safetensors"
    a, b = (load_file(str(tmp_path / name / "stages" / "sft" / "rung-0" / file)) for name in ("plain", "checkpointed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
