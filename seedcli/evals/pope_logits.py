"""POPE scored from next-token logits: one forward per question, no generation, no answer parsing.

Which tokens count: for each word in YES_WORDS ("Yes", "yes") and NO_WORDS ("No", "no"), the text
is encoded twice with the model's tokenizer (no special tokens): the word alone and the word after
one space (SentencePiece and BPE vocabularies spell a word-initial token either way). Every encoding
that is exactly one token, and not the unknown token, contributes its id; duplicates are merged. The
ids and their token strings are recorded in results.json (`pope_logits_tokens`).

Decision: s_yes = logsumexp of the next-token logits over the yes ids, s_no likewise over the no
ids (= comparing the total probability of the yes variants with that of the no variants); the
answer is "yes" when s_yes > s_no, else "no" (a tie is "no"). The first generated token is the one
scored, i.e. the logits at the last prompt position after the chat template's generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seedcli.errors import ModelError
from seedcli.reporting import NullReporter, Reporter

YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")


@dataclass(frozen=True)
class AnswerTokens:
    """The token ids (and their strings) whose logits stand for yes and for no."""

    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    yes_tokens: tuple[str, ...]
    no_tokens: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for results.json)."""
        return {
            "yes_ids": list(self.yes_ids),
            "no_ids": list(self.no_ids),
            "yes_tokens": list(self.yes_tokens),
            "no_tokens": list(self.no_tokens),
        }


def _single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    found: list[int] = []
    for word in words:
        for text in (word, " " + word):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and ids[0] not in found:
                found.append(int(ids[0]))
    return found


def answer_tokens(
    tokenizer: Any, yes_words: Sequence[str] = YES_WORDS, no_words: Sequence[str] = NO_WORDS
) -> AnswerTokens:
    """Single-token spellings of the yes and no words (see the module docstring for the rule)."""
    yes, no = _single_token_ids(tokenizer, yes_words), _single_token_ids(tokenizer, no_words)
    if not yes or not no:
        missing = "/".join(yes_words if not yes else no_words)
        raise ModelError(
            f"--pope-scoring logits: the tokenizer has no single-token spelling of {missing}; "
            "use --pope-scoring generate."
        )
    if set(yes) & set(no):
        raise ModelError(
            "--pope-scoring logits: the tokenizer maps a yes word and a no word to the same token; "
            "use --pope-scoring generate."
        )
    return AnswerTokens(
        yes_ids=tuple(yes),
        no_ids=tuple(no),
        yes_tokens=tuple(tokenizer.convert_ids_to_tokens(yes)),
        no_tokens=tuple(tokenizer.convert_ids_to_tokens(no)),
    )


def yes_no_scores(logits: Any, tokens: AnswerTokens) -> list[dict[str, Any]]:
    """Per row of next-token logits [B, V]: {"answer", "yes_score", "no_score"} (logsumexp over each id set)."""
    import torch

    logits = logits.float()
    yes = torch.logsumexp(logits[:, list(tokens.yes_ids)], dim=-1)  # [B]
    no = torch.logsumexp(logits[:, list(tokens.no_ids)], dim=-1)  # [B]
    return [
        {"answer": "yes" if y > n else "no", "yes_score": float(y), "no_score": float(n)}
        for y, n in zip(yes.tolist(), no.tolist())
    ]


def score_logits(
    model: Any,
    processor: Any,
    family: Any,
    prompts: list[str],
    images: list,
    tokens: AnswerTokens,
    *,
    batch_size: int = 8,
    reporter: Reporter | None = None,
    share_prefix: bool = False,
    prefix_memo: Any = None,
) -> list[dict[str, Any]]:
    """Yes/no decisions from one left-padded forward per batch (prefix-shared per image when asked)."""
    import torch

    from seedcli.evals.generation import PrefixMemo, encode_all, encode_by_image, next_token_stream, plan

    batches, source = plan(prompts, images, batch_size, share_prefix)
    memo = (prefix_memo or PrefixMemo()) if share_prefix else None
    reporter = reporter or NullReporter()
    results: dict[int, dict[str, Any]] = {}
    total = sum(len(batch) for batch in batches)
    with reporter.task("scoring yes/no logits", total=total, unit="q") as task, torch.inference_mode():
        for batch in batches:
            asked = [prompts[i] for i in batch], [images[i] for i in batch]
            if memo is None:
                encoded = encode_all(processor, family, *asked)
            else:  # prefix sharing: each image through the processor once
                encoded = encode_by_image(processor, family, *asked, memo=memo)
            stream = next_token_stream(model, processor, family, encoded, share_prefix=share_prefix, memo=memo)
            results.update(zip(batch, yes_no_scores(stream.logits, tokens)))
            task.advance(len(batch))
    return [results[source[i]] for i in range(len(prompts))]
