"""Model name resolution and the family table."""

from __future__ import annotations

import re

import pytest

from seedcli.errors import ModelError
from seedcli.models.families import ALIASES, FAMILIES, family_for, resolve


@pytest.mark.parametrize(
    ("alias", "hub_id"),
    [
        ("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf"),
        ("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf"),
        ("qwen2-vl-2b", "Qwen/Qwen2-VL-2B-Instruct"),
        ("qwen2-vl-7b", "Qwen/Qwen2-VL-7B-Instruct"),
        ("internvl3-2b", "OpenGVLab/InternVL3-2B-hf"),
        ("smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct"),
    ],
)
def test_aliases_resolve_to_hub_ids(alias: str, hub_id: str) -> None:
    ref = resolve(alias)
    assert (ref.source, ref.kind) == (hub_id, "alias")


def test_hub_id_and_local_directory(tmp_path) -> None:
    assert resolve("someone/some-vlm").kind == "hub"
    (tmp_path / "config.json").write_text("{}")
    ref = resolve(str(tmp_path))
    assert ref.kind == "local" and ref.source == str(tmp_path.resolve())


def test_bad_names_are_actionable_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="alias"):
        resolve("not-a-model")
    with pytest.raises(ModelError, match="config.json"):
        resolve(str(tmp_path))  # a directory without a config (e.g. a run directory)
    with pytest.raises(ModelError, match="empty"):
        resolve(" ")


def test_family_lookup_by_model_type() -> None:
    assert family_for("llava").name == "llava"
    assert family_for("qwen2_vl").name == "qwen2-vl"
    assert family_for("smolvlm").name == "idefics3"
    with pytest.raises(ModelError, match="not supported"):
        family_for("bert")


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_lora_regex_hits_language_attention_only(family) -> None:
    pattern = re.compile(family.lora_target_regex())
    layers = family.language_layers.replace("\\", "")
    assert pattern.fullmatch(f"model.{layers}.3.self_attn.q_proj")
    assert pattern.fullmatch(f"model.{layers}.12.self_attn.o_proj")
    assert not pattern.fullmatch(f"model.{layers}.3.mlp.up_proj")
    for vision in (
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
        "model.visual.blocks.0.attn.qkv",
        "model.vision_model.encoder.layers.0.self_attn.k_proj",
        "model.vision_tower.encoder.layer.0.attention.q_proj",
    ):
        assert not pattern.fullmatch(vision), vision


def test_alias_table_has_the_required_models() -> None:
    for alias in ("llava-1.5-7b", "llava-1.5-13b", "qwen2-vl-2b", "qwen2-vl-7b"):
        assert alias in ALIASES
