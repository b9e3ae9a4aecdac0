"""`seed merge` on tiny models: merged == attached adapter, Auto-class loading, chains, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from seedcli import __version__

pytestmark = pytest.mark.smoke

CHECK_PROMPT = "Is there a cat in the image?"


def make_run(root: Path, model: str, *, rounds: int = 1, settings: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A finished run directory per seedcli.rundir's contract, with non-identity LoRA adapters.

    With rounds > 1, round K's adapter is created on the base with rounds 1..K-1 merged in.
    """
    from peft import LoraConfig, get_peft_model

    from seedcli.models.loading import load

    loaded = load(model, device="cpu")
    base = loaded.model
    torch.manual_seed(seed)
    last = root / "adapter"
    for k in range(1, rounds + 1):
        config = LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, target_modules=loaded.family.lora_target_regex()
        )
        peft_model = get_peft_model(base, config)
        last = root / "rounds" / f"round-{k}" / "adapter" if rounds > 1 else root / "adapter"
        peft_model.save_pretrained(str(last))
        base = peft_model.merge_and_unload()
    if rounds > 1:
        shutil.copytree(last, root / "adapter")
    run_config = {
        "model": model,
        "method": "seed",
        "rounds": rounds,
        "lora_r": 4,
        "lora_alpha": 8,
        "temperature": 2.0,
        "distill_weight": 0.7,
        "quantization": "none",
        **(settings or {}),
    }
    (root / "config.json").write_text(
        json.dumps(
            {
                "seedcli_version": __version__,
                "command": "distill",
                "config": run_config,
                "resolved": {"family": loaded.family.name},
            }
        )
    )
    (root / "summary.json").write_text(json.dumps({"steps": 0}))
    return root


def check_inputs(loaded: Any) -> dict[str, Any]:
    """A batch the merge's own probe never uses: another prompt and a red image."""
    from PIL import Image

    from seedcli.models.chat import collate, encode_prompt

    enc = encode_prompt(loaded.processor, loaded.family, CHECK_PROMPT, Image.new("RGB", (48, 40), (200, 30, 30)))
    batch = collate([enc], pad_id=loaded.processor.tokenizer.pad_token_id)
    batch.pop("labels")
    return batch


def logits_of(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def attached_logits(model_name: str, chain: list[Path], batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(base logits, logits of base with rounds 1..N-1 merged and round N attached), built here with PEFT."""
    from peft import PeftModel

    from seedcli.models.loading import load

    model = load(model_name, device="cpu").model
    base = logits_of(model, batch)
    for path in chain[:-1]:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(chain[-1])).eval()
    return base, logits_of(model, batch)


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_merged_logits_equal_attached_adapter(name: str, tmp_path: Path, cli) -> None:
    from transformers import AutoModelForImageTextToText

    from seedcli.models.loading import load

    run = make_run(tmp_path / "run", name)
    out = tmp_path / "merged"
    code, stdout, stderr = cli(["merge", str(run), "--out", str(out), "--max-shard-size", "1MB"])
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out.resolve())
    assert len(list(out.glob("model-*.safetensors"))) >= 2 and (out / "model.safetensors.index.json").is_file()

    batch = check_inputs(load(name, device="cpu"))
    base, attached = attached_logits(name, [run / "adapter"], batch)
    merged = logits_of(AutoModelForImageTextToText.from_pretrained(str(out)).eval(), batch)
    assert (attached - base).abs().max() > 0.1, "the adapter must change the logits for this test to mean anything"
    torch.testing.assert_close(merged, attached, atol=1e-4, rtol=1e-4)
    assert (merged - base).abs().max() > 0.1


def test_merged_directory_loads_with_auto_classes_and_generates(tmp_path: Path, cli) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from seedcli.models.families import FAMILIES
    from seedcli.models.loading import load

    run = make_run(tmp_path / "run", "tiny-llava", settings={"noise_alpha": 0.3})
    out = tmp_path / "merged"
    code, _, stderr = cli(["merge", str(run), "--out", str(out), "--json"])
    assert code == 0, stderr
    for name in (
        "config.json",
        "generation_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "processor_config.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "| `noise_alpha` | `0.3` |" in card and str(run) in card and "seedcli-merged" in card
    assert json.loads((out / "config.json").read_text())["seedcli_merge"]["source"] == str(run.resolve())

    model = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    processor = AutoProcessor.from_pretrained(str(out))
    merged_loaded = type("L", (), {"processor": processor, "family": FAMILIES["llava"]})()
    batch = check_inputs(merged_loaded)
    reference = PeftModel.from_pretrained(load("tiny-llava", device="cpu").model, str(run / "adapter")).eval()
    with torch.no_grad():
        got = model.generate(**batch, max_new_tokens=6, do_sample=False)
        want = reference.generate(**batch, max_new_tokens=6, do_sample=False)
    assert got.shape[1] > batch["input_ids"].shape[1]
    assert torch.equal(got, want)


def test_two_round_chain_merges_to_sequential_result(tmp_path: Path, cli) -> None:
    from transformers import AutoModelForImageTextToText

    from seedcli.models.loading import load

    run = make_run(tmp_path / "run", "tiny-llava", rounds=2)
    out = tmp_path / "merged"
    code, _, stderr = cli(["merge", str(run), "--out", str(out)])
    assert code == 0, stderr
    batch = check_inputs(load("tiny-llava", device="cpu"))
    chain = [run / "rounds/round-1/adapter", run / "rounds/round-2/adapter"]
    _, sequential = attached_logits("tiny-llava", chain, batch)
    _, last_only = attached_logits("tiny-llava", chain[1:], batch)
    merged = logits_of(AutoModelForImageTextToText.from_pretrained(str(out)).eval(), batch)
    torch.testing.assert_close(merged, sequential, atol=1e-4, rtol=1e-4)
    assert (merged - last_only).abs().max() > 0.1, "round 1 must matter"
    assert json.loads((out / "config.json").read_text())["seedcli_merge"]["adapters"] == [
        str(p.resolve()) for p in chain
    ]


def test_refuses_quantized_base(tmp_path: Path, cli) -> None:
    from seedcli.models.tiny import ensure_tiny

    run = make_run(tmp_path / "run", "tiny-llava", settings={"quantization": "4bit"})
    out = tmp_path / "merged"
    code, _, stderr = cli(["merge", str(run), "--out", str(out)])
    assert code == 2 and "--dequantize" in stderr and "4bit" in stderr
    assert not out.exists()

    # A pre-quantized checkpoint (bitsandbytes config in config.json) is refused the same way.
    base = tmp_path / "base-4bit"
    shutil.copytree(ensure_tiny("tiny-llava"), base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    code, _, stderr = cli(["merge", str(run / "adapter"), "--model", str(base), "--out", str(out)])
    assert code == 2 and "--dequantize" in stderr and "stored" in stderr
    assert not out.exists()


def test_merging_a_merged_output_is_a_no_op(tmp_path: Path, cli) -> None:
    run = make_run(tmp_path / "run", "tiny-llava")
    out = tmp_path / "merged"
    assert cli(["merge", str(run), "--out", str(out)])[0] == 0
    before = tree_digest(out)
    again = tmp_path / "again"
    code, stdout, stderr = cli(["merge", str(out), "--out", str(again)])
    assert code == 0, stderr
    assert "already a merged model" in stderr
    assert stdout.strip().splitlines()[-1] == str(out.resolve())
    assert not again.exists() and tree_digest(out) == before


def test_existing_out_needs_overwrite(tmp_path: Path, cli) -> None:
    run = make_run(tmp_path / "run", "tiny-llava")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = cli(["merge", str(run), "--out", str(out)])
    assert code == 2 and "--overwrite" in stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "run"]
    code, _, stderr = cli(["merge", str(run), "--out", str(out), "--overwrite"])
    assert code == 0, stderr
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_failed_verification_leaves_nothing(tmp_path: Path, cli, monkeypatch) -> None:
    import seedcli.merge

    run = make_run(tmp_path / "run", "tiny-llava")
    out = tmp_path / "merged"
    # A negative bound: no merge can pass, so the failure path must run and clean up.
    monkeypatch.setitem(seedcli.merge.TOLERANCES, "fp32", (-1.0, 0.0))
    code, stdout, stderr = cli(["merge", str(run), "--out", str(out)])
    assert code == 4 and "verification failed" in stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert stdout == ""


def test_foreign_peft_adapter_needs_model(tmp_path: Path, cli) -> None:
    from transformers import AutoModelForImageTextToText

    from seedcli.models.loading import load

    run = make_run(tmp_path / "run", "tiny-qwen2-vl", seed=3)
    foreign = tmp_path / "foreign-adapter"
    shutil.copytree(run / "adapter", foreign)
    out = tmp_path / "merged"
    code, _, stderr = cli(["merge", str(foreign), "--out", str(out)])
    assert code == 2 and "--model is required" in stderr
    code, _, stderr = cli(["merge", str(foreign), "--model", "tiny-qwen2-vl", "--out", str(out)])
    assert code == 0, stderr
    batch = check_inputs(load("tiny-qwen2-vl", device="cpu"))
    _, attached = attached_logits("tiny-qwen2-vl", [foreign], batch)
    merged = logits_of(AutoModelForImageTextToText.from_pretrained(str(out)).eval(), batch)
    torch.testing.assert_close(merged, attached, atol=1e-4, rtol=1e-4)
