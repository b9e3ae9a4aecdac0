"""The exact prompts each benchmark sends (docs/protocols.md, POPE and CHAIR), snapshotted by tests.

A protocol is a recorded setting, not an implementation detail: the POPE prompt suffix and the
decoding (greedy or sampling at temperature 1) together move F1 by several points, so results
always name the protocol they were produced under.

- "greedy": LLaVA's convention, the question + "\\nAnswer the question using a single word or
  phrase.", greedy decoding.
- "vcd": VCD's convention, the question + " Please answer this question with one word.", sampling at
  temperature 1 (top_p 1), several seeds averaged.

CHAIR sends "Please describe this image in detail." on its own.

Importing this module imports no torch; `render_prompt` needs a loaded processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LLAVA_POPE_SUFFIX = "\nAnswer the question using a single word or phrase."
VCD_POPE_SUFFIX = " Please answer this question with one word."
CHAIR_PROMPT = "Please describe this image in detail."


@dataclass(frozen=True)
class Protocol:
    """A named POPE prompt + decoding convention."""

    name: str
    pope_suffix: str
    sampling: bool  # False: greedy; True: sampling at the configured temperature / top_p


PROTOCOLS: dict[str, Protocol] = {
    "greedy": Protocol(name="greedy", pope_suffix=LLAVA_POPE_SUFFIX, sampling=False),
    "vcd": Protocol(name="vcd", pope_suffix=VCD_POPE_SUFFIX, sampling=True),
}


def pope_prompt(question: str, suffix: str) -> str:
    """The user text sent for one POPE question: the question followed by the protocol's suffix."""
    return question + suffix


def chat_template(processor: Any) -> str | None:
    """The chat template the processor renders prompts with (recorded in results)."""
    return getattr(processor, "chat_template", None) or getattr(
        getattr(processor, "tokenizer", None), "chat_template", None
    )


def render_prompt(processor: Any, family: Any, prompt: str) -> str:
    """The exact text the model sees before image-token expansion (chat template + generation prompt)."""
    from seedcli.models.chat import template_messages

    messages = template_messages([{"role": "user", "content": prompt}], family=family, eos_token=None)
    return str(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
