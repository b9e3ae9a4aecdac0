"""Batched generation on the tiny models: batch-size invariance, seeded sampling, VCD, yes/no logits."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from seedcli.core.noise import add_diffusion_noise, vcd_alpha_bar
from seedcli.evals.generation import (
    Decoding,
    generate,
    noised_encoding,
    prefill,
    sample_seed,
    to_batch,
    vcd_logits,
    warp,
)
from seedcli.evals.pope_logits import answer_tokens, score_logits
from seedcli.models.chat import collate, encode_prompt

pytestmark = pytest.mark.smoke

# Different lengths, so a batch of them needs left padding.
PROMPTS = [
    "Is there a dog in the image?",
    "Please describe this image in detail.",
    "Is there a red car on the left of the image? Please answer this question with one word.",
    "what",
    "Is there a cat in the image?\nAnswer the question using a single word or phrase.",
]
COLORS = [(200, 30, 30), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 90, 90)]


def _images() -> list[Image.Image]:
    out = []
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", (40, 40), color)
        image.paste((255 - color[0], 40 * i, 0), (4 * i, 4, 20 + 3 * i, 30))
        out.append(image)
    return out


def _plain_last_logits(loaded, prompt: str, image, pixels=None) -> torch.Tensor:
    """Next-token logits from one ordinary forward of a single unpadded sample."""
    enc = encode_prompt(loaded.processor, loaded.family, prompt, image)
    batch = collate([enc], pad_id=loaded.processor.tokenizer.pad_token_id, padding_side="left")
    batch.pop("labels")
    if pixels is not None:
        batch["pixel_values"] = pixels
    with torch.no_grad():
        return loaded.model(**batch).logits[0, -1].float()


def test_vcd_logits_formula_on_hand_made_logits() -> None:
    clean = torch.tensor([[2.0, 1.0, -3.0, 0.0]])
    noised = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    got = vcd_logits(clean, noised, alpha=0.5, beta=0.3)
    # p(clean) ~ [0.69, 0.25, 0.005, 0.09]; cutoff 0.3 * 0.69 = 0.21 keeps tokens 0 and 1 only.
    assert got[0, 0].item() == pytest.approx(1.5 * 2.0 - 0.5 * 1.0)
    assert got[0, 1].item() == pytest.approx(1.5 * 1.0 - 0.5 * 3.0)
    assert math.isinf(got[0, 2].item()) and math.isinf(got[0, 3].item())


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    kept = torch.isfinite(warp(scores, 1.0, 0.6))[0].tolist()
    assert kept == [True, False, True]  # 0.5 alone < 0.6; adding 0.3 reaches it
    assert torch.isfinite(warp(scores, 1.0, 1.0)).all()
    assert torch.allclose(warp(scores, 2.0, 1.0), scores / 2.0)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_vcd_step_equals_the_formula_from_independent_forwards(fixture: str, request) -> None:
    loaded = request.getfixturevalue(fixture)
    prompt, image = PROMPTS[0], _images()[0]
    # The tiny models' next-token distributions are flat (every log-prob within 1.5 of the max), so
    # beta = 0.5 is what makes the plausibility cut bite here; the formula is the same for any beta.
    decoding = Decoding(
        mode="vcd", max_new_tokens=1, vcd_alpha=1.0, vcd_beta=0.5, vcd_noise_step=500, vcd_sample=False, seed=3
    )
    enc = encode_prompt(loaded.processor, loaded.family, prompt, image)
    generator = torch.Generator().manual_seed(sample_seed(3, enc, purpose="vcd-noise"))
    noised_pixels = add_diffusion_noise(enc.vision["pixel_values"], vcd_alpha_bar(500), generator)
    z_clean = _plain_last_logits(loaded, prompt, image)
    z_noised = _plain_last_logits(loaded, prompt, image, pixels=noised_pixels)
    assert not torch.allclose(z_clean, z_noised), "noise must change the logits for this test to mean anything"

    log_probs = torch.log_softmax(z_clean, dim=-1)
    keep = log_probs >= math.log(0.5) + log_probs.max()
    expected = torch.where(keep, 2.0 * z_clean - 1.0 * z_noised, torch.tensor(float("-inf")))
    assert 0 < int(keep.sum()) < keep.numel(), "the plausibility cut must remove some tokens and keep some"

    # What the decoding loop chooses the first token from: the formula on its two prefilled streams.
    inputs = {"pad": loaded.processor.tokenizer.pad_token_id, "device": "cpu", "dtype": torch.float32}
    clean = prefill(loaded.model, loaded.family, to_batch([enc], **inputs))
    noised = noised_encoding(enc, decoding, loaded.family.vision_key)
    noisy = prefill(loaded.model, loaded.family, to_batch([noised], **inputs))
    got = vcd_logits(clean.logits, noisy.logits, decoding.vcd_alpha, decoding.vcd_beta)[0]
    assert torch.equal(torch.isfinite(got), keep)
    assert torch.allclose(got[keep], expected[keep], atol=1e-4)
    # The greedy VCD token is the argmax of the formula, not of the clean logits.
    first = generate(loaded.model, loaded.processor, loaded.family, [prompt], [image], decoding)[0]
    assert first == loaded.processor.tokenizer.decode([int(expected.argmax())], skip_special_tokens=True).strip()


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_greedy_answers_do_not_depend_on_batch_size(fixture: str, request) -> None:
    loaded = request.getfixturevalue(fixture)
    images = _images()
    lengths = {len(encode_prompt(loaded.processor, loaded.family, p, i).input_ids) for p, i in zip(PROMPTS, images)}
    assert len(lengths) > 1, "prompts must differ in length so the batch is padded"
    greedy = Decoding(mode="greedy", max_new_tokens=5)
    batched = generate(loaded.model, loaded.processor, loaded.family, PROMPTS, images, greedy, batch_size=8)
    single = [
        generate(loaded.model, loaded.processor, loaded.family, [p], [i], greedy, batch_size=1)[0]
        for p, i in zip(PROMPTS, images)
    ]
    assert batched == single
    assert len(set(batched)) > 1, "different inputs should give different answers on the tiny model"
    # Independent reference: transformers' own generate, one unpadded sample at a time.
    eos = loaded.processor.tokenizer.eos_token_id
    for prompt, image, answer in zip(PROMPTS, images, batched):
        enc = encode_prompt(loaded.processor, loaded.family, prompt, image)
        batch = collate([enc], pad_id=loaded.processor.tokenizer.pad_token_id, padding_side="left")
        batch.pop("labels")
        with torch.no_grad():
            ids = loaded.model.generate(**batch, max_new_tokens=5, do_sample=False)[
                0, batch["input_ids"].shape[1] :
            ].tolist()
        ids = ids[: ids.index(eos)] if eos in ids else ids
        assert answer == loaded.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen"])
def test_cached_left_padded_decoding_equals_a_full_forward(fixture: str, request) -> None:
    """Positions and KV cache: step logits of a padded batch equal one unpadded forward per sample."""
    loaded = request.getfixturevalue(fixture)
    images = _images()[:2]
    encoded = [encode_prompt(loaded.processor, loaded.family, p, i) for p, i in zip(PROMPTS[2:4], images)]
    assert len(encoded[0].input_ids) != len(encoded[1].input_ids)
    fed = torch.tensor([[7, 9], [11, 13]])  # two decoding steps, arbitrary tokens
    with torch.no_grad():
        batch = to_batch(encoded, pad=loaded.processor.tokenizer.pad_token_id, device="cpu", dtype=torch.float32)
        stream = prefill(loaded.model, loaded.family, batch)
        stream.advance(fed[:, 0])
        stream.advance(fed[:, 1])
        for row, enc in enumerate(encoded):
            full = collate([enc], pad_id=0, padding_side="left")
            full.pop("labels")
            full["input_ids"] = torch.cat([full["input_ids"], fed[row : row + 1]], dim=1)
            full["attention_mask"] = torch.ones_like(full["input_ids"])
            if "mm_token_type_ids" in full:
                full["mm_token_type_ids"] = torch.cat(
                    [full["mm_token_type_ids"], torch.zeros(1, 2, dtype=torch.long)], dim=1
                )
            reference = loaded.model(**full).logits[0, -1].float()
            # A position off by a few steps moves these logits by ~1e-2 on the tiny models.
            assert torch.allclose(stream.logits[row], reference, atol=1e-4)


def test_sampling_is_reproducible_with_the_seed_and_independent_of_batching(tiny_llava) -> None:
    images = _images()
    run = lambda seed, batch_size: generate(  # noqa: E731
        tiny_llava.model,
        tiny_llava.processor,
        tiny_llava.family,
        PROMPTS,
        images,
        Decoding(mode="sample", max_new_tokens=4, seed=seed),
        batch_size=batch_size,
    )
    first = run(5, 8)
    assert run(5, 8) == first
    assert run(5, 2) == first
    assert run(6, 8) != first
    greedy = generate(
        tiny_llava.model,
        tiny_llava.processor,
        tiny_llava.family,
        PROMPTS,
        images,
        Decoding(mode="greedy", max_new_tokens=4),
    )
    assert greedy != first


def test_vcd_sampling_is_reproducible(tiny_qwen) -> None:
    images = _images()[:3]
    decoding = Decoding(mode="vcd", max_new_tokens=3, seed=1)
    first = generate(
        tiny_qwen.model, tiny_qwen.processor, tiny_qwen.family, PROMPTS[:3], images, decoding, batch_size=2
    )
    assert (
        generate(tiny_qwen.model, tiny_qwen.processor, tiny_qwen.family, PROMPTS[:3], images, decoding, batch_size=3)
        == first
    )


def test_yes_no_logit_scoring_matches_plain_forwards(tiny_llava) -> None:
    tokens = answer_tokens(tiny_llava.processor.tokenizer)
    # The tiny tokenizer lowercases: "Yes", "yes", " Yes", " yes" are all the one token "yes".
    assert tokens.yes_tokens == ("yes",) and tokens.no_tokens == ("no",)
    images = _images()
    scored = score_logits(
        tiny_llava.model, tiny_llava.processor, tiny_llava.family, PROMPTS, images, tokens, batch_size=8
    )
    for prompt, image, result in zip(PROMPTS, images, scored):
        z = _plain_last_logits(tiny_llava, prompt, image)
        assert result["yes_score"] == pytest.approx(float(z[tokens.yes_ids[0]]), abs=1e-4)
        assert result["no_score"] == pytest.approx(float(z[tokens.no_ids[0]]), abs=1e-4)
        assert result["answer"] == ("yes" if z[tokens.yes_ids[0]] > z[tokens.no_ids[0]] else "no")
