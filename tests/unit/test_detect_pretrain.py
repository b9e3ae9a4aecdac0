"""The world-pretraining corpus of the tiny detection rungs: deterministic, true to its scenes, in vocabulary."""

from __future__ import annotations

import dataclasses
import functools
import random
import re

import pytest

from seedcli.detect import pretrain, world
from seedcli.detect.world import Thing


def _pixels(image) -> bytes:  # noqa: ANN001
    return image.tobytes()


def test_corpus_is_deterministic_and_seeded() -> None:
    a, b, other = pretrain.corpus(6, 0), pretrain.corpus(6, 0), pretrain.corpus(6, 1)
    assert a.captions == b.captions and a.questions == b.questions and a.kinds == b.kinds
    assert [_pixels(i) for i in a.images] == [_pixels(i) for i in b.images]
    assert a.captions != other.captions


def test_corpus_asks_every_kind_with_both_answers() -> None:
    data = pretrain.corpus(60, 0)
    assert len(data.questions) == len(data.kinds)
    assert set(data.kinds) == set(pretrain.KINDS)
    for kind in pretrain.KINDS:
        targets = [q.target for q, k in zip(data.questions, data.kinds) if k == kind]
        assert 0.25 < sum(targets) / len(targets) < 0.75  # balanced within a kind: no base rate to learn
    for q in data.questions:
        assert q.words in pretrain.prompts.LABEL_WORDS and q.prompt.startswith(f"Answer {q.words[0]} or {q.words[1]}")
        assert 0 <= q.item < 60 and not q.flip


def test_corpus_stream_is_not_the_detection_sets() -> None:
    # The detection sets of seed s draw from random.Random(f"detect-{s}"); the corpus from its own stream.
    for seed in range(5):
        detection = random.Random(f"detect-{seed}")
        first_scene = world.scene(detection, world.WorldSpec())
        corpus_rng = random.Random(f"{pretrain.STREAM}-{seed}")
        assert world.scene(corpus_rng, world.WorldSpec()) != first_scene


SCENE = [Thing("fork", "big", 0), Thing("cat", "small", 3)]  # top-left and bottom-right cells


def test_caption_is_true_of_the_scene() -> None:
    for seed in range(20):
        text = pretrain.caption(SCENE, random.Random(seed))
        assert text.startswith("a big fork and a small cat.")
        for a, relation, b in re.findall(r"the (\w+) is (left of|right of|above|below) the (\w+)\.", text):
            assert (a, relation, b) in {("fork", "left of", "cat"), ("fork", "above", "cat"),
                                        ("cat", "right of", "fork"), ("cat", "below", "fork")}  # fmt: skip


@pytest.mark.parametrize("seed", range(10))
def test_phrases_are_true_or_false_as_asked(seed: int) -> None:
    rng = random.Random(seed)
    present = {t.name for t in SCENE}
    assert pretrain._asked("object", True, SCENE, rng).phrase.split()[-1] in present
    assert pretrain._asked("object", False, SCENE, rng).phrase.split()[-1] not in present
    _, size, name = pretrain._asked("attribute", True, SCENE, rng).phrase.split()
    assert (name, size) in {("fork", "big"), ("cat", "small")}
    _, size, name = pretrain._asked("attribute", False, SCENE, rng).phrase.split()
    assert (name, size) in {("fork", "small"), ("cat", "big")}
    false = pretrain._asked("relation", False, SCENE, rng).phrase
    assert false in {"the fork is right of the cat", "the fork is below the cat",
                     "the cat is left of the fork", "the cat is above the fork"}  # fmt: skip


@pytest.mark.parametrize("kind", pretrain.KINDS)
def test_context_states_the_asked_phrase_whether_true_or_not(kind: str) -> None:
    present = {t.name for t in SCENE}
    for true in (True, False):
        for seed in range(30):
            rng = random.Random(seed)
            asked = pretrain._asked(kind, true, SCENE, rng)
            caption, options = pretrain._context(asked, rng).splitlines()
            assert caption.startswith("Caption: ") and options.startswith("Options: ")
            listed = [entry.split(". ", 1)[1] for entry in options.removeprefix("Options: ").split("; ")]
            bare = asked.phrase.split(" ", 1)[1]  # "fork", "big fork", "fork is left of the cat"
            assert listed.count(bare) == 1 and f" {bare}" in caption
            assert len(listed) == 2 * len(asked.listing) + len(asked.relations)
            names = [name for _, name in asked.listing]
            assert len(names) == len(set(names)) and present <= set(names)
            if kind == "object":  # exactly one absent object listed (the asked one or another), no relation
                assert len(set(names) - present) == 1 and asked.relations == []
                assert (bare in present) == true
            elif kind == "attribute":
                assert (bare in {f"{t.size} {t.name}" for t in SCENE}) == true
            else:
                assert bare in asked.relations and f"The {bare}." in caption


@pytest.mark.parametrize("kind", pretrain.KINDS)
def test_context_does_not_give_the_answer_away(kind: str) -> None:
    # The shape of the text (how many objects, absent objects and relations it lists) is drawn the same way
    # for a true phrase as for a false one.
    scene = [Thing("fork", "big", 0), Thing("cat", "small", 3), Thing("dog", "big", 1)]
    present = {t.name for t in scene}

    def shape(true: bool, seed: int) -> tuple[int, int, int]:
        asked = pretrain._asked(kind, true, scene, random.Random(seed))
        names = {name for _, name in asked.listing}
        return len(asked.listing), len(names - present), len(asked.relations)

    for column in range(3):
        means = [sum(shape(true, seed)[column] for seed in range(600)) / 600 for true in (True, False)]
        assert abs(means[0] - means[1]) < 0.1, (column, means)


def test_context_share_puts_that_share_of_questions_behind_a_context() -> None:
    data = pretrain.corpus(100, 0, context_share=0.5)
    behind = [q.prompt.startswith("Caption: ") for q in data.questions]
    assert 0.35 < sum(behind) / len(behind) < 0.65
    assert all(q.prompt.split("\n")[-2].startswith("Answer ") for q in data.questions)


def test_every_corpus_word_is_in_the_rungs_vocabulary() -> None:
    from seedcli.models import tiny

    vocabulary = set(tiny._word_list(tiny._rung_words()))
    data = pretrain.corpus(40, 0, context_share=1.0)
    texts = [pretrain.CAPTION_PROMPT, *data.captions, *(q.prompt for q in data.questions)]
    words = {w.lower() for text in texts for w in re.findall(r"[A-Za-z]+|\d+|[^\w\s]", text)}
    assert words <= vocabulary, sorted(words - vocabulary)


def test_world_rungs_are_keyed_by_base_and_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedcli.models import tiny

    names = list(tiny.WORLD_RUNGS)
    keys = {name: tiny.fingerprint(name) for name in names}
    assert len(set(keys.values())) == len(names)
    assert all(keys[name] != tiny.fingerprint(base) for name, base in tiny.WORLD_RUNGS.items())
    monkeypatch.setattr(pretrain, "RECIPE", dataclasses.replace(pretrain.RECIPE, steps=pretrain.RECIPE.steps + 1))
    assert all(tiny.fingerprint(name) != keys[name] for name in names)
    monkeypatch.undo()
    # The detection sets' unlabelled split is not drawn from in pretraining: its size keeps the keys.
    from seedcli.detect import world

    spec = world.WorldSpec
    monkeypatch.setattr(world, "WorldSpec", functools.partial(spec, unlabelled=(1, 1)))
    assert all(tiny.fingerprint(name) == keys[name] for name in names)
    monkeypatch.setattr(world, "WorldSpec", functools.partial(spec, unlabelled=(1, 1), track2=(1, 1, 1)))
    assert all(tiny.fingerprint(name) != keys[name] for name in names)


def test_rungs_share_attention_and_grow_in_mlp_and_vision_width() -> None:
    from seedcli.models import tiny

    small, medium, large = (tiny.RUNGS[f"tiny-qwen2-vl-{size}"] for size in "sml")
    for rung in (small, medium, large):
        assert rung.text["num_hidden_layers"] == 1 and rung.vision["depth"] == 1
        assert rung.text["hidden_size"] == small.text["hidden_size"]
        assert rung.text["num_attention_heads"] == small.text["num_attention_heads"]
        assert rung.vision["embed_dim"] // rung.vision["num_heads"] == 16  # vision heads of 16, as in the text model
    assert small.text["intermediate_size"] < medium.text["intermediate_size"] < large.text["intermediate_size"]
    assert small.vision["embed_dim"] < medium.vision["embed_dim"] < large.vision["embed_dim"]


def test_a_grown_rung_answers_exactly_as_the_rung_it_grew_from() -> None:
    import torch

    from seedcli.detect.scoring import answer_logits, encode_batch
    from seedcli.models.loading import load

    loaded = load("tiny-qwen2-vl-s", dtype="fp32", device="cpu")
    torch.manual_seed(0)
    grown = pretrain.grow(loaded.model, pretrain.Growth("tiny-qwen2-vl-s", 128, 4))
    assert grown.config.text_config.intermediate_size == 128 and grown.config.vision_config.mlp_ratio == 4
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in loaded.model.parameters())
    mlp = grown.model.language_model.layers[0].mlp
    assert mlp.down_proj.weight[:, 64:].abs().sum() == 0 and mlp.up_proj.weight[64:].abs().sum() > 0
    data = pretrain.corpus(3, 0, context_share=1.0)  # questions with images and context: both MLPs at work
    asked = data.questions[:6]
    inputs = encode_batch(loaded, asked, pretrain.Pictures(data.images))
    with torch.no_grad():
        before = answer_logits(loaded, loaded.model.eval(), inputs, asked)  # [6, 2]
        after = answer_logits(loaded, grown, inputs, asked)
    assert torch.allclose(before, after, atol=1e-5)
    # And it can learn from there: the new units' output weights receive gradient.
    grown.train()
    loss = answer_logits(loaded, grown, inputs, asked).sum()
    loss.backward()
    assert grown.model.language_model.layers[0].mlp.down_proj.weight.grad[:, 64:].abs().sum() > 0


def test_the_grown_rung_is_keyed_by_its_source_growth_and_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedcli.models import families, tiny

    (name,) = tiny.GROWN_RUNGS
    assert name in families.TINY_MODELS and name in tiny.BUILDERS
    key = tiny.fingerprint(name)
    assert key != tiny.fingerprint(tiny.GROWN_RUNGS[name][0])
    monkeypatch.setitem(tiny.GROWN_RUNGS, name, ("tiny-qwen2-vl-s-world", 96, 4))
    assert tiny.fingerprint(name) != key
    monkeypatch.undo()
    monkeypatch.setattr(pretrain, "RECIPE", dataclasses.replace(pretrain.RECIPE, steps=pretrain.RECIPE.steps + 1))
    assert tiny.fingerprint(name) != key
