"""`seed quickstart --fast` end to end, the world model's cache, and the examples' selection rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedcli.quickstart import examples, partner_hallucinations

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """One `seed quickstart --fast --json` run shared by the tests below."""
    import contextlib
    import io

    from seedcli.cli.app import main

    out = tmp_path_factory.mktemp("qs") / "quickstart"
    # capsys is function-scoped, so the module-scoped run captures its streams by hand.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(["quickstart", "--fast", "--out", str(out), "--json"])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code == 0, stderr.getvalue()[-3000:]
    return out, json.loads(stdout.getvalue()), stderr.getvalue()


def _pope_f1_by_hand(rows: list[dict], model: str, split: str) -> float:
    """F1 with yes positive from the first word of each answer (the tiny model answers 'yes.'/'no.')."""
    tp = fp = fn = 0
    for row in rows:
        if row["model"] != model or row["benchmark"] != "pope" or row["split"] != split:
            continue
        said_yes = not any(w in ("no", "not", "No") for w in row["output"].split(".")[0].replace(",", "").split())
        tp += said_yes and row["label"] == "yes"
        fp += said_yes and row["label"] == "no"
        fn += (not said_yes) and row["label"] == "yes"
    return 200.0 * tp / (2 * tp + fp + fn) if tp else 0.0


def test_fast_quickstart_writes_every_part_and_a_consistent_table(fast_run) -> None:
    out, results, log = fast_run
    for name in (
        "data/manifest.json",
        "runs/sft/summary.json",
        "runs/seed/summary.json",
        "eval/results.json",
        "eval/samples.jsonl",
        "quickstart.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "quickstart.json").read_text()) == results
    assert results["resolved"]["fast"] and results["resolved"]["steps"] == 4 and results["config"]["steps"] == 120
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in log  # progress is visible

    # SFT and SEED differ only in the method and the run directory.
    configs = {m: json.loads((out / "runs" / m / "config.json").read_text())["config"] for m in ("sft", "seed")}
    differing = {k for k in configs["sft"] if configs["sft"][k] != configs["seed"][k]}
    assert differing == {"method", "out"}
    assert configs["seed"]["model"] == results["base_model"]["path"]
    assert results["runs"]["seed"]["mean_kl"] > 0 and results["runs"]["sft"]["mean_kl"] is None

    # The table agrees with an independent count over the raw answers.
    rows = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    for model in ("base", "sft", "seed"):
        for split in ("random", "adversarial"):
            assert results["table"][f"pope_{split}_f1"][model] == pytest.approx(
                _pope_f1_by_hand(rows, model, split), abs=1e-9
            )
    assert {r["model"] for r in rows} == {"base", "sft", "seed"}
    assert sum(r["benchmark"] == "chair" for r in rows) == 3 * 24


def test_default_world_is_llava_like_and_vcd_is_the_fourth_column(fast_run) -> None:
    from seedcli.data.world_defaults import WORLDS

    out, results, log = fast_run
    world = results["world"]
    assert world["preset"] == "llava-like" and world["knobs"] == WORLDS["llava-like"] | {"cooccurrence": 0.9}
    assert world["realised"]["yes_share"] > 0.5  # the yes-bias is in the written data
    assert results["resolved"]["world"] == "llava-like" and results["resolved"]["vcd"]
    assert all(set(row) == {"base", "sft", "seed", "vcd"} for row in results["table"].values())
    vcd = json.loads((out / "eval-vcd" / "results.json").read_text())
    assert vcd["protocol"]["decode"] == "vcd" and [m["label"] for m in vcd["models"]] == ["base"]
    assert results["evaluation"]["vcd"]["protocol"] == vcd["protocol"]["label"] == "greedy+vcd-decoding"
    f1 = vcd["pope"]["base"]["adversarial"]["official"]["f1"]
    assert results["table"]["pope_adversarial_f1"]["vcd"] == pytest.approx(100 * f1)
    assert "evaluate_vcd" in results["seconds"]


def test_held_out_images_never_enter_training(fast_run) -> None:
    from seedcli.data.datadir import open_data_dir

    out, _, _ = fast_run
    data = open_data_dir(out / "data")
    train = {data.resolve_image("train", row["image"]).resolve() for row in data.train()}
    held_out = {data.resolve_image("chair", row["image"]).resolve() for row in data.chair_images()}
    for split in ("random", "popular", "adversarial"):
        held_out |= {
            data.resolve_image("pope", json.loads(line)["image"]).resolve()
            for line in data.pope_path(split).read_text().splitlines()
        }
    assert train and held_out and not (train & held_out)
    assert {p.parent.name for p in train} == {"train2014"} and {p.parent.name for p in held_out} == {"val2014"}


def test_world_model_is_cached_and_loads_like_any_checkpoint(fast_run) -> None:
    from seedcli.config.quickstart import QuickstartConfig
    from seedcli.models.loading import load
    from seedcli.world_model import WorldRecipe, ensure_world_model

    out, results, _ = fast_run
    r = QuickstartConfig(fast=True).resolved()
    messages: list[str] = []

    class Recorder:
        def task(self, *args, **kwargs):  # noqa: ANN202 - training would open a task; the cache must not
            raise AssertionError("the cached world model was trained again")

        def info(self, message: str) -> None:
            messages.append(message)

        def log(self, fields) -> None:  # noqa: ANN001
            pass

        def warn(self, message: str) -> None:
            pass

    recipe = WorldRecipe(epochs=r.base_epochs, lr=r.base_lr, batch_size=r.base_batch_size, seed=r.seed)
    path, stats = ensure_world_model(out / "data", recipe, Recorder())
    assert str(path) == results["base_model"]["path"] and "cached" in messages[0]
    assert stats["epoch_losses"] == results["base_model"]["training"]["epoch_losses"]
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]  # it learned something
    loaded = load(str(path), device="cpu")
    assert loaded.family.name == "llava"


def test_quickstart_refuses_a_foreign_directory(tmp_path: Path, cli) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = cli(["quickstart", "--fast", "--out", str(tmp_path)])
    assert code == 2 and "--out" in err and (tmp_path / "precious.txt").read_text() == "keep me"


def test_partner_hallucinations_and_example_selection() -> None:
    assert partner_hallucinations({"fork", "cat"}, {"fork", "knife", "cat"}) == ["knife"]
    assert partner_hallucinations({"knife"}, {"fork", "knife"}) == []  # fork is an anchor, not a partner of knife
    assert partner_hallucinations({"fork"}, {"fork", "frisbee"}) == []  # frisbee is not fork's partner

    def chair(model: str, mentions: list[str], image: str = "a.png") -> dict:
        return {
            "model": model,
            "benchmark": "chair",
            "split": None,
            "id": 1,
            "image": image,
            "input": "Describe.",
            "label": ["fork"],
            "output": " ".join(mentions),
            "parsed": {"mentions": [(m, m) for m in mentions]},
        }

    def pope(model: str, answer: str) -> dict:
        return {
            "model": model,
            "benchmark": "pope",
            "split": "adversarial",
            "id": 7,
            "image": "b.png",
            "input": "Is there a knife in the image?\nAnswer.",
            "label": "no",
            "output": answer,
            "parsed": {"official": answer},
        }

    rows = [chair("base", ["fork", "knife"]), chair("sft", ["fork", "knife"]), chair("seed", ["fork"])]
    rows += [pope("base", "yes"), pope("sft", "yes"), pope("seed", "no")]
    found = examples(rows, limit=5)
    assert [(e["benchmark"], e["partner"]) for e in found] == [("chair", "knife"), ("pope", "knife")]
    assert found[0]["answers"] == {"base": "fork knife", "sft": "fork knife", "seed": "fork"}
    assert examples(rows, limit=1) == found[:1]
    # SEED hallucinating too, or the base not hallucinating, is not an example.
    assert (
        examples([chair("base", ["fork", "knife"]), chair("sft", ["fork"]), chair("seed", ["fork", "knife"])], limit=5)
        == []
    )
    assert examples([pope("base", "no"), pope("sft", "no"), pope("seed", "no")], limit=5) == []
