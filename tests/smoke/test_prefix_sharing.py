"""POPE prefix sharing: one prefilled prefix per image, questions continued from copies of its KV cache."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from seedcli.evals.generation import (
    Decoding,
    PrefixMemo,
    encode_all,
    encode_by_image,
    generate,
    plan,
    prefill,
    prefill_shared,
    to_batch,
)
from seedcli.evals.pope_logits import answer_tokens, score_logits
from seedcli.models.chat import encode_prompt

pytestmark = pytest.mark.smoke

QUESTIONS = [
    "Is there a dog in the image?\nAnswer the question using a single word or phrase.",
    "Is there a red car on the left of the image?",
    "what",
    "Is there a cat in the image?\nAnswer the question using a single word or phrase.",
]
COLORS = [(200, 30, 30), (10, 200, 10), (10, 10, 200)]
MIXED = ((40, 40), (84, 56), (56, 112))


def _items(sizes: tuple[tuple[int, int], ...] = ((40, 40),) * 3) -> tuple[list[str], list[Image.Image]]:
    """Every question about every image, interleaved, with one exact repeat (image 0, question 0) at the end."""
    images = [Image.new("RGB", size, color) for size, color in zip(sizes, COLORS)]
    for i, image in enumerate(images):
        image.paste((255 - COLORS[i][0], 60 * i, 0), (4 * i, 4, 20 + 3 * i, 30))
    pairs = [(q, image) for q in QUESTIONS for image in images] + [(QUESTIONS[0], images[0])]
    return [p for p, _ in pairs], [i for _, i in pairs]


@pytest.mark.parametrize(
    ("fixture", "sizes"),
    [
        ("tiny_llava", ((40, 40),) * 3),
        ("tiny_qwen", ((40, 40),) * 3),
        # Qwen2-VL gives each image as many tokens as its size needs: prefixes of different lengths in one batch.
        ("tiny_qwen", MIXED),
    ],
)
def test_shared_prefix_logits_and_steps_equal_a_full_prefill(fixture: str, sizes, request) -> None:
    """Same logits after the prompt and after two fed tokens: the cache copies and positions are right."""
    loaded = request.getfixturevalue(fixture)
    prompts, images = _items(sizes)
    encoded = [encode_prompt(loaded.processor, loaded.family, p, i) for p, i in zip(prompts, images)]
    pad = loaded.processor.tokenizer.pad_token_id
    fed = torch.tensor([[7, 9]] * len(encoded))
    with torch.no_grad():
        full = prefill(loaded.model, loaded.family, to_batch(encoded, pad=pad, device="cpu", dtype=torch.float32))
        shared = prefill_shared(loaded.model, loaded.family, encoded, pad=pad, device="cpu", dtype=torch.float32)
        assert shared is not None, "these prompts put the whole image in the shared prefix"
        # Three images: three prefix rows, copied to one row per prompt; the copies hold far fewer columns
        # than a full prefill would need if the prefix were not shared.
        assert shared.mask.shape[0] == len(encoded)
        assert shared.mask.shape[1] < 2 * max(len(e.input_ids) for e in encoded)
        for step in range(3):
            # A position off by one moves these logits by ~1e-2 on the tiny models.
            assert torch.allclose(shared.logits, full.logits, atol=1e-4), step
            if step < 2:
                full.advance(fed[:, step])
                shared.advance(fed[:, step])


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
@pytest.mark.parametrize(
    "decoding",
    [
        Decoding(mode="greedy", max_new_tokens=5),
        Decoding(mode="sample", max_new_tokens=4, seed=3),
        Decoding(mode="vcd", max_new_tokens=4, seed=1),
    ],
    ids=["greedy", "sample", "vcd"],
)
def test_shared_answers_equal_unshared_answers(fixture: str, decoding: Decoding, request) -> None:
    loaded = request.getfixturevalue(fixture)
    # Qwen2-VL: images of different sizes, so the images' prompts differ in length and image tokens.
    prompts, images = _items(MIXED if fixture == "tiny_qwen" else ((40, 40),) * 3)
    args = (loaded.model, loaded.processor, loaded.family, prompts, images, decoding)
    unshared = generate(*args, batch_size=5)
    shared = generate(*args, batch_size=5, share_prefix=True)
    assert shared == unshared
    assert len(set(unshared)) > 3, "different inputs should give different answers on the tiny model"
    assert shared[-1] == shared[0]  # the repeat was answered once and handed to both


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_shared_logit_scoring_equals_unshared(fixture: str, request) -> None:
    loaded = request.getfixturevalue(fixture)
    prompts, images = _items()
    tokens = answer_tokens(loaded.processor.tokenizer)
    args = (loaded.model, loaded.processor, loaded.family, prompts, images, tokens)
    unshared = score_logits(*args, batch_size=4)
    shared = score_logits(*args, batch_size=4, share_prefix=True)
    assert [s["answer"] for s in shared] == [u["answer"] for u in unshared]
    for s, u in zip(shared, unshared):
        assert s["yes_score"] == pytest.approx(u["yes_score"], abs=1e-4)
        assert s["no_score"] == pytest.approx(u["no_score"], abs=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_an_image_with_more_prompts_than_a_batch_prefills_its_prefix_once(fixture: str, request, monkeypatch) -> None:
    from seedcli.evals import generation

    loaded = request.getfixturevalue(fixture)
    images = [Image.new("RGB", (40, 40), color) for color in COLORS[:2]]
    questions = [f"Is there a {word} in the image?" for word in ("dog", "cat", "car", "cup", "red dog")]
    prompts = [q for _ in images for q in questions]
    pictures = [image for image in images for _ in questions]
    greedy = Decoding(mode="greedy", max_new_tokens=3)
    unshared = generate(loaded.model, loaded.processor, loaded.family, prompts, pictures, greedy, batch_size=2)
    real, fresh = generation._forward, []

    def counting(model, cache, inputs, name):  # noqa: ANN001, ANN202
        fresh.extend([1] if cache is None else [])
        return real(model, cache, inputs, name)

    monkeypatch.setattr(generation, "_forward", counting)
    shared = generate(
        loaded.model, loaded.processor, loaded.family, prompts, pictures, greedy, batch_size=2, share_prefix=True
    )
    assert shared == unshared
    # Batches [a a] [a a] [a b] [b b] [b b]: the first and the third prefill prefixes (one call each); the
    # second continues from a's prefix, the fourth and fifth from b's.
    assert len(fresh) == 2


def test_decoding_gives_no_cache_deprecation_warning(tiny_qwen, capfd) -> None:
    """transformers 5.24 deprecates `past_key_values`; the loop must use the cache argument the model takes."""
    prompts, images = _items()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(tiny_qwen.model, tiny_qwen.processor, tiny_qwen.family, prompts[:4], images[:4], Decoding("vcd", 3))
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert "past_key_values" not in capfd.readouterr().err


def test_plan_answers_each_distinct_item_once_grouped_by_image() -> None:
    prompts = ["a", "b", "a", "c", "a"]
    images = ["x.png", "y.png", "x.png", "x.png", "y.png"]
    batches, source = plan(prompts, images, batch_size=2, share_prefix=True)
    assert source == [0, 1, 0, 3, 4]
    assert batches == [[0, 3], [1, 4]]  # image x's prompts, then image y's
    batches, _ = plan(prompts, images, batch_size=3, share_prefix=True)
    assert batches == [[0, 3, 1], [4]]  # full batches
    batches, source = plan(prompts, images, batch_size=2, share_prefix=False)
    assert batches == [[0, 1], [2, 3], [4]] and source == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("fixture", "sizes"), [("tiny_llava", ((40, 40),) * 3), ("tiny_qwen", MIXED)])
def test_encode_by_image_equals_the_processor_and_runs_it_once_per_image(fixture: str, sizes, request, monkeypatch):
    """Prompts encoded from their image's first processor output equal the processor's own encodings."""
    from seedcli.models import chat

    loaded = request.getfixturevalue(fixture)
    processor, family = loaded.processor, loaded.family
    prompts, images = _items(sizes)
    want = encode_all(processor, family, prompts, images)
    real, calls = chat.encode_prompt, []

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chat, "encode_prompt", counting)
    # Two calls, as `seed evaluate` makes one per batch: the memo carries the first call's last image (the
    # third) into the second call; the other two images go through the processor once per call.
    memo = PrefixMemo()
    got = encode_by_image(processor, family, prompts[:6], images[:6], memo)
    got += encode_by_image(processor, family, prompts[6:], images[6:], memo)
    assert len(calls) == 3 + 2
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.input_ids, g.labels, g.token_inputs) == (w.input_ids, w.labels, w.token_inputs)
        assert sorted(g.vision) == sorted(w.vision)
        assert all(torch.equal(g.vision[key], w.vision[key]) for key in w.vision)
    if fixture == "tiny_qwen":  # the sizes give different image-token counts, and token inputs to reproduce
        assert len({sum(w.token_inputs["mm_token_type_ids"]) for w in want}) == len(sizes)

    # Without a known image token every prompt goes through the processor, with the same result.
    monkeypatch.setattr(processor, "image_token_id", None)
    calls.clear()
    again = encode_by_image(processor, family, prompts, images, PrefixMemo())
    assert len(calls) == len(prompts)
    assert [g.input_ids for g in again] == [w.input_ids for w in want]
