"""Neighbouring tools' formats: the hub's POPE parquet (lmms-lab layout) and lmms-eval POPE sample logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from seedcli.data.datadir import POPE_SPLITS, open_data_dir, pope_file

pytestmark = pytest.mark.smoke

OBJECTS = ("dog", "cat", "car", "cup", "bus", "kite")


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hub_pope(root: Path) -> list[dict]:
    """Two parquet shards in the lmms-lab/POPE layout; question ids restart per category as in the hub set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for split in POPE_SPLITS:
        question_id = 0
        for image in (1, 2):
            for k in range(3):
                for answer, name in (("yes", OBJECTS[k + image - 1]), ("no", OBJECTS[k + 3])):
                    question_id += 1
                    stem = f"COCO_val2014_{image:012d}"
                    rows.append(
                        {
                            "id": str(len(rows)),
                            "question_id": str(question_id),
                            "question": f"Is there a {name} in the image?",
                            "answer": answer,
                            "image_source": stem,
                            "category": split,
                            "image": {"bytes": png(40 * image), "path": f"{stem}.jpg"},
                        }
                    )
    (root / "data").mkdir(parents=True)
    half = len(rows) // 2
    for index, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), root / "data" / f"test-0000{index}-of-00002.parquet")
    return rows


def lmms_eval_samples(rows: list[dict], answer_for) -> list[dict]:
    """Sample-log objects as lmms-eval writes them for the POPE task (the image left out of doc)."""
    samples = []
    for doc_id, row in enumerate(rows):
        doc = {k: v for k, v in row.items() if "image" not in k}
        text = answer_for(row)
        prediction = text.lower().strip()
        metric = {
            "question_id": row["question_id"],
            "score": float(prediction == row["answer"]),
            "prediction": prediction,
            "ground_truth": row["answer"],
        }
        samples.append(
            {
                "doc_id": doc_id,
                "doc": doc,
                "target": row["answer"],
                "arguments": [],
                "resps": [[text]],
                "filtered_resps": [text],
                "doc_hash": "x",
                "pope_accuracy": metric,
                "pope_f1_score": metric,
            }
        )
    return samples


def test_hub_parquet_is_imported_with_its_embedded_images(tmp_path, cli):
    rows = write_hub_pope(tmp_path / "POPE")
    out = tmp_path / "seed-data"
    code, stdout, stderr = cli(
        ["prepare", "--pope-from", str(tmp_path / "POPE"), "--no-train", "--no-chair", "--out", str(out)]
    )
    assert code == 0, stderr
    data = open_data_dir(out)
    for split in POPE_SPLITS:
        written = [json.loads(line) for line in (out / pope_file(split)).read_text().splitlines()]
        expected = [r for r in rows if r["category"] == split]
        assert [w["question_id"] for w in written] == [int(r["question_id"]) for r in expected]
        assert [(w["text"], w["label"]) for w in written] == [(r["question"], r["answer"]) for r in expected]
        assert {w["image"] for w in written} == {"COCO_val2014_000000000001.png", "COCO_val2014_000000000002.png"}
    image = data.resolve_image("pope", "COCO_val2014_000000000002.png")
    assert image.is_file() and image.read_bytes() == png(80)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_roots"]["pope"] == "images/pope"
    assert manifest["pope_import"]["random"]["questions"] == 12


def test_lmms_eval_log_is_read_and_scored(tmp_path, cli):
    rows = write_hub_pope(tmp_path / "POPE")
    out = tmp_path / "seed-data"
    assert (
        cli(["prepare", "--pope-from", str(tmp_path / "POPE"), "--no-train", "--no-chair", "--out", str(out)])[0] == 0
    )

    def answer_for(row: dict) -> str:
        # Always "Yes." for the first image, the right answer for the second: 9 of 12 right per split.
        return "Yes." if row["image_source"].endswith("1") else row["answer"].capitalize()

    log = tmp_path / "samples_pope.jsonl"
    log.write_text("".join(json.dumps(s) + "\n" for s in lmms_eval_samples(rows, answer_for)), encoding="utf-8")
    results = tmp_path / "results"
    questions = out / pope_file("adversarial")
    code, stdout, stderr = cli(
        ["evaluate", "--pope-file", str(questions), "--answers", str(log), "--out", str(results), "--json"]
    )
    assert code == 0, stderr
    scored = json.loads(stdout)["pope"]["samples_pope.jsonl"]["coco_pope_adversarial.json"]["official"]
    # first image: 3 positives right, 3 negatives wrong; second image: all 6 right.
    assert scored["tp"] == 6 and scored["fp"] == 3 and scored["tn"] == 3 and scored["fn"] == 0
    assert scored["accuracy"] == pytest.approx(9 / 12)

    # Older lmms-eval versions wrote one JSON document with a "logs" list.
    old = tmp_path / "pope_old.json"
    old.write_text(json.dumps({"args": {}, "logs": lmms_eval_samples(rows, answer_for)}, indent=1), encoding="utf-8")
    code, stdout, stderr = cli(
        ["evaluate", "--pope-file", str(questions), "--answers", str(old), "--out", str(tmp_path / "r2"), "--json"]
    )
    assert code == 0, stderr
    assert json.loads(stdout)["pope"]["pope_old.json"]["coco_pope_adversarial.json"]["official"][
        "accuracy"
    ] == pytest.approx(9 / 12)


def test_a_mixed_log_needs_a_split_named_question_file(tmp_path):
    from seedcli.errors import DataError
    from seedcli.evals.lmms_eval_logs import read_lmms_eval_answers

    rows = write_hub_pope(tmp_path / "POPE")
    log = tmp_path / "samples_pope.jsonl"
    log.write_text("".join(json.dumps(s) + "\n" for s in lmms_eval_samples(rows, lambda r: "No")), encoding="utf-8")
    with pytest.raises(DataError, match="several POPE categories"):
        read_lmms_eval_answers(log, split=None)
    assert len(read_lmms_eval_answers(log, split="popular")) == 12


def test_two_copies_of_the_hub_set_are_refused(tmp_path):
    from seedcli.data.pope import import_pope
    from seedcli.errors import DataError

    write_hub_pope(tmp_path / "POPE")
    (tmp_path / "POPE" / "copy").mkdir()
    for shard in (tmp_path / "POPE" / "data").glob("*.parquet"):
        (tmp_path / "POPE" / "copy" / shard.name).write_bytes(shard.read_bytes())
    with pytest.raises(DataError, match="already read from .*point --pope-from at one copy"):
        import_pope(tmp_path / "POPE", images_to=tmp_path / "images")
