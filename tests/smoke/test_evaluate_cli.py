"""`seed evaluate` end to end on tiny-llava: results fields, adapters side by side, resume, score-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedcli import atomic
from seedcli.data.datadir import CHAIR_FILE, pope_file, write_manifest
from tests.conftest import image_file

pytestmark = pytest.mark.smoke

SPLITS = ("random", "popular", "adversarial")
IMAGES = {"a.png": (200, 30, 30), "b.png": (10, 200, 10), "c.png": (10, 10, 200)}
OBJECTS = {"a.png": ["dog", "cup"], "b.png": ["car", "person"], "c.png": ["cat", "chair"]}
NEGATIVES = {"random": ["pizza", "boat"], "popular": ["person", "car"], "adversarial": ["bowl", "truck"]}
QUESTIONS_PER_SPLIT = 8
FAST = ["--max-new-tokens", "3", "--max-new-tokens-chair", "6", "--bootstrap", "20", "--batch-size", "4"]


def _pope_lines(split: str) -> list[dict]:
    rows = []
    for image, objects in OBJECTS.items():
        for positive, negative in zip(objects, NEGATIVES[split]):
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": image,
                    "text": f"Is there a {positive} in the image?",
                    "label": "yes",
                }
            )
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": image,
                    "text": f"Is there a {negative} in the image?",
                    "label": "no",
                }
            )
    return rows[:QUESTIONS_PER_SPLIT]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data directory: three PNGs, 8 POPE questions per split, three CHAIR images."""
    root = tmp_path_factory.mktemp("data")
    for name, color in IMAGES.items():
        image_file(root / "images" / name, color)
    for split in SPLITS:
        atomic.write_jsonl(root / pope_file(split), _pope_lines(split))
    chair = [{"image_id": 100 + i, "image": name, "objects": OBJECTS[name]} for i, name in enumerate(IMAGES)]
    atomic.write_jsonl(root / CHAIR_FILE, chair)
    write_manifest(
        root, source={"kind": "test"}, seed=0, counts={}, dropped={}, image_roots={"pope": "images", "chair": "images"}
    )
    return root


def make_run(root: Path, model: str = "tiny-llava") -> Path:
    """A finished run directory with a non-identity LoRA adapter on the tiny model."""
    from peft import LoraConfig, get_peft_model

    from seedcli.models.loading import load

    loaded = load(model, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=loaded.family.lora_target_regex())
    get_peft_model(loaded.model, config).save_pretrained(str(root / "adapter"))
    atomic.write_json(root / "config.json", {"command": "distill", "config": {"model": model}})
    atomic.write_json(root / "summary.json", {})
    return root


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One adapter run directory, named seedrun."""
    return make_run(tmp_path_factory.mktemp("runs") / "seedrun")


def _samples(out: Path) -> list[dict]:
    return atomic.read_jsonl(out / "samples.jsonl")


def _distinct(limit: int, start: int = 0) -> int:
    """Distinct (image, question) pairs among questions start+1..limit of every split."""
    return len({(q["image"], q["text"]) for split in SPLITS for q in _pope_lines(split)[start:limit]})


def _count_generate_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the generation entry point to record how many prompts each call got."""
    from seedcli.evals import generation

    calls: list[int] = []
    real = generation.generate

    def counting(model, processor, family, prompts, images, decoding, **kwargs):  # noqa: ANN001, ANN202
        calls.append(len(prompts))
        return real(model, processor, family, prompts, images, decoding, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    return calls


def test_evaluate_model_produces_every_field_and_resumes(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results"
    args = [
        "evaluate",
        "--model",
        "tiny-llava",
        "--data",
        str(data_dir),
        "--pope",
        "all",
        "--chair",
        "--limit",
        "6",
        "--out",
        str(out),
        "--json",
        *FAST,
    ]
    calls = _count_generate_calls(monkeypatch)
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results == json.loads((out / "results.json").read_text())
    for key in (
        "schema_version",
        "seedcli_version",
        "created",
        "ok",
        "errors",
        "config",
        "environment",
        "protocol",
        "settings",
        "prompts",
        "models",
        "data",
        "pope",
        "chair",
        "comparisons",
    ):
        assert key in results, key
    assert results["schema_version"] == 1 and results["ok"] is True and results["errors"] == []
    assert results["config"]["limit"] == 6 and results["protocol"]["label"] == "greedy"
    assert (
        results["prompts"]["pope"]["rendered"]
        == "USER: <image>\nIs there a dog in the image?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )
    assert results["prompts"]["chair"]["rendered"] == "USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    assert "ASSISTANT:" in results["prompts"]["chat_template"]
    assert [m["label"] for m in results["models"]] == ["base"] and results["models"][0]["family"] == "llava"
    assert results["comparisons"] == {}
    assert set(results["pope"]["base"]) == {*SPLITS, "average"}
    rows = _samples(out)
    assert len(rows) == 3 * 6 + 3
    # The metrics are the scorer's on the sample rows, recomputed here by hand from "correct".
    for split in SPLITS:
        block = results["pope"]["base"][split]
        mine = [r for r in rows if r["benchmark"] == "pope" and r["split"] == split]
        assert [r["id"] for r in mine] == [1, 2, 3, 4, 5, 6]
        assert block["n_questions"] == 6
        assert block["official"]["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / 6)
        predicted_yes = sum(r["parsed"]["official"] == "yes" for r in mine)
        assert block["official"]["yes_ratio"] == pytest.approx(predicted_yes / 6)
        assert {"official", "robust", "spread", "n_unreadable", "per_seed"} <= set(block)
        assert all(r["input"].endswith("\nAnswer the question using a single word or phrase.") for r in mine)
    chair = results["chair"]["base"]
    assert chair["n_images"] == 3 and {"chair_s_pct", "chair_i_pct", "recall_pct", "mean_length_words"} <= set(chair)
    assert {"chair_s_ci_pct", "chair_i_ci_pct"} <= set(chair["per_seed"][0])
    captions = [r for r in rows if r["benchmark"] == "chair"]
    assert chair["chair_s_pct"] == pytest.approx(100 * sum(not r["correct"] for r in captions) / 3)
    assert all(r["input"] == "Please describe this image in detail." for r in captions)
    # A question asked in several splits (same image, same text) is answered once, recorded under every id.
    asked = {(r["image"], r["input"]) for r in rows if r["benchmark"] == "pope"}
    assert len(asked) == _distinct(6) < 3 * 6
    assert sum(calls) == len(asked) + 3
    for image, prompt in asked:
        answers = {r["output"] for r in rows if (r["image"], r["input"]) == (image, prompt)}
        assert len(answers) == 1
    assert any(sum((r["image"], r["input"]) == key for r in rows) == 3 for key in asked)

    # Same command again: everything is finished, nothing is generated, same metrics.
    calls.clear()
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    assert calls == [] and len(_samples(out)) == len(rows)
    assert json.loads(stdout)["pope"] == results["pope"]

    # A larger --limit generates only the new questions (2 per split; CHAIR has only 3 images).
    more = list(args)
    more[more.index("--limit") + 1] = "8"
    code, stdout, stderr = cli(more)
    assert code == 0, stderr
    assert sum(calls) == _distinct(8, start=6)
    assert len(_samples(out)) == 3 * 8 + 3
    assert json.loads(stdout)["pope"]["base"]["random"]["n_questions"] == 8


def test_interrupted_run_resumes_without_redoing_finished_batches(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedcli.evals import generation

    out = tmp_path / "results"
    args = [
        "evaluate",
        "--model",
        "tiny-llava",
        "--data",
        str(data_dir),
        "--pope",
        "random",
        "--out",
        str(out),
        "--json",
        *FAST[:2],
        "--batch-size",
        "3",
    ]
    real = generation.generate
    seen: list[str] = []

    def interrupt_second_batch(model, processor, family, prompts, images, decoding, **kwargs):  # noqa: ANN001, ANN202
        if seen:
            raise KeyboardInterrupt
        seen.extend(prompts)
        return real(model, processor, family, prompts, images, decoding, **kwargs)

    monkeypatch.setattr(generation, "generate", interrupt_second_batch)
    code, _, _ = cli(args)
    assert code == 130
    assert [r["id"] for r in _samples(out)] == [1, 2, 3]
    assert not (out / "results.json").exists()

    monkeypatch.setattr(generation, "generate", real)
    calls = _count_generate_calls(monkeypatch)
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    assert calls == [3, 2]  # questions 4-6 and 7-8 only
    assert sorted(r["id"] for r in _samples(out)) == list(range(1, 9))
    assert json.loads(stdout)["pope"]["base"]["random"]["n_questions"] == 8


def test_interrupted_all_splits_run_resumes_to_the_uninterrupted_samples(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cross-split answers written batch by batch: an interrupted run ends with the same rows, in the same order."""
    from seedcli.evals import generation

    args = ["evaluate", "--model", "tiny-llava", "--data", str(data_dir), "--pope", "all", "--json", *FAST[:2]]
    args += ["--batch-size", "5"]
    code, _, err = cli([*args, "--out", str(tmp_path / "whole")])
    assert code == 0, err
    real = generation.generate
    seen: list[int] = []

    def interrupt_second_batch(*call, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if seen:
            raise KeyboardInterrupt
        seen.append(len(call[3]))
        return real(*call, **kwargs)

    monkeypatch.setattr(generation, "generate", interrupt_second_batch)
    out = tmp_path / "resumed"
    code, _, _ = cli([*args, "--out", str(out)])
    assert code == 130 and seen == [5]
    partial = _samples(out)
    assert len(partial) > 5  # five distinct questions, recorded under the ids of every split that asked them
    monkeypatch.setattr(generation, "generate", real)
    code, _, err = cli([*args, "--out", str(out)])
    assert code == 0, err
    assert _samples(out) == _samples(tmp_path / "whole")


@pytest.mark.parametrize("scoring", ["generate", "logits"])
def test_no_share_prefix_computes_every_question_with_the_same_results(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scoring: str
) -> None:
    """The off switch runs each split in plain batches (every question computed); the samples are the same."""
    from seedcli.evals import generation, pope_logits

    args = ["evaluate", "--model", "tiny-llava", "--data", str(data_dir), "--pope", "all", "--json", *FAST[:2]]
    args += ["--batch-size", "5", "--pope-scoring", scoring]
    shares: list[bool] = []
    for module, name in ((generation, "generate"), (pope_logits, "score_logits")):
        real = getattr(module, name)

        def recording(*call, real=real, **kwargs):  # noqa: ANN002, ANN003, ANN202
            shares.extend([kwargs.get("share_prefix", False)] * len(call[3]))
            return real(*call, **kwargs)

        monkeypatch.setattr(module, name, recording)
    code, _, err = cli([*args, "--out", str(tmp_path / "shared")])
    assert code == 0, err
    assert shares == [True] * _distinct(8)
    shares.clear()
    code, _, err = cli([*args, "--out", str(tmp_path / "plain"), "--no-share-prefix"])
    assert code == 0, err
    assert shares == [False] * (3 * 8)
    shared, plain = _samples(tmp_path / "shared"), _samples(tmp_path / "plain")
    assert len(plain) == 3 * 8 and len({r["output"] for r in plain}) > 1
    if scoring == "generate":
        assert plain == shared
    else:  # the same decisions; the scores of a shared prefix agree up to float rounding
        scores = ("yes_score", "no_score")
        assert [{k: v for k, v in r.items() if k not in scores} for r in plain] == [
            {k: v for k, v in r.items() if k not in scores} for r in shared
        ]
        assert all(abs(a[k] - b[k]) < 1e-4 for a, b in zip(plain, shared) for k in scores)


def test_adapter_run_is_compared_with_its_base(cli, data_dir: Path, adapter_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--adapter",
            str(adapter_run),
            "--data",
            str(data_dir),
            "--pope",
            "all",
            "--chair",
            "--limit",
            "6",
            "--out",
            str(out),
            "--json",
            *FAST,
        ]
    )
    assert code == 0, stderr
    results = json.loads(stdout)
    assert [m["label"] for m in results["models"]] == ["base", "seedrun"]
    assert results["models"][0]["model"] == results["models"][1]["model"] == "tiny-llava"  # implied by the run
    assert results["models"][1]["adapters"][0]["sha256"]
    rows = _samples(out)
    assert len(rows) == 2 * (3 * 6 + 3)
    base_outputs = [r["output"] for r in rows if r["model"] == "base"]
    adapter_outputs = [r["output"] for r in rows if r["model"] == "seedrun"]
    assert base_outputs != adapter_outputs, "a non-identity adapter must change some outputs"
    comparison = results["comparisons"]["seedrun"]
    assert comparison["baseline"] == "base"
    for split in SPLITS:
        base, adapted = results["pope"]["base"][split], results["pope"]["seedrun"][split]
        assert comparison["pope"][split]["delta"]["official"]["f1"] == pytest.approx(
            adapted["official"]["f1"] - base["official"]["f1"]
        )
        test = comparison["pope"][split]["mcnemar"]["official"][0]
        ok_base = {r["id"]: r["correct"] for r in rows if r["model"] == "base" and r["split"] == split}
        ok_adapter = {r["id"]: r["correct"] for r in rows if r["model"] == "seedrun" and r["split"] == split}
        assert test["b"] == sum(ok_base[i] and not ok_adapter[i] for i in ok_base)
        assert test["c"] == sum(ok_adapter[i] and not ok_base[i] for i in ok_base)
        assert 0.0 <= test["p_value"] <= 1.0
    assert comparison["chair"]["delta"]["chair_s_pct"] == pytest.approx(
        results["chair"]["seedrun"]["chair_s_pct"] - results["chair"]["base"]["chair_s_pct"]
    )


def test_human_report_shows_both_models_and_the_out_path(
    cli, data_dir: Path, adapter_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--adapter",
            str(adapter_run),
            "--data",
            str(data_dir),
            "--pope",
            "random",
            "--limit",
            "2",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out)
    assert "POPE (greedy)" in stderr and "seedrun" in stderr and "McNemar p" in stderr


def test_vcd_protocol_with_vcd_decoding_averages_seeds(cli, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--model",
            "tiny-qwen2-vl",
            "--data",
            str(data_dir),
            "--pope",
            "random",
            "--limit",
            "4",
            "--protocol",
            "vcd",
            "--decode",
            "vcd",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--json",
            *FAST,
        ]
    )
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["protocol"]["label"] == "vcd+vcd-decoding"
    assert [d["seed"] for d in results["protocol"]["decoding"]["pope"]] == [0, 1]
    block = results["pope"]["base"]["random"]
    assert block["seeds"] == [0, 1] and len(block["per_seed"]) == 2
    f1s = [s["official"]["f1"] for s in block["per_seed"]]
    assert block["official"]["f1"] == pytest.approx(sum(f1s) / 2)
    assert block["spread"]["official"]["f1"] == pytest.approx(abs(f1s[0] - f1s[1]) / 2**0.5)
    assert all(r["input"].endswith(" Please answer this question with one word.") for r in _samples(out))


def test_logit_scoring_is_its_own_protocol(cli, data_dir: Path, tmp_path: Path) -> None:
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--model",
            "tiny-llava",
            "--data",
            str(data_dir),
            "--pope",
            "popular",
            "--limit",
            "4",
            "--pope-scoring",
            "logits",
            "--out",
            str(tmp_path / "r"),
            "--json",
        ]
    )
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["protocol"]["label"] == "logits (greedy prompt)"
    assert results["prompts"]["pope_logits_tokens"]["yes_tokens"] == ["yes"]
    rows = _samples(tmp_path / "r")
    assert {r["output"] for r in rows} <= {"yes", "no"}
    assert all((r["output"] == "yes") == (r["yes_score"] > r["no_score"]) for r in rows)


def test_a_failed_part_exits_non_zero_and_is_reported(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedcli.evals import generation

    real = generation.generate

    def fail_on_captions(model, processor, family, prompts, images, decoding, **kwargs):  # noqa: ANN001, ANN202
        if prompts[0].startswith("Please describe"):
            raise RuntimeError("out of memory (simulated)")
        return real(model, processor, family, prompts, images, decoding, **kwargs)

    monkeypatch.setattr(generation, "generate", fail_on_captions)
    out = tmp_path / "r"
    code, stdout, _ = cli(
        [
            "evaluate",
            "--model",
            "tiny-llava",
            "--data",
            str(data_dir),
            "--pope",
            "random",
            "--chair",
            "--limit",
            "2",
            "--out",
            str(out),
            "--json",
            *FAST,
        ]
    )
    assert code == 1
    results = json.loads(stdout)
    assert results["ok"] is False
    assert results["errors"][0]["part"] == "chair" and "simulated" in results["errors"][0]["error"]
    assert "random" in results["pope"]["base"] and results["chair"] == {}


def test_resume_with_other_settings_is_refused(cli, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    base = [
        "evaluate",
        "--model",
        "tiny-llava",
        "--data",
        str(data_dir),
        "--pope",
        "random",
        "--limit",
        "1",
        "--out",
        str(out),
        *FAST,
    ]
    assert cli(base)[0] == 0
    code, _, stderr = cli([*base, "--protocol", "vcd"])
    assert code == 2 and "different settings" in stderr and "protocol" in stderr


def test_score_only_refuses_mismatched_ids(cli, data_dir: Path, tmp_path: Path) -> None:
    questions = data_dir / pope_file("random")
    answers = tmp_path / "answers.jsonl"
    atomic.write_jsonl(answers, [{"question_id": q["question_id"] + 100, "text": "Yes"} for q in _pope_lines("random")])
    code, stdout, stderr = cli(
        ["evaluate", "--pope-file", str(questions), "--answers", str(answers), "--out", str(tmp_path / "r")]
    )
    assert code == 3 and stdout == ""
    assert "question_id" in stderr
    assert not (tmp_path / "r").exists()


def test_score_only_pope_and_captions_hand_checked(cli, data_dir: Path, tmp_path: Path) -> None:
    lines = _pope_lines("random")  # labels alternate yes, no
    answers = tmp_path / "answers.jsonl"
    # Answered in reverse order (joined by id, not order): all "Yes." except question 2 "No, there is not."
    atomic.write_jsonl(
        answers,
        [
            {"question_id": q["question_id"], "text": "No, there is not." if q["question_id"] == 2 else "Yes."}
            for q in reversed(lines)
        ],
    )
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--pope-file",
            str(data_dir / pope_file("random")),
            "--answers",
            str(answers),
            "--out",
            str(tmp_path / "p"),
            "--json",
        ]
    )
    assert code == 0, stderr
    block = json.loads(stdout)["pope"]["answers.jsonl"]["coco_pope_random.json"]
    # 4 yes labels all answered yes (tp 4); of 4 no labels one answered no (tn 1, fp 3).
    assert (block["official"]["tp"], block["official"]["fp"], block["official"]["tn"], block["official"]["fn"]) == (
        4,
        3,
        1,
        0,
    )
    assert block["official"]["accuracy"] == pytest.approx(5 / 8)
    assert block["official"]["yes_ratio"] == pytest.approx(7 / 8)
    assert block["official"]["f1"] == pytest.approx(2 * (4 / 7) * 1.0 / (4 / 7 + 1.0))

    captions = tmp_path / "captions.jsonl"
    atomic.write_jsonl(
        captions,
        [
            {"image_id": 100, "caption": "A dog next to two cups and a cat."},
            {"image_id": 101, "caption": "A man in a car."},
        ],
    )
    code, stdout, stderr = cli(
        [
            "evaluate",
            "--captions",
            str(captions),
            "--data",
            str(data_dir),
            "--out",
            str(tmp_path / "c"),
            "--json",
            "--bootstrap",
            "0",
        ]
    )
    assert code == 0, stderr
    chair = json.loads(stdout)["chair"]["captions.jsonl"]
    # Image 100 (dog, cup): dog, cup, cat -> cat hallucinated. Image 101 (car, person): man->person, car.
    assert chair["chair_i_pct"] == pytest.approx(100 * 1 / 5)
    assert chair["chair_s_pct"] == pytest.approx(50.0)
    assert chair["recall_pct"] == pytest.approx(100.0)
    atomic.write_jsonl(captions, [{"image_id": 999, "caption": "A dog."}])
    code, _, stderr = cli(
        ["evaluate", "--captions", str(captions), "--data", str(data_dir), "--out", str(tmp_path / "c2")]
    )
    assert code == 3 and "999" in stderr


def test_no_model_no_adapter_uses_the_newest_run(
    cli, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from seedcli.config.evaluate import EvaluateConfig
    from seedcli.evals import runner
    from seedcli.reporting import NullReporter

    received: list[EvaluateConfig] = []
    monkeypatch.setattr(
        runner, "evaluate", lambda cfg, reporter: received.append(cfg) or {"ok": True, "errors": [], "out": "x"}
    )
    code, _, _ = cli(["evaluate", "--pope", "adversarial"])
    assert code == 0
    cfg = received[0]
    assert (cfg.model, cfg.adapter, cfg.pope_splits, str(cfg.data), str(cfg.runs_root)) == (
        None,
        (),
        ("adversarial",),
        "seed-data",
        "runs",
    )

    runs = tmp_path / "runs"
    for name, model, age in (("old", "tiny-qwen2-vl", 100), ("new", "tiny-llava", 0)):
        (runs / name / "adapter").mkdir(parents=True)
        (runs / name / "adapter" / "adapter_config.json").write_text("{}")
        atomic.write_json(runs / name / "config.json", {"command": "distill", "config": {"model": model}})
        atomic.write_json(runs / name / "summary.json", {})
        stamp = (runs / name / "summary.json").stat().st_mtime - age
        os.utime(runs / name / "summary.json", (stamp, stamp))
    (runs / "unfinished").mkdir()
    atomic.write_json(runs / "unfinished" / "config.json", {"command": "distill", "config": {"model": "x"}})
    specs = runner.resolve_models(EvaluateConfig(pope="adversarial", runs_root=runs), NullReporter())
    assert [(s.label, s.model) for s in specs] == [("base", "tiny-llava"), ("new", "tiny-llava")]
    assert specs[1].adapters == ((runs / "new" / "adapter").resolve(),)
