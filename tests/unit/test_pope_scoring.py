"""POPE scoring: parsers on tricky answers, metrics on hand-computed confusions, file loading, joins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedcli.errors import DataError
from seedcli.evals.pope_scoring import (
    confusion,
    join_by_id,
    load_answers,
    load_questions,
    parse_official,
    parse_robust,
    pope_metrics,
    score_pope,
    unreadable_by_both,
)


class RecordingReporter:
    """Collects warnings; the rest of the Reporter protocol is unused here."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        pass


# (answer, official parse, robust parse), each worked out from the documented rules.
PARSE_TABLE = [
    ("Yes.", "yes", "yes"),
    ("yes", "yes", "yes"),
    ("No, there is not.", "no", "no"),
    ("There is no dog.", "no", "no"),
    ("I don't know", "yes", None),  # official: no No/not/no word -> default yes; robust: hedge first
    ("", "yes", None),
    ("Yes, there is a dog in the image.", "yes", "yes"),
    ("no.", "no", "no"),
    ("Not at all", "yes", "no"),  # official compares case-sensitively: "Not" is not a no word
    ("There isn't a cat", "yes", "no"),  # official misses n't
    ("NO", "yes", "no"),
    ("I'm not sure.", "no", None),
    ("Maybe", "yes", None),
    ("Yes, but I am not sure.", "no", "yes"),  # official sees "not" in the first sentence
    ("The image shows a park. There is no dog.", "yes", "no"),  # official reads the first sentence only
    ("There\u2019s no cat in the image.", "no", "no"),
    ("There is a dog in the image.", "yes", "yes"),  # robust: existential fallback
    ("A park with trees", "yes", None),
    ("Nothing like that.", "yes", "no"),
    ("It is unclear, but yes.", "yes", None),
    ("I cannot tell from the image.", "yes", None),
    ("I can't see any dog.", "yes", "no"),
    ("Possibly yes", "yes", None),
    ("Line one\u2028no", "yes", "no"),  # official splits on ' ' only, so "one\u2028no" is one word
]


@pytest.mark.parametrize(("text", "official", "robust"), PARSE_TABLE)
def test_parsers_on_tricky_answers(text: str, official: str, robust: str | None) -> None:
    assert parse_official(text) == official
    assert parse_robust(text) == robust


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I don't know", True),
        ("", True),
        ("Maybe", True),
        ("I'm not sure", False),
        ("There is a dog", False),
        ("no", False),
    ],
)
def test_unreadable_by_both(text: str, expected: bool) -> None:
    assert unreadable_by_both(text) is expected


def test_metrics_on_hand_computed_confusion() -> None:
    labels = ["yes", "yes", "yes", "yes", "yes", "no", "no", "no"]
    preds = ["yes", "yes", "yes", "no", None, "yes", "no", "no"]
    assert confusion(preds, labels) == {"tp": 3, "fp": 1, "tn": 2, "fn": 1, "unparsed_yes": 1, "unparsed_no": 0}
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"], m["n_unparsed"]) == (3, 1, 2, 1, 8, 1)
    assert m["accuracy"] == pytest.approx(5 / 8)  # the unparsed answer is wrong
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)  # the unparsed yes-item is a miss
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(4 / 8)


def test_yes_ratio_counts_predictions_not_labels() -> None:
    labels = ["yes"] * 5 + ["no"] * 5
    preds = ["yes"] * 7 + ["no"] * 3
    m = pope_metrics(preds, labels)
    assert m["yes_ratio"] == pytest.approx(0.7)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(5 / 7)
    assert m["recall"] == pytest.approx(1.0)


def test_zero_division_cases_are_zero() -> None:
    m = pope_metrics(["no", "no"], ["no", "no"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (1.0, 0.0, 0.0, 0.0, 0.0)
    empty = pope_metrics([], [])
    assert (empty["n"], empty["accuracy"], empty["f1"], empty["yes_ratio"]) == (0, 0.0, 0.0, 0.0)
    unparsed = pope_metrics([None, None, None], ["yes", "no", "yes"])
    assert (unparsed["accuracy"], unparsed["recall"], unparsed["n_unparsed"], unparsed["yes_ratio"]) == (
        0.0,
        0.0,
        3,
        0.0,
    )


@pytest.mark.parametrize(
    ("preds", "labels"),
    [(["yes"], ["yes", "no"]), (["yes"], ["Yes"]), (["maybe"], ["yes"])],
)
def test_metrics_refuse_bad_inputs(preds: list, labels: list) -> None:
    with pytest.raises(DataError):
        pope_metrics(preds, labels)


def _questions(*ids: int) -> list[dict]:
    return [{"question_id": i, "image": f"{i}.jpg", "text": f"Is there a thing {i}?", "label": "yes"} for i in ids]


def test_join_out_of_order_answers_by_id() -> None:
    answers = [{"question_id": 3, "text": "c"}, {"question_id": 1, "text": "a"}, {"question_id": "2", "text": "b"}]
    joined = join_by_id(_questions(1, 2, 3), answers)
    assert [(r["question_id"], r["answer"]) for r in joined] == [(1, "a"), (2, "b"), (3, "c")]


def test_join_refuses_duplicate_answers() -> None:
    answers = [{"question_id": 1, "text": "a"}, {"question_id": 2, "text": "b"}, {"question_id": 1, "text": "again"}]
    with pytest.raises(DataError, match=r"1 question_id\(s\) answered more than once \(e\.g\. 1\)"):
        join_by_id(_questions(1, 2), answers)


def test_join_refuses_unknown_ids() -> None:
    answers = [{"question_id": 1, "text": "a"}, {"question_id": 2, "text": "b"}, {"question_id": 99, "text": "x"}]
    with pytest.raises(DataError, match=r"1 of 3 answers have question_ids not in the 2 questions \(e\.g\. 99\)"):
        join_by_id(_questions(1, 2), answers)


def test_join_refuses_missing_unless_allowed() -> None:
    answers = [{"question_id": 3, "text": "c"}, {"question_id": 1, "text": "a"}]
    with pytest.raises(DataError, match=r"1 of 3 questions have no answer \(e\.g\. 2\)"):
        join_by_id(_questions(1, 2, 3), answers)
    reporter = RecordingReporter()
    joined = join_by_id(_questions(1, 2, 3), answers, allow_missing=True, reporter=reporter)  # type: ignore[arg-type]
    assert [r["question_id"] for r in joined] == [1, 3]
    assert len(reporter.warnings) == 1 and "1 of 3 questions have no answer" in reporter.warnings[0]


def _write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def test_load_questions_accepts_imange_typo_and_reports_it(tmp_path: Path) -> None:
    rows = [
        {"question_id": 1, "imange": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"},
        {"question_id": 3, "imange": "b.jpg", "text": "Is there a car in the image?", "label": "no"},
    ]
    reporter = RecordingReporter()
    questions = load_questions(_write_jsonl(tmp_path / "q.json", rows), reporter=reporter)  # type: ignore[arg-type]
    assert [q["image"] for q in questions] == ["a.jpg", "a.jpg", "b.jpg"]
    assert all("imange" not in q for q in questions)
    assert len(reporter.warnings) == 1 and "2 line(s)" in reporter.warnings[0]


def test_load_questions_refuses_duplicates_with_line_number(tmp_path: Path) -> None:
    rows = [
        {"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"},
        "",
        {"question_id": 2, "image": "a.jpg", "text": "q", "label": "no"},
        {"question_id": 1, "image": "b.jpg", "text": "q", "label": "no"},
    ]
    path = _write_jsonl(tmp_path / "q.json", rows)
    with pytest.raises(DataError, match=r"q\.json:4: duplicate question_id 1 \(first on line 1\)"):
        load_questions(path)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"question_id": 1, "image": "a.jpg", "text": "q", "label": "maybe"}, r":2: label must be 'yes' or 'no'"),
        ({"question_id": 1, "image": "a.jpg", "text": "q"}, r":2: missing field\(s\) label"),
        ("{not json", r":2: not valid JSON"),
    ],
)
def test_load_questions_refuses_bad_lines(tmp_path: Path, row: dict | str, pattern: str) -> None:
    path = _write_jsonl(tmp_path / "q.json", [{"question_id": 0, "image": "a.jpg", "text": "q", "label": "no"}, row])
    with pytest.raises(DataError, match=pattern):
        load_questions(path)


def test_load_answers_keeps_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "Yes\u2028there is"}\n', encoding="utf-8")
    assert load_answers(path) == [{"question_id": 1, "text": "Yes\u2028there is"}]


def test_load_answers_reads_and_validates(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Yes", "model_id": "m"}])
    assert load_answers(path) == [{"question_id": 1, "text": "Yes", "model_id": "m"}]
    bad = _write_jsonl(tmp_path / "b.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "answer": "No"}])
    with pytest.raises(DataError, match=r"b\.jsonl:2: missing field\(s\) text"):
        load_answers(bad)
    with pytest.raises(DataError, match="file not found"):
        load_answers(tmp_path / "nope.jsonl")


def test_score_pope_side_by_side() -> None:
    questions = [
        {"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "q", "label": "no"},
        {"question_id": 3, "image": "a.jpg", "text": "q", "label": "no"},
        {"question_id": 4, "image": "a.jpg", "text": "q", "label": "no"},
    ]
    answers = [
        {"question_id": 4, "text": "No"},
        {"question_id": 2, "text": "I don't know"},
        {"question_id": 1, "text": "Yes"},
        {"question_id": 3, "text": "There isn't a cat"},
    ]
    result = score_pope(questions, answers)
    official, robust = result["official"], result["robust"]
    # official: yes, yes (default), yes (misses n't), no
    assert (official["tp"], official["fp"], official["tn"], official["fn"]) == (1, 2, 1, 0)
    assert official["accuracy"] == pytest.approx(0.5)
    assert official["f1"] == pytest.approx(0.5)
    assert official["yes_ratio"] == pytest.approx(0.75)
    # robust: yes, None, no, no
    assert (robust["tp"], robust["fp"], robust["tn"], robust["fn"], robust["n_unparsed"]) == (1, 0, 2, 0, 1)
    assert robust["accuracy"] == pytest.approx(0.75)
    assert robust["f1"] == pytest.approx(1.0)
    assert robust["yes_ratio"] == pytest.approx(0.25)
    assert (result["n_unreadable"], result["unreadable_ids"], result["n_missing"]) == (1, [2], 0)
    assert [r["robust_correct"] for r in result["records"]] == [True, False, True, True]
