"""World pretraining of a tiny rung with a very small budget: deterministic, cached once, loadable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from seedcli.detect import pretrain

pytestmark = pytest.mark.smoke

TINY = dataclasses.replace(pretrain.RECIPE, scenes=6, steps=4, caption_only_steps=2, batch_size=4, held_out_scenes=3)


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_build_is_deterministic(tmp_path: Path) -> None:
    import torch

    from seedcli.models.tiny import ensure_tiny

    first = pretrain.build("tiny-qwen2-vl-s", tmp_path / "a", TINY)
    second = pretrain.build("tiny-qwen2-vl-s", tmp_path / "b", TINY)
    assert first["losses"] == second["losses"] and len(first["losses"]["question"]) > 0
    assert first["held_out"] == second["held_out"] and [r["step"] for r in first["held_out"]] == [1, 2, 3, 4]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = _weights(ensure_tiny("tiny-qwen2-vl-s"))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # the weights did train
    meta = json.loads((tmp_path / "a" / pretrain.META_FILE).read_text())
    assert meta["base"] == "tiny-qwen2-vl-s" and meta["recipe"]["steps"] == 4


def test_world_rung_is_built_once_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seedcli.detect.infer import predict
    from seedcli.detect.items import Item, Option
    from seedcli.models import tiny
    from seedcli.models.loading import load

    monkeypatch.setenv("SEEDCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrain, "RECIPE", TINY)
    calls = []
    real = pretrain.build
    monkeypatch.setattr(pretrain, "build", lambda base, out: calls.append(base) or real(base, out))
    path = tiny.ensure_tiny("tiny-qwen2-vl-s-world")
    assert tiny.ensure_tiny("tiny-qwen2-vl-s-world") == path and calls == ["tiny-qwen2-vl-s"]
    assert path.name == f"tiny-qwen2-vl-s-world-{tiny.fingerprint('tiny-qwen2-vl-s-world')}"
    loaded = load("tiny-qwen2-vl-s-world", dtype="fp32", device="cpu")
    image = tmp_path / "x.png"
    pretrain.corpus(1, 0).images[0].save(image)
    item = Item("x", image, 1, "There is a big fork.", None, (Option("A", "big fork", "attribute"),), ())
    (probs,) = predict(loaded, loaded.model, [item], shifts=1, batch_size=4)
    assert 0.0 < probs[0] < 1.0
