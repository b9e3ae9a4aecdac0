"""lmms-eval's POPE sample logs (`--log_samples`) as POPE answers for `seed evaluate --answers`.

lmms-eval writes one JSON object per evaluated question (samples_<task>.jsonl; older versions: a
JSON document whose "logs" list holds the same objects). Per object we read:
    doc_id             lmms-eval's row index
    doc                the dataset row without its image: question_id, question, answer, category
    filtered_resps     the model's answer after lmms-eval's filters (a list; the first item is used)
    resps              the raw answer, used when filtered_resps is absent
    pope_accuracy      a dict with question_id, prediction, ground_truth (the POPE task's metric)
The answer keeps the model's raw text, so seedcli's official and robust parsers score it exactly as
they score its own generations. A log of the whole `pope` task holds all three categories, whose
question ids repeat: the category of the --pope-file (from its name) selects the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seedcli.data.datadir import POPE_SPLITS
from seedcli.errors import DataError


def _objects(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip():
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("logs"), list):
            return [row for row in document["logs"] if isinstance(row, dict)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object.")
        rows.append(row)
    return rows


def is_lmms_eval_log(path: Path) -> bool:
    """Whether `path` looks like an lmms-eval sample log (doc_id plus resps or filtered_resps)."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as handle:
        head = handle.read(4096)
    return '"doc_id"' in head and ('"filtered_resps"' in head or '"resps"' in head)


def _first_text(value: Any) -> str | None:
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def split_of(pope_file: Path) -> str | None:
    """The POPE split a question file is named after (coco_pope_adversarial.json -> adversarial)."""
    found = [split for split in POPE_SPLITS if split in Path(pope_file).name]
    return found[0] if len(found) == 1 else None


def read_lmms_eval_answers(path: Path, *, split: str | None) -> list[dict[str, Any]]:
    """{"question_id", "text"} answers from a POPE sample log; rows of other categories than `split` left out."""
    path = Path(path)
    answers = []
    categories = set()
    for number, row in enumerate(_objects(path), start=1):
        doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
        metric = row.get("pope_accuracy") if isinstance(row.get("pope_accuracy"), dict) else {}
        question_id = doc.get("question_id", metric.get("question_id"))
        text = _first_text(row.get("filtered_resps")) if "filtered_resps" in row else _first_text(row.get("resps"))
        if question_id is None:
            raise DataError(
                f"{path}: sample {number} (doc_id {row.get('doc_id')}) has no question_id in doc or pope_accuracy."
            )
        if text is None:
            raise DataError(
                f"{path}: sample {number} (doc_id {row.get('doc_id')}) has no text answer in filtered_resps/resps."
            )
        category = doc.get("category")
        categories.add(category)
        answers.append({"question_id": question_id, "text": text, "category": category})
    if not answers:
        raise DataError(f"{path}: contains no samples.")
    if len(categories - {None}) > 1:
        if split is None:
            raise DataError(
                f"{path}: the log holds several POPE categories ({', '.join(sorted(c for c in categories if c))}) "
                "and --pope-file's name does not say which split it is; "
                "name it after its split (e.g. coco_pope_random.json)."
            )
        answers = [a for a in answers if a["category"] == split]
        if not answers:
            raise DataError(f"{path}: no samples of category {split!r}.")
    return [{"question_id": a["question_id"], "text": a["text"]} for a in answers]


def load_any_answers(answers: Path, pope_file: Path) -> list[dict[str, Any]]:
    """--answers as seedcli/POPE answer lines or as an lmms-eval sample log."""
    from seedcli.evals.pope_scoring import load_answers

    if is_lmms_eval_log(answers):
        return read_lmms_eval_answers(answers, split=split_of(pope_file))
    return load_answers(answers)
