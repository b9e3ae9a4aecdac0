"""Snapshots of the exact prompts each benchmark sends, and how protocols map to decoding settings.

These strings move POPE/CHAIR numbers by points; a change here must be deliberate (docs/protocols.md, POPE and CHAIR).
"""

from __future__ import annotations

import jinja2
import pytest

from seedcli.config.evaluate import EvaluateConfig
from seedcli.errors import ConfigError
from seedcli.evals import prompts
from seedcli.evals.runner import decodings, pope_suffix, protocol_label
from seedcli.models.families import FAMILIES
from seedcli.models.tiny import LLAVA_TEMPLATE, QWEN_TEMPLATE

QUESTION = "Is there a snowboard in the image?"


def test_pope_prompts_are_the_published_strings() -> None:
    assert prompts.pope_prompt(QUESTION, prompts.PROTOCOLS["greedy"].pope_suffix) == (
        "Is there a snowboard in the image?\nAnswer the question using a single word or phrase."
    )
    assert prompts.pope_prompt(QUESTION, prompts.PROTOCOLS["vcd"].pope_suffix) == (
        "Is there a snowboard in the image? Please answer this question with one word."
    )


def test_chair_prompt_snapshot() -> None:
    assert prompts.CHAIR_PROMPT == "Please describe this image in detail."
    assert EvaluateConfig(chair=True).chair_prompt == "Please describe this image in detail."
    assert EvaluateConfig(chair=True).max_new_tokens_chair == 512


class _TemplateProcessor:
    """Renders a chat template with plain jinja2, as transformers does (no model needed)."""

    def __init__(self, template: str) -> None:
        self.chat_template = template

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:  # noqa: ANN001
        assert tokenize is False
        return jinja2.Template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


@pytest.mark.parametrize(
    ("family", "template", "expected"),
    [
        (
            "llava",
            LLAVA_TEMPLATE,
            "USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single word or phrase. "
            "ASSISTANT:",
        ),
        (
            "qwen2-vl",
            QWEN_TEMPLATE,
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a snowboard in the image?\n"
            "Answer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_rendered_pope_prompt_places_the_image_first_and_asks_for_the_answer(
    family: str, template: str, expected: str
) -> None:
    processor = _TemplateProcessor(template)
    text = prompts.render_prompt(processor, FAMILIES[family], prompts.pope_prompt(QUESTION, prompts.LLAVA_POPE_SUFFIX))
    assert text == expected
    assert prompts.chat_template(processor) == template


def test_greedy_protocol_is_one_greedy_run() -> None:
    cfg = EvaluateConfig(pope="all")
    runs = decodings(cfg, cfg.max_new_tokens)
    assert [(d.mode, d.seed, d.max_new_tokens, d.sampling) for d in runs] == [("greedy", 0, 8, False)]
    assert protocol_label(cfg) == "greedy"
    assert pope_suffix(cfg) == "\nAnswer the question using a single word or phrase."


def test_vcd_protocol_samples_at_temperature_one_over_three_seeds() -> None:
    cfg = EvaluateConfig(pope="random", protocol="vcd", seed=7)
    runs = decodings(cfg, cfg.max_new_tokens)
    assert [(d.mode, d.seed, d.temperature, d.top_p, d.sampling) for d in runs] == [
        ("sample", s, 1.0, 1.0, True) for s in (7, 8, 9)
    ]
    assert pope_suffix(cfg) == " Please answer this question with one word."


def test_vcd_decoding_keeps_the_protocols_sampling_and_defaults() -> None:
    sampled = decodings(EvaluateConfig(pope="random", protocol="vcd", decode="vcd", seeds=2), 8)
    assert [(d.mode, d.vcd_sample, d.vcd_alpha, d.vcd_beta, d.vcd_noise_step) for d in sampled] == [
        ("vcd", True, 1.0, 0.1, 500)
    ] * 2
    greedy = decodings(EvaluateConfig(pope="random", decode="vcd"), 8)
    assert [(d.mode, d.vcd_sample, d.sampling) for d in greedy] == [("vcd", False, False)]
    assert protocol_label(EvaluateConfig(pope="random", decode="vcd")) == "greedy+vcd-decoding"
    assert protocol_label(EvaluateConfig(pope="random", pope_scoring="logits")) == "logits (greedy prompt)"


def test_suffix_override_is_recorded() -> None:
    assert pope_suffix(EvaluateConfig(pope="random", pope_suffix=" Answer yes or no.")) == " Answer yes or no."


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({}, "--pope"),
        ({"pope_file": "q.json"}, "--pope-file"),
        ({"answers": "a.jsonl"}, "--answers"),
        ({"pope": "random", "pope_scoring": "logits", "decode": "vcd"}, "--pope-scoring"),
        ({"captions": "c.jsonl", "chair": True}, "--pope-file/--captions"),
        ({"pope": "random", "vcd_beta": 0.0}, "--vcd-beta"),
        ({"pope": "sideways"}, "--pope"),
    ],
)
def test_bad_combinations_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}"):
        EvaluateConfig(**kwargs)
