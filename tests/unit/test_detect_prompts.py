"""Mappings: shifted prompts ask about the right option, and mapping back is the identity."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from seedcli.detect import prompts
from seedcli.detect.items import Item, Option
from seedcli.detect.questions import questions, shifted_questions


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 7])
def test_map_back_of_a_mapped_list_is_the_identity(n: int, k: int) -> None:
    mapping = prompts.shifted(n, k)
    shown = [float(original) for original in mapping.order]  # the value at each display position
    assert prompts.map_back(shown, mapping) == [float(i) for i in range(n)]
    rng = random.Random(k)
    sampled = prompts.sampled(n, rng)
    assert sorted(sampled.order) == list(range(n))
    assert prompts.map_back([float(o) for o in sampled.order], sampled) == [float(i) for i in range(n)]


def test_shift_zero_is_plain_and_shifts_change_order_ids_and_words() -> None:
    assert prompts.shifted(4, 0) == prompts.identity(4)
    one = prompts.shifted(4, 1)
    assert one.order == (1, 2, 3, 0) and one.ids()[0] == "1" and one.words() == ("true", "false")


def _item() -> Item:
    texts = ["red fork", "cat", "fork is left of the cat", "dog"]
    caption = "There is a red fork, a cat and a dog. The fork is left of the cat."
    options = tuple(Option(chr(65 + i), t, "object") for i, t in enumerate(texts))
    return Item("i", Path("x.png"), 1, caption, None, options, ("B",))


@pytest.mark.parametrize("k", range(6))
def test_every_question_names_the_identifier_listed_next_to_its_option(k: int) -> None:
    item = _item()
    for q in shifted_questions([item], k):
        listed = dict(re.findall(r"(\w+)\. ([^;\n]+)", q.prompt.split("Options: ")[1].split("\n")[0]))
        asked, text = re.search(r"\nOption (\w+): (.+)$", q.prompt).groups()
        assert listed[asked] == item.options[q.option].text == text
        assert q.target == int(item.options[q.option].id == "B")
        assert f"Answer {q.words[0]} or {q.words[1]}:" in q.prompt


def test_flip_swaps_left_and_right_in_every_text_and_keeps_labels() -> None:
    item = _item()
    flipped = questions(0, item, prompts.identity(4), flip=True)
    assert all("right of the cat" in q.prompt and "left of" not in q.prompt for q in flipped)
    assert [q.target for q in flipped] == [0, 1, 0, 0]
    assert prompts.flip_text("left of the right") == "right of the left"


def test_paraphrase_changes_only_the_opener() -> None:
    caption = "There is a cat. The cat is above the dog."
    out = prompts.paraphrase(caption, random.Random(1))
    assert out.endswith(" a cat. The cat is above the dog.")
    assert prompts.paraphrase("Nothing known.", random.Random(0)) == "Nothing known."
