"""seed prepare --detect -> seed detect train -> run -> evaluate, offline on CPU with the three tiny rungs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedcli.detect.items import read_items, write_items

pytestmark = pytest.mark.smoke

RUNGS = "tiny-qwen2-vl-l,tiny-qwen2-vl-m,tiny-qwen2-vl-s"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seedcli.cli.app import main

    root = tmp_path_factory.mktemp("detect") / "data"
    with pytest.raises(SystemExit) as done:
        args = ["prepare", "--synthetic", "--detect", "--synthetic-images", "40", "--detect-unlabelled", "40"]
        main([*args, "--out", str(root), "--json"])
    assert done.value.code == 0
    counts = json.loads((root / "manifest.json").read_text())["counts"]
    assert (counts["track1_unlabelled"], counts["track2_unlabelled"]) == (40, 20)
    detect = root / "detect"
    # Small subsets keep the smoke test in seconds; they live beside the originals so images resolve.
    for split, n in (("train", 8), ("dev", 4), ("test", 6)):
        items = (
            read_items(detect / f"track1-{split}.jsonl")[:n] + read_items(detect / f"track2-{split}.jsonl")[: n // 2]
        )
        write_items(detect / f"small-{split}.jsonl", items)
    unlabelled = read_items(detect / "track1-unlabelled.jsonl")[:4] + read_items(detect / "track2-unlabelled.jsonl")[:2]
    write_items(detect / "small-unlabelled.jsonl", unlabelled)
    return root


def test_pipeline(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    detect = data / "detect"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["track1_train"] > 0 and "detect/track1-train.jsonl" in manifest["files"]
    run = tmp_path / "run"
    code, out, err = cli(_train_args(detect, run, transfer=True))
    assert code == 0, err
    summary = json.loads(out)
    assert list(summary["stages"]) == ["sft", "kd-1", "kd-2", "refine"]
    assert summary["detector"] == "stages/refine/rung-2" and summary["detector_model"] == "tiny-qwen2-vl-s"
    assert summary["train_items"] == 12 and summary["transfer_items"] == 6
    assert (run / "stages" / "kd-1" / "rung-0" / "model.safetensors").is_file()  # online: the teacher was saved too
    assert not any((run / "checkpoints").glob("*/state.json"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"kl0", "teacher_ce", "mutual"} <= set(next(m for m in metrics if m["stage"] == "kd-1"))
    assert {"kl0", "kl1"} <= set(next(m for m in metrics if m["stage"] == "refine"))

    test = detect / "small-test.jsonl"
    code, out, err = cli(
        ["detect", "run", "--model", str(run), "--input", str(test), "--shifts", "2", "--device", "cpu"]
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    items = read_items(test)
    assert [r["id"] for r in records] == [i.id for i in items]
    first = records[0]
    assert [o["id"] for o in first["options"]] == [o.id for o in items[0].options]
    assert all(0.0 <= o["p_hallucinated"] <= 1.0 for o in first["options"])
    assert records[-1]["track"] == 2 and isinstance(records[-1]["factual"], bool)

    results_dir = tmp_path / "results"
    args = ["detect", "evaluate", "--model", str(run), "--model", f"{run}@sft", "--input", str(test), "--shifts", "1"]
    args += ["--dev-input", str(detect / "small-dev.jsonl")]
    code, out, err = cli([*args, "--device", "cpu", "--out", str(results_dir), "--json"])
    assert code == 0, err
    results = json.loads(out)
    assert [m["label"] for m in results["models"]] == ["run", "run@sft"]
    reference, other = results["models"]
    assert set(reference["track1"]["kinds"]) == {"object", "attribute", "relation"} and "track2" in reference
    aucs = [reference["track1"]["options"]["auc"], reference["track1"]["macro_auc"], reference["track2"]["auc"]]
    aucs += [kind["auc"] for kind in reference["track1"]["kinds"].values()]
    assert all(a is None or 0.0 <= a <= 100.0 for a in aucs) and reference["track1"]["options"]["auc"] is not None
    assert other["vs_reference"]["n"] == sum(len(i.options) or 1 for i in items)
    assert (results_dir / "results.json").is_file() and (results_dir / "predictions-1.jsonl").is_file()

    # Resuming a finished run retrains nothing; different settings are refused.
    before = (run / "stages" / "refine" / "rung-2" / "model.safetensors").read_bytes()
    code, out, err = cli([*_train_args(detect, run, transfer=True), "--resume"])
    assert code == 0, err
    assert (run / "stages" / "refine" / "rung-2" / "model.safetensors").read_bytes() == before
    code, _, err = cli([*_train_args(detect, run, transfer=True), "--resume", "--offline"])
    assert code == 2 and "offline" in err


def _train_args(detect: Path, run: Path, *, transfer: bool = False) -> list[str]:
    args = ["detect", "train", "--models", RUNGS, "--train-files", str(detect / "small-train.jsonl")]
    if transfer:  # the refinement also goes through six unlabelled items
        args += ["--transfer-files", str(detect / "small-unlabelled.jsonl")]
    args += [
        "--dev-files",
        str(detect / "small-dev.jsonl"),
        "--epochs",
        "1",
        "--refine-epochs",
        "1",
        "--batch-size",
        "16",
    ]
    return [*args, "--device", "cpu", "--out", str(run), "--json"]


def test_bad_input_is_one_line_with_exit_code_3(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.jsonl"
    row = {
        "id": "x",
        "image": str(data / "detect" / "images" / "t1-test-00000.png"),
        "caption": "A cat.",
        "options": [],
    }
    bad.write_text(json.dumps(row) + "\n")
    code, _, err = cli(["detect", "run", "--model", str(tmp_path), "--input", str(bad)])
    assert code == 3 and "non-empty 'options'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["detect", "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert code == 3 and "seed prepare --synthetic --detect" in err
    # A bad transfer-set file is refused before anything trains, and nothing is written.
    # (_train_args(...)[:-3] drops its trailing "--out RUN --json".)
    out = tmp_path / "t"
    code, _, err = cli([*_train_args(data / "detect", out)[:-3], "--transfer-files", str(bad), "--out", str(out)])
    assert code == 3 and "non-empty 'options'" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    clash = tmp_path / "clash.jsonl"
    write_items(clash, read_items(data / "detect" / "small-train.jsonl")[:1])
    code, _, err = cli([*_train_args(data / "detect", out)[:-3], "--transfer-files", str(clash), "--out", str(out)])
    assert code == 3 and "also appears" in err and not out.exists()
    one_rung = [*_train_args(data / "detect", out, transfer=True)[:-3], "--models", RUNGS.split(",")[-1]]
    code, _, err = cli([*one_rung, "--out", str(out)])
    assert code == 2 and "no stage of this run uses a transfer set" in err and not out.exists()


def test_items_from_chair_captions(data: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    chair = [json.loads(line) for line in (data / "chair" / "images.jsonl").read_text().splitlines()]
    image = chair[0]
    present = image["objects"][0]
    absent = next(name for name in ("fork", "knife", "dog", "cat", "car") if name not in image["objects"])
    rows = [
        {"model": "m", "benchmark": "chair", "seed": 0, "id": image["image_id"], "image": image["image"],
         "output": f"There is a {present} and a {absent}.", "label": image["objects"]},
        {"model": "m", "benchmark": "chair", "seed": 0, "id": chair[1]["image_id"], "image": chair[1]["image"],
         "output": "Nothing to see.", "label": chair[1]["objects"]},
        {"model": "m", "benchmark": "pope", "id": 1, "output": "Yes"},
    ]  # fmt: skip
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = cli(
        ["detect", "import", "--from-chair", "--input", str(samples), "--data", str(data), "--name", "coco", "--json"]
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["items"] == 1 and result["skipped"]["no_option"] == 1
    (item,) = read_items(Path(result["out"]), require_labels=True)
    assert [o.text for o in item.options] == [present, absent]
    assert item.hallucinated() == {"A": False, "B": True}


class _StopAt:
    """A reporter that interrupts training at the first step of `stage` in its epoch 2."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def task(self, description: str, total: int | None, unit: str = "it"):  # noqa: ANN201
        import contextlib

        stage = self.stage

        class _Task:
            def advance(self, n: int = 1, **fields: object) -> None:
                if description.startswith(stage) and fields.get("epoch") == 2:
                    raise KeyboardInterrupt

        return contextlib.nullcontext(_Task())

    def log(self, fields: object) -> None: ...
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...


def small_run(data: Path, **overrides: object) -> dict:
    """Settings of a two-rung run on the small training file in a few seconds (shared by the resume tests)."""
    return {
        "models": tuple(RUNGS.split(",")[1:]),
        "train_files": (data / "detect" / "small-train.jsonl",),
        "transfer_files": (data / "detect" / "small-unlabelled.jsonl",),  # mixed batches in refine
        "dev_files": (),
        "data": data / "none",
        "epochs": 2,
        "refine_epochs": 1,
        "batch_size": 16,
        "device": "cpu",
        **overrides,
    }


def test_resume_mid_stage_gives_the_same_weights(data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from seedcli.config.detect import DetectTrainConfig
    from seedcli.detect.train import train
    from seedcli.reporting import NullReporter

    common = small_run(data)
    train(DetectTrainConfig(out=tmp_path / "straight", **common), NullReporter())
    with pytest.raises(KeyboardInterrupt):
        train(DetectTrainConfig(out=tmp_path / "resumed", **common), _StopAt("kd-1"))
    assert (tmp_path / "resumed" / "checkpoints" / "kd-1" / "state.json").is_file()
    train(DetectTrainConfig(out=tmp_path / "resumed", resume=True, **common), NullReporter())
    for stage in ("sft", "kd-1", "refine"):
        rung = "rung-0" if stage == "sft" else "rung-1"
        a = load_file(str(tmp_path / "straight" / "stages" / stage / rung / "model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / "stages" / stage / rung / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), stage
