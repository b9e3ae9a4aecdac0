"""`seed evaluate --detector` and `seed prepare --filter-with` end to end, with a detector trained here in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from seedcli import atomic
from seedcli.detect.extract import extract_options

# The world with detection sets, and the train command, of the pipeline test.
from tests.smoke.test_detect import _train_args, data  # noqa: F401

pytestmark = pytest.mark.smoke

CAPTIONER = ["--model", "tiny-qwen2-vl", "--chair", "--limit", "3", "--max-new-tokens-chair", "24", "--bootstrap", "0"]


@pytest.fixture(scope="module")
def detector(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The smallest rung fine-tuned directly for one epoch on the small training set: the cheapest detect run."""
    from seedcli.cli.app import main

    run = tmp_path_factory.mktemp("detector") / "run"
    args = _train_args(data / "detect", run)
    args[args.index("--models") + 1] = "tiny-qwen2-vl-s"
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    return run


def _evaluate(cli, root: Path, out: Path, *extra: str) -> tuple[int, str, str]:  # noqa: ANN001
    return cli(["evaluate", *CAPTIONER, "--data", str(root), "--device", "cpu", "--out", str(out), *extra])


def test_evaluate_rates_the_chair_captions(data: Path, detector: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001, F811
    out = tmp_path / "results"
    code, stdout, err = _evaluate(cli, data, out, "--detector", str(detector), "--detector-threshold", "0", "--json")
    assert code == 0, err
    results = json.loads(stdout)
    rows = [r for r in atomic.read_jsonl(out / "samples.jsonl") if r["benchmark"] == "chair"]
    assert len(rows) == 3
    extracted = [extract_options(r["output"]).options for r in rows]
    assert sum(map(len, extracted)) > 0, [r["output"] for r in rows]  # the test must reach the detector
    for row, options in zip(rows, extracted):
        record = row["detector"]
        assert record["label"] == "run" and [o["text"] for o in record["options"]] == [o.text for o in options]
        # Threshold 0 flags every option that was asked about: nothing is lost between items and records.
        assert record["hallucinated"] == [o.id for o in options]
        assert all(0.0 <= o["p_hallucinated"] <= 1.0 for o in record["options"])
    block = results["detector"]["models"]["base"]
    with_options = sum(1 for options in extracted if options)
    assert block["n_captions"] == 3 and block["n_no_options"] == 3 - with_options
    assert block["n_options"] == sum(map(len, extracted)) and block["flagged_pct"] == 100.0
    assert block["captions_flagged_pct"] == pytest.approx(100 * with_options / 3)
    kinds = {o.kind for options in extracted for o in options}
    for kind in ("object", "attribute", "relation"):
        assert (block[f"{kind}_pct"] == 100.0) if kind in kinds else block[f"{kind}_pct"] is None
    assert results["detector"]["shifts"] == 3 and results["detector"]["threshold"] == 0.0
    assert json.loads((out / "results.json").read_text())["detector"] == results["detector"]

    # Rerun on the same --out: captions are reused, the detector flags with its own threshold; the table shows it.
    code, stdout, err = _evaluate(cli, data, out, "--detector", f"{detector}@sft", "--detector-shifts", "1")
    assert code == 0, err
    assert "Detector run@sft (1 shift(s))" in err and "captions flagged %" in err
    thresholds = json.loads((detector / "summary.json").read_text())["thresholds"]["sft"]
    stored = thresholds["track1"]
    results = json.loads((out / "results.json").read_text())
    assert results["detector"]["threshold"] == stored and results["detector"]["label"] == "run@sft"
    per_kind = {k: thresholds[k] for k in ("object", "attribute", "relation") if k in thresholds}
    assert results["detector"]["thresholds"] == per_kind
    rows = [r for r in atomic.read_jsonl(out / "samples.jsonl") if r["benchmark"] == "chair"]
    for row in rows:
        flags = [o["id"] for o in row["detector"]["options"] if o["p_hallucinated"] > per_kind.get(o["kind"], stored)]
        assert row["detector"]["label"] == "run@sft" and row["detector"]["hallucinated"] == flags


def _prepare(cli, out: Path, *extra: str) -> dict:  # noqa: ANN001
    args = ["prepare", "--synthetic", "--synthetic-images", "40", "--no-pope", "--no-chair", "--out", str(out)]
    code, stdout, err = cli([*args, "--json", *extra])
    assert code == 0, err
    return json.loads(stdout)


def test_prepare_filters_the_flagged_conversations(detector: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    from seedcli.data.datadir import open_data_dir

    plain = _prepare(cli, tmp_path / "plain")
    records = list(open_data_dir(tmp_path / "plain").iter_train())
    turns = [(r.id, m["content"]) for r in records for m in r.messages if m["role"] == "assistant"]
    answers = [text for _, text in turns if text.strip()]
    with_options = {rid for rid, text in turns if extract_options(text).options}
    assert 0 < len(with_options) < len(records)

    every = _prepare(cli, tmp_path / "every", "--filter-with", str(detector), "--filter-threshold", "0")
    assert every["dropped"]["detector_flagged"] == len(with_options) == every["filter"]["conversations_dropped"]
    assert every["counts"]["train"] == plain["counts"]["train"] - len(with_options)
    assert every["counts"]["filter_answers"] == len(answers)
    assert every["counts"]["filter_no_options"] == sum(1 for a in answers if not extract_options(a).options)
    kept = {r.id for r in open_data_dir(tmp_path / "every").iter_train()}
    assert kept == {r.id for r in records} - with_options
    dropped = atomic.read_jsonl(tmp_path / "every" / "filtered.jsonl")
    assert {row["id"] for row in dropped} == with_options and all(row["answers"][0]["flagged"] for row in dropped)
    manifest = json.loads((tmp_path / "every" / "manifest.json").read_text())
    assert manifest["filter"]["conversations_dropped"] == len(with_options) and "filtered.jsonl" in manifest["files"]
    counts = manifest["counts"]
    assert counts["read"] == sum(manifest["dropped"].values()) + counts["train"] + counts["not_sampled"]

    none = _prepare(cli, tmp_path / "none", "--filter-with", str(detector), "--filter-threshold", "1")
    assert none["dropped"]["detector_flagged"] == 0 and none["counts"]["train"] == plain["counts"]["train"]
    assert none["counts"]["filter_flagged_answers"] == 0


def test_bad_detectors_fail_in_one_line_and_write_nothing(
    data: Path,  # noqa: F811
    detector: Path,
    tmp_path: Path,
    cli,  # noqa: ANN001
) -> None:
    distill = tmp_path / "distill-run"
    distill.mkdir()
    (distill / "config.json").write_text(json.dumps({"command": "distill"}))
    (distill / "summary.json").write_text("{}")
    broken = tmp_path / "broken"
    shutil.copytree(detector, broken)
    final = json.loads((broken / "summary.json").read_text())["detector"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (broken / final / name).is_file():
            (broken / final / name).write_text("{not json")
    cases = [(distill, 3, "not a `seed detect train` run"), (broken, 4, "tokenizer/processor")]
    for run, exit_code, message in cases:
        out = tmp_path / f"results-{run.name}"
        code, _, err = _evaluate(cli, data, out, "--detector", str(run))
        assert code == exit_code and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
        prepared = tmp_path / f"data-{run.name}"
        code, _, err = cli(["prepare", "--synthetic", "--out", str(prepared), "--filter-with", str(run)])
        assert code == exit_code and message in err and len(err.strip().splitlines()) == 1, err
        assert not prepared.exists() and not list(tmp_path.glob(f".{prepared.name}*"))
    code, _, err = _evaluate(cli, data, tmp_path / "r", "--detector", f"{detector}@nope")
    assert code == 2 and "no stage 'nope'" in err
    code, _, err = cli(["evaluate", "--model", "tiny-qwen2-vl", "--pope", "random", "--detector", str(detector)])
    assert code == 2 and "--chair" in err
    code, _, err = cli(["prepare", "--synthetic", "--no-train", "--filter-with", str(detector)])
    assert code == 2 and "--no-train" in err
    code, _, err = cli(["evaluate", "--model", "tiny-qwen2-vl", "--chair", "--detector-shifts", "2"])
    assert code == 2 and "need --detector RUN" in err
    code, _, err = cli(["prepare", "--synthetic", "--filter-threshold", "0.3"])
    assert code == 2 and "need --filter-with RUN" in err


def test_a_lora_detector_screens_with_its_base_processor(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001, F811
    run = tmp_path / "lora"
    args = _train_args(data / "detect", run)
    args[args.index("--models") + 1] = "tiny-qwen2-vl-s"
    code, _, err = cli([*args, "--tuning", "lora"])
    assert code == 0, err
    assert (run / "stages" / "sft" / "rung-0" / "rung.json").is_file()  # an adapter without a processor of its own
    out = tmp_path / "results"
    code, stdout, err = _evaluate(cli, data, out, "--detector", str(run), "--detector-threshold", "0", "--json")
    assert code == 0, err
    block = json.loads(stdout)["detector"]["models"]["base"]
    assert block["n_options"] > 0 and block["flagged_pct"] == 100.0
