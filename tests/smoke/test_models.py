"""Tiny offline models: loading, forward, generate, adapter targets, label masks."""

from __future__ import annotations

import re

import pytest
import torch

from seedcli.errors import DataError
from seedcli.models.chat import IGNORE, collate, encode, encode_prompt
from seedcli.models.forward import model_inputs, supervised, supervised_logits
from seedcli.models.loading import load

pytestmark = pytest.mark.smoke

TWO_TURNS = [
    {"role": "user", "content": "Is there a dog in the image?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "How many objects are in the image?"},
    {"role": "assistant", "content": "Two objects."},
]


def _supervised_tokens(loaded, encoded) -> list[str]:
    return loaded.processor.tokenizer.convert_ids_to_tokens([t for t in encoded.labels if t != IGNORE])


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_tiny_models_load_forward_and_generate(name: str, red_image) -> None:
    loaded = load(name, device="cpu")
    assert loaded.ref.kind == "tiny" and loaded.dtype == torch.float32
    enc = encode_prompt(loaded.processor, loaded.family, "Is there a dog in the image?", red_image)
    batch = collate([enc, enc], pad_id=loaded.processor.tokenizer.pad_token_id, padding_side="left")
    batch.pop("labels")
    with torch.no_grad():
        out = loaded.model(**batch)
        assert out.logits.shape[:2] == batch["input_ids"].shape
        assert torch.isfinite(out.logits).all()
        generated = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert (
        generated.shape == (2, batch["input_ids"].shape[1] + 4) or generated.shape[1] <= batch["input_ids"].shape[1] + 4
    )
    assert torch.equal(generated[0], generated[1])  # same input twice -> same greedy output


def test_tiny_models_are_deterministic_builds(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    from seedcli.models.tiny import ensure_tiny

    first = load_file(str(ensure_tiny("tiny-llava") / "model.safetensors"))
    monkeypatch.setenv("SEEDCLI_CACHE", str(tmp_path))
    rebuilt_dir = ensure_tiny("tiny-llava")
    assert str(rebuilt_dir).startswith(str(tmp_path))
    second = load_file(str(rebuilt_dir / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_adapter_targets_are_language_model_attention_only(fixture: str, request) -> None:
    from peft import LoraConfig, get_peft_model

    loaded = request.getfixturevalue(fixture)
    pattern = re.compile(loaded.family.lora_target_regex())
    names = [name for name, _ in loaded.model.named_modules() if pattern.fullmatch(name)]
    layers = loaded.model.config.text_config.num_hidden_layers
    assert len(names) == 4 * layers
    assert all("language_model" in n for n in names)
    vision = [
        n
        for n, _ in loaded.model.named_modules()
        if ("vision" in n or "visual" in n) and n.endswith(("q_proj", "k_proj", "v_proj", "qkv", "out_proj", "proj"))
    ]
    assert vision, "the tiny model must have vision attention modules for this test to mean anything"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=loaded.family.lora_target_regex(), init_lora_weights=False)
    peft_model = get_peft_model(_fresh(loaded), config)
    lora = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert len(lora) == 4 * layers
    assert not any("vision" in n or "visual" in n for n in lora)


def _fresh(loaded):
    from seedcli.models.loading import load as reload

    return reload(loaded.ref.name, device="cpu").model


def test_label_mask_single_turn_llava(tiny_llava, red_image) -> None:
    messages = TWO_TURNS[:2]
    enc = encode(tiny_llava.processor, tiny_llava.family, messages, red_image)
    tokens = tiny_llava.processor.tokenizer.convert_ids_to_tokens(enc.input_ids)
    # user: <image>x16 is there a dog in the image ? assistant : yes . </s>
    assert tokens.count("<image>") == 16
    assert _supervised_tokens(tiny_llava, enc) == ["yes", ".", "</s>"]
    supervised_positions = [i for i, t in enumerate(enc.labels) if t != IGNORE]
    assert supervised_positions == [len(tokens) - 3, len(tokens) - 2, len(tokens) - 1]
    assert tokens[supervised_positions[0] - 2 : supervised_positions[0]] == ["assistant", ":"]


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_label_mask_multi_turn_token_by_token(fixture: str, request, red_image) -> None:
    loaded = request.getfixturevalue(fixture)
    enc = encode(loaded.processor, loaded.family, TWO_TURNS, red_image)
    tokens = loaded.processor.tokenizer.convert_ids_to_tokens(enc.input_ids)
    end = "</s>" if loaded.family.name == "llava" else "<|im_end|>"
    expected = []
    # Token by token: supervised exactly on each answer and its end token, nowhere else.
    answers = [["yes", "."], ["two", "objects", "."]]
    cursor = 0
    for answer in answers:
        start = next(
            i
            for i in range(cursor, len(tokens))
            if tokens[i : i + len(answer)] == answer and tokens[i - 1] in (":", "assistant")
        )
        expected.extend(range(start, start + len(answer) + 1))
        cursor = start + len(answer)
    got = [i for i, t in enumerate(enc.labels) if t != IGNORE]
    assert got == expected
    assert [tokens[i] for i in got] == ["yes", ".", end, "two", "objects", ".", end]
    assert all(enc.labels[i] == enc.input_ids[i] for i in got)


def test_label_mask_with_generation_markers(tiny_llava, red_image) -> None:
    import copy

    processor = copy.deepcopy(tiny_llava.processor)
    processor.chat_template = (
        "{% for m in messages %}{{ m['role'] + ' : ' }}"
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image> {% endif %}{% endfor %}"
        "{% if m['role'] == 'assistant' %}{% generation %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ "
        "p['text'] }}{% endif %}{% endfor %}{% endgeneration %}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% "
        "endif %} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    enc = encode(processor, tiny_llava.family, TWO_TURNS, red_image)
    assert _supervised_tokens(tiny_llava, enc) == ["yes", ".", "</s>", "two", "objects", ".", "</s>"]
    assert enc.input_ids.count(processor.tokenizer.convert_tokens_to_ids("<image>")) == 16


def test_zero_supervised_tokens_is_an_error(tiny_llava, red_image) -> None:
    with pytest.raises(DataError, match="no supervised"):
        encode(tiny_llava.processor, tiny_llava.family, [{"role": "user", "content": "hello"}], red_image)


def test_truncation_never_cuts_image_tokens(tiny_llava, red_image) -> None:
    full = encode(tiny_llava.processor, tiny_llava.family, TWO_TURNS, red_image)
    short = encode(tiny_llava.processor, tiny_llava.family, TWO_TURNS, red_image, max_length=len(full.input_ids) - 4)
    assert short.input_ids == full.input_ids[: len(full.input_ids) - 4]
    assert short.num_supervised == 3  # the first answer survives, the second was cut
    with pytest.raises(DataError, match="image tokens"):
        encode(tiny_llava.processor, tiny_llava.family, TWO_TURNS, red_image, max_length=10)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_supervised_logits_equal_full_logits_at_those_positions(fixture: str, request, red_image) -> None:
    loaded = request.getfixturevalue(fixture)
    a = encode(loaded.processor, loaded.family, TWO_TURNS, red_image)
    b = encode(loaded.processor, loaded.family, TWO_TURNS[:2], red_image)
    batch = collate([a, b], pad_id=loaded.processor.tokenizer.pad_token_id)
    sup = supervised(batch["labels"])
    assert sup.count == a.num_supervised + b.num_supervised
    with torch.no_grad():
        picked = supervised_logits(loaded.model, model_inputs(batch), sup.mask)
        full = loaded.model(**model_inputs(batch)).logits[:, :-1][sup.mask]
    torch.testing.assert_close(picked, full)


def test_four_bit_loading_on_cpu(red_image) -> None:
    try:
        loaded = load("tiny-llava", device="cpu", quantization="4bit")
    except Exception as exc:  # bitsandbytes CPU support varies by build
        pytest.skip(f"bitsandbytes 4-bit cannot run here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    linear4 = [n for n, m in loaded.model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert linear4 and all("vision_tower" not in n and "multi_modal_projector" not in n for n in linear4)
    enc = encode_prompt(loaded.processor, loaded.family, "Is there a dog?", red_image)
    batch = collate([enc], pad_id=loaded.processor.tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batch).logits).all()
