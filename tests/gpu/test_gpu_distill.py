"""GPU tier (opt-in: pytest --gpu): the same engine on CUDA, bf16, and a 4-bit base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seedcli.config.distill import DistillConfig
from seedcli.core.distill import distill
from seedcli.reporting import NullReporter
from tests.smoke.test_distill import write_train_data

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_distill_on_cuda_bf16(model: str, quantization: str, tmp_path: Path) -> None:
    data = write_train_data(tmp_path / "data")
    cfg = DistillConfig(
        model=model,
        data=str(data),
        out=str(tmp_path / "run"),
        device="cuda",
        dtype="bf16",
        quantization=quantization,
        max_steps=4,
        batch_size=2,
        grad_accum=2,
        lr=1e-3,
        lora_r=8,
        lora_alpha=16,
        log_every=1,
    )
    summary = distill(cfg, NullReporter())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["kl"]])).all() for r in rows)
    assert all(r["kl"] > 0 for r in rows)
    assert summary["final"]["skipped_steps"] == 0
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["devices"]["cuda_available"]
