"""POPE scoring: question/answer files, the official and a robust answer parser, and metrics.

Protocol: docs/protocols.md, POPE. Answers are paired with questions by `question_id` only, never by
file order. Labels and predictions are the strings "yes" / "no"; "yes" is the positive class.

Two parsers are reported side by side:

- `parse_official` reproduces the POPE rule exactly, quirks included (an empty or evasive answer
  is "yes"; "NO" and "isn't" are "yes" because only the words "No", "not", "no" count).
- `parse_robust` reads the first decisive word and returns None when the answer does not say
  yes or no. None predictions are counted (`n_unparsed`) and scored as wrong answers; they are
  never folded into a class. See `pope_metrics` for exactly how they enter each metric.

Typical use::

    questions = load_questions("coco_pope_random.json")
    answers = load_answers("answers.jsonl")
    result = score_pope(questions, answers)
    result["official"]["f1"], result["robust"]["f1"], result["n_unreadable"]
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from seedcli.errors import DataError
from seedcli.reporting import NullReporter, Reporter

YES = "yes"
NO = "no"
LABELS = (YES, NO)
QUESTION_FIELDS = ("question_id", "image", "text", "label")
ANSWER_FIELDS = ("question_id", "text")
# Misspelt key found in released POPE files; read as "image".
IMAGE_TYPO = "imange"
# How many offending ids an error message or report shows.
EXAMPLE_IDS = 5

# The official rule compares case-sensitively against exactly these words.
OFFICIAL_NO_WORDS = frozenset({"No", "not", "no"})

# Robust parser vocabulary (matched on lowercased text with curly apostrophes straightened).
# A hedge says the model does not know; it makes the answer unreadable when it comes first.
_HEDGES = (
    r"do(?:n't| not) know",
    r"not (?:sure|certain|clear)",
    r"unsure",
    r"uncertain",
    r"unclear",
    r"(?:can't|cannot|can not|couldn't|could not) (?:tell|say|determine|confirm|be sure)",
    r"(?:unable|impossible|not possible|hard|difficult) to (?:tell|say|determine|know|confirm)",
    r"maybe",
    r"perhaps",
    r"possibly",
)
_YES_WORDS = (r"yes", r"yeah", r"yep", r"yup")
# Any word ending in n't (isn't, aren't, don't, can't, won't, ...) negates.
_NO_WORDS = (
    r"no",
    r"not",
    r"none",
    r"nothing",
    r"nope",
    r"never",
    r"nobody",
    r"neither",
    r"nor",
    r"cannot",
    r"[a-z]+n't",
)
_DECISIVE = re.compile(
    r"\b(?:(?P<hedge>{})|(?P<yes>{})|(?P<no>{}))\b".format("|".join(_HEDGES), "|".join(_YES_WORDS), "|".join(_NO_WORDS))
)
# Used only when no decisive word occurs at all: a plain existential statement is a yes.
_AFFIRMATIVE = re.compile(r"\b(?:there is|there are|there's|i can see|i see|is visible|are visible)\b")
# "Neither parser can read": robust gives None and none of these words occur (case-insensitive).
_OFFICIAL_CUE = re.compile(r"\b(?:yes|no|not)\b", re.IGNORECASE)


def parse_official(text: str) -> str:
    """POPE's official rule: first sentence, drop ',', split on ' '; "No"/"not"/"no" -> "no", else "yes"."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return NO if any(word in OFFICIAL_NO_WORDS for word in words) else YES


def parse_robust(text: str) -> str | None:
    """First decisive word of the answer -> "yes" / "no"; None when the answer does not say.

    Rule, on the lowercased answer with curly apostrophes straightened:

    1. Scan left to right for the first decisive phrase. Yes words: yes, yeah, yep, yup. No words:
       no, not, none, nothing, nope, never, nobody, neither, nor, cannot, and any word ending in
       "n't" (isn't, aren't, don't, ...). Hedges: "don't know", "not sure/certain/clear", unsure,
       uncertain, unclear, "can't tell/say/determine/confirm/be sure", "unable/impossible/hard/
       difficult to tell/say/determine/know/confirm", maybe, perhaps, possibly.
    2. The first phrase decides: yes -> "yes", no -> "no", hedge -> None. A hedge and a no word
       starting at the same place ("not sure", "don't know") count as the hedge. So "I don't know"
       is None, "I'm not sure, but yes" is None, while "Yes, but I am not sure" is "yes".
    3. Without any decisive phrase, an existential statement ("there is/are", "I (can) see",
       "is/are visible") is "yes"; anything else (including the empty answer) is None.
    """
    lowered = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    match = _DECISIVE.search(lowered)
    if match is not None:
        if match.group("hedge") is not None:
            return None
        return YES if match.group("yes") is not None else NO
    return YES if _AFFIRMATIVE.search(lowered) else None


def unreadable_by_both(text: str) -> bool:
    """True when `parse_robust` gives None and the text has no yes/no/not word (any case).

    `parse_official` always returns a class, so "the official parser cannot read it" means it only
    fell through to its default "yes": no yes/no/not word steered it.
    """
    return parse_robust(text) is None and _OFFICIAL_CUE.search(text) is None


def _id_key(question_id: Any) -> str:
    """Matching key of a question_id: ints and strings compare by their decimal text (1 == "1")."""
    return str(question_id)


def _valid_id(question_id: Any) -> bool:
    return isinstance(question_id, (int, str)) and not isinstance(question_id, bool)


def _read_jsonl_objects(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed lines raise DataError."""
    try:
        # split on "\n" only: str.splitlines would also break inside strings holding U+2028 and the like
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({error}).") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{number}: not valid JSON ({error.msg}); expected one JSON object per line."
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}.")
        yield number, row


def load_questions(path: str | Path, *, reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Read an official POPE question file (JSONL of question_id, image, text, label), validated.

    The misspelt key "imange" of released files is read as "image"; how many lines used it is
    reported through `reporter.warn`. Refused with DataError naming file and line: invalid JSON,
    missing fields, a question_id that is not an int or string, duplicate question_ids, labels
    other than "yes"/"no" (exact, lowercase), an empty file. Extra keys are kept.
    """
    questions, typo_lines = read_questions(path)
    if typo_lines:
        (reporter or NullReporter()).warn(
            f"{path}: {typo_lines} line(s) use the misspelt key '{IMAGE_TYPO}'; read as 'image'."
        )
    return questions


def read_questions(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """`load_questions` without reporting: the validated rows and how many lines used "imange"."""
    path = Path(path)
    questions: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    typo_lines = 0
    for number, row in _read_jsonl_objects(path):
        row = dict(row)
        if IMAGE_TYPO in row:
            typo = row.pop(IMAGE_TYPO)
            if "image" in row and row["image"] != typo:
                raise DataError(f"{path}:{number}: has both 'image' and '{IMAGE_TYPO}' with different values.")
            row["image"] = typo
            typo_lines += 1
        missing = [name for name in QUESTION_FIELDS if name not in row]
        if missing:
            raise DataError(
                f"{path}:{number}: missing field(s) {', '.join(missing)}; POPE lines need {', '.join(QUESTION_FIELDS)}."
            )
        if not _valid_id(row["question_id"]):
            raise DataError(f"{path}:{number}: question_id must be an integer or string, got {row['question_id']!r}.")
        if row["label"] not in LABELS:
            raise DataError(f"{path}:{number}: label must be 'yes' or 'no', got {row['label']!r}.")
        key = _id_key(row["question_id"])
        if key in first_line:
            raise DataError(
                f"{path}:{number}: duplicate question_id {row['question_id']!r} (first on line {first_line[key]})."
            )
        first_line[key] = number
        questions.append(row)
    if not questions:
        raise DataError(f"{path}: contains no questions.")
    return questions, typo_lines


def load_answers(path: str | Path) -> list[dict[str, Any]]:
    """Read a POPE answer file (JSONL with at least question_id and text per line), validated.

    Refused with DataError naming file and line: invalid JSON, a missing question_id or text, a
    question_id that is not an int or string, a text that is not a string. Duplicates are left to
    `join_by_id`, which sees them against the questions. Extra keys are kept.
    """
    path = Path(path)
    answers: list[dict[str, Any]] = []
    for number, row in _read_jsonl_objects(path):
        missing = [name for name in ANSWER_FIELDS if name not in row]
        if missing:
            raise DataError(
                f"{path}:{number}: missing field(s) {', '.join(missing)}; answer lines need {', '.join(ANSWER_FIELDS)}."
            )
        if not _valid_id(row["question_id"]):
            raise DataError(f"{path}:{number}: question_id must be an integer or string, got {row['question_id']!r}.")
        if not isinstance(row["text"], str):
            raise DataError(f"{path}:{number}: text must be a string, got {type(row['text']).__name__}.")
        answers.append(dict(row))
    return answers


def _examples(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:EXAMPLE_IDS])
    return shown + (", ..." if len(ids) > EXAMPLE_IDS else "")


def join_by_id(
    questions: Sequence[dict[str, Any]],
    answers: Sequence[dict[str, Any]],
    *,
    allow_missing: bool = False,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """Pair answers with questions by question_id (never by order); one record per answered question.

    Each record is the question dict plus "answer" (the answer's text), in question order. Ids
    match by their text, so 7 and "7" are the same question. Refused with DataError naming counts
    and example ids: duplicate question ids, duplicate answer ids, answers whose id is not a
    question, and questions without an answer. With `allow_missing=True` unanswered questions are
    left out of the result and reported through `reporter.warn` instead.
    """
    reporter = reporter or NullReporter()
    question_counts = Counter(_id_key(q["question_id"]) for q in questions)
    duplicate_questions = [qid for qid, count in question_counts.items() if count > 1]
    if duplicate_questions:
        raise DataError(
            f"questions contain {len(duplicate_questions)} duplicate question_id(s) (e.g. "
            f"{_examples(duplicate_questions)}); each id must be unique."
        )
    answer_by_id: dict[str, dict[str, Any]] = {}
    duplicate_answers: list[Any] = []
    for answer in answers:
        key = _id_key(answer["question_id"])
        if key in answer_by_id:
            duplicate_answers.append(answer["question_id"])
        answer_by_id[key] = answer
    if duplicate_answers:
        unique = list(dict.fromkeys(duplicate_answers))
        raise DataError(
            f"answers contain {len(unique)} question_id(s) answered more than once (e.g. {_examples(unique)}); keep "
            "one answer per question."
        )
    unknown = [answer["question_id"] for answer in answers if _id_key(answer["question_id"]) not in question_counts]
    if unknown:
        raise DataError(
            f"{len(unknown)} of {len(answers)} answers have question_ids not in the {len(questions)} questions (e.g. "
            f"{_examples(unknown)}); "
            "the answers belong to another question file."
        )
    missing = [q["question_id"] for q in questions if _id_key(q["question_id"]) not in answer_by_id]
    if missing and not allow_missing:
        raise DataError(
            f"{len(missing)} of {len(questions)} questions have no answer (e.g. {_examples(missing)}); "
            "finish generation or allow missing answers to score only the answered ones."
        )
    if missing:
        reporter.warn(
            f"{len(missing)} of {len(questions)} questions have no answer (e.g. {_examples(missing)}); scoring the "
            f"{len(questions) - len(missing)} answered ones."
        )
    return [
        {**question, "answer": answer_by_id[_id_key(question["question_id"])]["text"]}
        for question in questions
        if _id_key(question["question_id"]) in answer_by_id
    ]


def _check_labels(preds: Sequence[str | None], labels: Sequence[str]) -> None:
    if len(preds) != len(labels):
        raise DataError(
            f"predictions and labels differ in length ({len(preds)} vs {len(labels)}); join them by question_id first."
        )
    bad_labels = sorted({repr(label) for label in labels if label not in LABELS})
    if bad_labels:
        raise DataError(f"labels must be 'yes' or 'no', got {', '.join(bad_labels[:EXAMPLE_IDS])}.")
    bad_preds = sorted({repr(pred) for pred in preds if pred is not None and pred not in LABELS})
    if bad_preds:
        raise DataError(f"predictions must be 'yes', 'no' or None, got {', '.join(bad_preds[:EXAMPLE_IDS])}.")


def confusion(preds: Sequence[str | None], labels: Sequence[str]) -> dict[str, int]:
    """Confusion counts with "yes" positive, plus unparsed (None) predictions split by their label.

    Returns {"tp", "fp", "tn", "fn", "unparsed_yes", "unparsed_no"}: tp/fp/tn/fn count parsed
    predictions only; unparsed_yes / unparsed_no count None predictions on yes / no labels.
    """
    _check_labels(preds, labels)
    counts = Counter(zip(preds, labels, strict=True))
    return {
        "tp": counts[(YES, YES)],
        "fp": counts[(YES, NO)],
        "tn": counts[(NO, NO)],
        "fn": counts[(NO, YES)],
        "unparsed_yes": counts[(None, YES)],
        "unparsed_no": counts[(None, NO)],
    }


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, defined as 0.0 when the denominator is 0."""
    return numerator / denominator if denominator else 0.0


def pope_metrics(preds: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """POPE metrics with "yes" positive, as fractions in [0, 1] (multiply by 100 for paper tables).

    A None prediction (unparsed) is a wrong answer, never a class:
    - accuracy  = (tp + tn) / n, n counting every item, unparsed included;
    - precision = tp / (tp + fp), over predicted yes only (unparsed are not predicted yes);
    - recall    = tp / (all items labelled yes), so an unparsed answer on a yes item is a miss;
    - f1        = 2 * precision * recall / (precision + recall);
    - yes_ratio = predicted yes / n, from the PREDICTIONS (never from the labels).
    Every ratio whose denominator is 0 (no items, no predicted yes, no yes labels, p + r = 0) is
    0.0. Also returned: tp, fp, tn, fn (parsed predictions only), n, n_unparsed.
    """
    counts = confusion(preds, labels)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    n = len(labels)
    n_unparsed = counts["unparsed_yes"] + counts["unparsed_no"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn + counts["unparsed_yes"])
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": _ratio(tp + fp, n),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
        "n_unparsed": n_unparsed,
    }


def parse_records(joined: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-question parse results for records from `join_by_id`.

    Each output record: question_id, label, answer, official, robust (None when unreadable),
    official_correct, robust_correct (None counts as incorrect), unreadable (see `unreadable_by_both`).
    The *_correct flags, joined by question_id, feed `stats.paired_mcnemar`.
    """
    records = []
    for row in joined:
        official = parse_official(row["answer"])
        robust = parse_robust(row["answer"])
        records.append(
            {
                "question_id": row["question_id"],
                "label": row["label"],
                "answer": row["answer"],
                "official": official,
                "robust": robust,
                "official_correct": official == row["label"],
                "robust_correct": robust == row["label"],
                "unreadable": unreadable_by_both(row["answer"]),
            }
        )
    return records


def score_pope(
    questions: Sequence[dict[str, Any]],
    answers: Sequence[dict[str, Any]],
    *,
    allow_missing: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Join answers to questions by id and score them with both parsers.

    Returns {"official": pope_metrics(...), "robust": pope_metrics(...), "n_unreadable": answers
    neither parser can read (robust None and no yes/no/not word; the official parser calls these
    "yes"), "unreadable_ids": up to EXAMPLE_IDS of their question_ids, "n_questions", "n_answered",
    "n_missing" (non-zero only with allow_missing=True; missing answers are left out of the metrics),
    "records": `parse_records` output in question order}.
    """
    joined = join_by_id(questions, answers, allow_missing=allow_missing, reporter=reporter)
    records = parse_records(joined)
    labels = [r["label"] for r in records]
    unreadable = [r["question_id"] for r in records if r["unreadable"]]
    return {
        "official": pope_metrics([r["official"] for r in records], labels),
        "robust": pope_metrics([r["robust"] for r in records], labels),
        "n_unreadable": len(unreadable),
        "unreadable_ids": unreadable[:EXAMPLE_IDS],
        "n_questions": len(questions),
        "n_answered": len(records),
        "n_missing": len(questions) - len(records),
        "records": records,
    }
