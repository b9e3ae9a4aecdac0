"""`seed distill` end to end on tiny models, and the loop's invariances."""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import seedcli.cli.distill
from seedcli.config.distill import DistillConfig
from seedcli.core import distill as engine
from seedcli.errors import ConfigError, Interrupted, SeedError
from seedcli.reporting import NullReporter

pytestmark = pytest.mark.smoke

COLORS = {"dog": (200, 30, 30), "cat": (30, 200, 30), "car": (30, 30, 200), "cup": (200, 200, 30)}


def write_train_data(root: Path, n: int = 16, seed: int = 0) -> Path:
    """A small data directory written with the project's own writer (varied lengths)."""
    from PIL import Image

    from seedcli.data.datadir import Record, write_manifest, write_train

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        obj = rng.choice(list(COLORS))
        Image.new("RGB", (40, 40), COLORS[obj]).save(root / "images" / f"{i}.png")
        question = rng.choice(list(COLORS))
        messages = [
            {"role": "user", "content": f"Is there a {question} in the image?"},
            {"role": "assistant", "content": "Yes." if question == obj else "No."},
        ]
        if i % 2:
            messages += [
                {"role": "user", "content": "Please describe this image in detail."},
                {"role": "assistant", "content": f"There is a {obj} in the image."},
            ]
        records.append(Record(id=str(i), image=f"{i}.png", messages=tuple(messages)))
    write_train(root, records)
    write_manifest(
        root, source={"kind": "test"}, seed=seed, counts={"train": n}, dropped={}, image_roots={"train": "images"}
    )
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_train_data(tmp_path_factory.mktemp("data"))


def config(data: Path, out: Path, **overrides) -> DistillConfig:
    base = dict(
        model="tiny-llava",
        data=str(data),
        out=str(out),
        device="cpu",
        max_steps=3,
        batch_size=2,
        grad_accum=2,
        lr=5e-3,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        log_every=1,
        warmup_ratio=0.0,
    )
    base.update(overrides)
    return DistillConfig(**base)


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-qwen2-vl"])
def test_cli_distill_writes_a_loadable_adapter_with_a_live_kl_term(
    model: str, data_dir: Path, tmp_path: Path, cli
) -> None:
    from peft import PeftModel

    from seedcli.models.loading import load

    run = tmp_path / "run"
    code, out, err = cli(
        [
            "distill",
            "--model",
            model,
            "--data",
            str(data_dir),
            "--out",
            str(run),
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--lr",
            "1e-3",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
            "--log-every",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(run)
    for name in (
        "config.json",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    ):
        assert (run / name).exists(), name
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["kl"], r["ce"]])).all() for r in rows)
    assert all(r["kl"] > 0 for r in rows)
    weights = adapter_tensors(run)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training must move it"
    assert not any("vision" in k or "visual" in k for k in weights)
    base = load(model, device="cpu").model
    peft_model = PeftModel.from_pretrained(base, str(run / "adapter"))
    assert (
        sum(1 for n, _ in peft_model.named_parameters() if "lora_A" in n)
        == 4 * base.config.text_config.num_hidden_layers
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["model"] == model and saved["resolved"]["family"] in ("llava", "qwen2-vl")


def test_batch_4_accum_1_equals_batch_1_accum_4(data_dir: Path, tmp_path: Path) -> None:
    a = engine.distill(config(data_dir, tmp_path / "a", batch_size=4, grad_accum=1), NullReporter())
    b = engine.distill(config(data_dir, tmp_path / "b", batch_size=1, grad_accum=4), NullReporter())
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    for ra, rb in zip(ma, mb, strict=True):
        for key in ("loss", "kl", "ce", "beta", "confidence", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
    ta, tb = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=1e-6)
    assert a["final"]["last"]["step"] == b["final"]["last"]["step"] == 3


def test_window_normalisation_is_not_per_micro_batch(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The normaliser is the window's token count: check it against a recount of the data."""
    seen = []
    original = engine.losses.seed_loss

    def spy(*args, **kwargs):
        seen.append((args[0].shape[0], kwargs["num_tokens"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.losses, "seed_loss", spy)
    engine.distill(config(data_dir, tmp_path / "r", max_steps=1, batch_size=1, grad_accum=4), NullReporter())
    assert len(seen) == 4
    assert len({n for _, n in seen}) == 1 and seen[0][1] == sum(rows for rows, _ in seen)


class _InterruptAt:
    """A reporter that sends SIGINT to this process when a given step is logged."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.inner = NullReporter()

    def task(self, *args, **kwargs):
        return self.inner.task(*args, **kwargs)

    def log(self, fields) -> None:
        if fields["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


def test_resume_after_sigint_equals_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "straight", max_steps=4, lora_dropout=0.1, save_every=100)
    engine.distill(cfg, NullReporter())
    broken = replace(cfg, out=str(tmp_path / "resumed"))
    with pytest.raises(Interrupted, match="--resume"):
        engine.distill(broken, _InterruptAt(2))
    assert not (tmp_path / "resumed" / "summary.json").exists()
    assert (tmp_path / "resumed" / "checkpoints" / "step-2" / "state.json").is_file()
    engine.distill(replace(broken, resume=True), NullReporter())
    straight, resumed = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "resumed")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    assert metrics(tmp_path / "resumed")[-1]["loss"] == pytest.approx(
        metrics(tmp_path / "straight")[-1]["loss"], rel=1e-6
    )


def test_resume_refuses_a_conflicting_flag(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tmp_path / "r", max_steps=2)
    with pytest.raises(Interrupted):
        engine.distill(cfg, _InterruptAt(1))
    with pytest.raises(ConfigError, match="--temperature"):
        engine.distill(replace(cfg, resume=True, temperature=3.0), NullReporter())


def test_sft_has_no_kl_term_and_no_teacher_pass(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def no_teacher(*args, **kwargs):
        raise AssertionError("SFT must not run the teacher")

    monkeypatch.setattr(engine, "_teacher", no_teacher)
    summary = engine.distill(config(data_dir, tmp_path / "sft", method="sft"), NullReporter())
    rows = metrics(tmp_path / "sft")
    assert all(r["kl"] is None and r["beta"] is None for r in rows)
    assert all(r["ce"] == pytest.approx(r["loss"]) for r in rows)
    assert summary["final"]["mean_kl"] is None


def test_sanity_check_fires_when_noise_does_not_change_the_teacher(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inactive"):
        engine.distill(config(data_dir, tmp_path / "r", noise_alpha=1.0), NullReporter())


def test_sanity_check_fires_when_a_base_weight_is_trainable(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    wrap = engine._wrap

    def leaky(model, cfg, family):
        wrapped = wrap(model, cfg, family)
        wrapped.get_base_model().get_output_embeddings().weight.requires_grad_(True)
        return wrapped

    monkeypatch.setattr(engine, "_wrap", leaky)
    with pytest.raises(SeedError, match="only the adapter"):
        engine.distill(config(data_dir, tmp_path / "r"), NullReporter())


def test_sanity_check_fires_when_the_teacher_is_not_the_base(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    wrap = engine._wrap

    def drifted(model, cfg, family):
        wrapped = wrap(model, cfg, family)
        with torch.no_grad():
            wrapped.get_base_model().get_output_embeddings().weight.mul_(1.5)
        return wrapped

    monkeypatch.setattr(engine, "_wrap", drifted)
    with pytest.raises(SeedError, match="teacher"):
        engine.distill(config(data_dir, tmp_path / "r"), NullReporter())


def test_non_finite_losses_skip_steps_then_stop_after_saving(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    original = engine.losses.seed_loss

    def poisoned(*args, **kwargs):
        parts = original(*args, **kwargs)
        return replace(parts, total=parts.total * float("nan"))

    monkeypatch.setattr(engine.losses, "seed_loss", poisoned)
    run = tmp_path / "r"
    with pytest.raises(SeedError, match="non-finite"):
        engine.distill(config(data_dir, run, max_steps=5, max_nonfinite=2), NullReporter())
    saved = engine.checkpoint.newest(run / "checkpoints")
    assert saved is not None
    state = json.loads((saved / "state.json").read_text())
    assert state["counters"]["skipped_steps"] == 2
    weights = load_file(str(saved / "adapter" / "adapter_model.safetensors"))
    assert all(v.abs().sum() == 0 for k, v in weights.items() if "lora_B" in k), (
        "skipped steps must not update the adapter"
    )
    assert state["position"] == {"round": 1, "step": 1}, "saved before the second bad step: the last good state"
    assert not (run / "summary.json").exists()


def test_two_rounds_of_self_evolution(data_dir: Path, tmp_path: Path) -> None:
    from seedcli.rundir import open_run

    run = tmp_path / "evolve"
    summary = engine.distill(config(data_dir, run, rounds=2, max_steps=2), NullReporter())
    chain = open_run(run).adapter_chain()
    assert [p.parent.name for p in chain] == ["round-1", "round-2"]
    assert [r["round"] for r in summary["round_results"]] == [1, 2]
    first, second = (load_file(str(p / "adapter_model.safetensors")) for p in chain)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    final = adapter_tensors(run)
    assert all(torch.equal(final[k], second[k]) for k in final)


def test_existing_run_directory_is_never_overwritten(data_dir: Path, tmp_path: Path, cli) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    code, out, err = cli(
        ["distill", "--model", "tiny-llava", "--data", str(data_dir), "--out", str(run), "--max-steps", "1"]
    )
    assert code == 2 and "--overwrite" in err and out == ""
    assert (run / "precious.txt").read_text() == "keep me"


def test_cli_passes_flags_to_the_library(monkeypatch, cli, tmp_path: Path) -> None:
    received = {}

    def fake(cfg, reporter, **kwargs):
        received["cfg"] = cfg
        return {"run_dir": str(tmp_path / "x")}

    monkeypatch.setattr(engine, "distill", fake)
    monkeypatch.setattr(seedcli.cli.distill, "_after_training", lambda *args: None)  # no run directory to describe
    code, out, _ = cli(
        [
            "distill",
            "--model",
            "llava-1.5-7b",
            "--lr",
            "1e-5",
            "--beta-values",
            "1.0,0.5",
            "--beta-quantiles",
            "0.5",
            "--method",
            "sft",
            "--noise-step",
            "500",
            "--no-gradient-checkpointing",
        ]
    )
    assert code == 0 and out.strip() == str(tmp_path / "x")
    cfg = received["cfg"]
    assert (cfg.model, cfg.lr, cfg.beta_values, cfg.beta_quantiles, cfg.method, cfg.noise_step) == (
        "llava-1.5-7b",
        1e-5,
        (1.0, 0.5),
        (0.5,),
        "sft",
        500,
    )
    assert cfg.data == "seed-data" and cfg.out is None


def test_bad_flag_combinations_name_the_flag(cli) -> None:
    code, _, err = cli(["distill", "--beta-values", "1,2", "--beta-quantiles", "0.25,0.5"])
    assert code == 2 and "--beta-values" in err
    code, _, err = cli(["distill", "--noise-alpha", "0"])
    assert code == 2 and "--noise-alpha" in err
    code, _, err = cli(["distill", "--data", "/nonexistent/seed-data", "--model", "tiny-llava"])
    assert code == 3 and "--data" in err


def test_a_failed_start_leaves_no_run_directory(data_dir: Path, tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["distill", "--model", "tiny-llava", "--data", str(tmp_path / "missing")])
    assert code == 3 and "--data" in err
    code, _, err = cli(["distill", "--model", "/no/such/model", "--data", str(data_dir), "--max-steps", "1"])
    assert code == 4 and "--model" in err
    assert not (tmp_path / "runs").exists(), "a run that failed before training must not leave a directory"


def test_per_token_entropy_identification_ranks_peaked_tokens_as_confident() -> None:
    from types import SimpleNamespace

    cfg = DistillConfig(identify="token", token_confidence="entropy")
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    flat = torch.zeros(1, 4)
    micro = SimpleNamespace(sup=None, samples=1)
    conf = engine._confidence(cfg, torch.cat([peaked, flat]), micro)
    assert conf[0] > conf[1], "lower entropy must mean higher confidence (and so a smaller beta)"
    history = engine.purify.ConfidenceHistory(10)
    cfg_q = replace(cfg, beta_quantiles=(0.5,), beta_values=(1.1, 0.4))
    betas = engine._betas(cfg_q, history, conf)
    assert betas.tolist() == pytest.approx([0.4, 1.1])
