"""`seed demo` on tiny models: columns, object marks against ground truth, HTML, defaults, merged models."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_file
from tests.smoke.test_merge import make_run

pytestmark = pytest.mark.smoke

DOG = "COCO_val2014_000000000001.png"
CUP = "COCO_val2014_000000000002.png"
FIXED_ANSWER = "There is a dog and a frisbee."


def make_data(
    root: Path, chair: dict[str, list[str]] | None = None, pope: list[tuple[str, str, str]] | None = None
) -> Path:
    """A data directory per seedcli.data.datadir: CHAIR rows {name: objects}, POPE rows (name, object, label)."""
    images = root / "images"
    names = sorted(set(chair or {}) | {name for name, _, _ in pope or []})
    for i, name in enumerate(names):
        image_file(images / name, (40 * i, 200, 90))
    roots = {}
    if chair is not None:
        (root / "chair").mkdir(parents=True)
        rows = [
            {"image_id": i + 1, "image": name, "objects": objects} for i, (name, objects) in enumerate(chair.items())
        ]
        (root / "chair/images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        roots["chair"] = "images"
    if pope is not None:
        (root / "pope").mkdir(parents=True)
        rows = [
            {"question_id": i + 1, "image": name, "text": f"Is there a {obj} in the image?", "label": label}
            for i, (name, obj, label) in enumerate(pope)
        ]
        (root / "pope/coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        roots["pope"] = "images"
    manifest = {"format": "seedcli-data", "version": 1, "source": {"kind": "test"}, "image_roots": roots, "files": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def fixed_answers(monkeypatch) -> list[dict[str, Any]]:
    """Replace generation: every model answers FIXED_ANSWER; records each call's model and prompts."""
    from seedcli.evals import generation

    calls: list[dict[str, Any]] = []

    def fake(model, processor, family, prompts, images, decoding, *, batch_size=8, reporter=None):  # noqa: ANN001, ANN202
        calls.append({"model": model, "prompts": list(prompts), "mode": decoding.mode, "n": len(images)})
        return [FIXED_ANSWER] * len(prompts)

    monkeypatch.setattr(generation, "generate", fake)
    return calls


def _json(cli, args: list[str]) -> list[dict[str, Any]]:
    code, out, err = cli([*args, "--json"])
    assert code == 0, err
    return json.loads(out)


def test_demo_renders_for_tiny_model(tmp_path: Path, cli) -> None:
    import torch
    from peft import PeftModel

    from seedcli.evals.generation import Decoding, generate
    from seedcli.models.loading import load

    data = make_data(tmp_path / "data", chair={DOG: ["dog"], CUP: ["cup", "spoon"]})
    run = make_run(tmp_path / "run", "tiny-llava", settings={"data": str(data)})
    results = _json(cli, ["demo", "--adapter", str(run), "--max-new-tokens", "6"])
    assert [r["name"] for r in results] == [DOG, CUP]
    assert [[a["label"] for a in r["answers"]] for r in results] == [["base", "SEED"]] * 2

    # Independently: the base column is the base model, the SEED column the base with the adapter.
    loaded = load("tiny-llava", device="cpu")
    images = [str(data / "images" / DOG), str(data / "images" / CUP)]
    prompts = ["Please describe this image in detail."] * 2
    greedy = Decoding(mode="greedy", max_new_tokens=6)
    base = generate(loaded.model, loaded.processor, loaded.family, prompts, images, greedy)
    with torch.no_grad():
        seed = generate(
            PeftModel.from_pretrained(loaded.model, str(run / "adapter")).eval(),
            loaded.processor,
            loaded.family,
            prompts,
            images,
            greedy,
        )
    assert [r["answers"][0]["text"] for r in results] == base
    assert [r["answers"][1]["text"] for r in results] == seed
    assert base != seed, "the adapter must change the answers for this test to mean anything"

    code, out, err = cli(["demo", "--adapter", str(run), "--max-new-tokens", "6"])
    assert code == 0, err
    assert out == ""  # the panels are rendering, on stderr like every command's tables
    assert DOG in err and CUP in err and "ground truth (chair): dog" in err
    assert "base tiny-llava" in err and f"SEED tiny-llava + {run.name}" in err
    assert "demo: 2/2 img" in err  # the progress task walked the images


def test_demo_marks_hallucinated_object(tmp_path: Path, cli, fixed_answers) -> None:
    data = make_data(tmp_path / "data", chair={DOG: ["dog"]})
    run = make_run(tmp_path / "run", "tiny-llava", settings={"data": str(data)})
    folder = tmp_path / "pictures"
    image_file(folder / DOG)
    image_file(folder / "unknown.png")
    (folder / "notes.txt").write_text("not an image")
    results = _json(cli, ["demo", "--adapter", str(run), "--image", str(folder), "--vcd"])
    assert [r["name"] for r in results] == [DOG, "unknown.png"]
    known, unknown = results
    assert known["truth"] == {"present": ["dog"], "absent": [], "complete": True, "source": "chair"}
    assert [a["label"] for a in known["answers"]] == ["base", "SEED", "base + VCD"]
    for answer in known["answers"]:
        assert [(o["category"], o["status"]) for o in answer["objects"]] == [
            ("dog", "present"),
            ("frisbee", "hallucinated"),
        ]
        assert [FIXED_ANSWER[slice(*o["span"])] for o in answer["objects"]] == ["dog", "frisbee"]
        assert answer["hallucinated"] == ["frisbee"]
    assert unknown["truth"] is None
    assert all(o["status"] == "unknown" for a in unknown["answers"] for o in a["objects"])
    assert sorted(c["mode"] for c in fixed_answers) == ["greedy", "greedy", "vcd"]

    code, _, err = cli(["demo", "--adapter", str(run), "--image", str(folder / DOG)])
    assert code == 0
    assert "frisbee✗" in err and "dog✗" not in err and "hallucinated: frisbee" in err


def test_pope_truth_is_partial() -> None:
    import tempfile

    from seedcli.data.datadir import open_data_dir
    from seedcli.demo import ground_truth_index, mark_answer, segments

    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(
            Path(tmp) / "data", pope=[(DOG, "dog", "yes"), (DOG, "frisbee", "no"), (DOG, "dining table", "no")]
        )
        truth = ground_truth_index(open_data_dir(data))[DOG]
    assert (truth.present, truth.absent, truth.complete, truth.source) == (
        {"dog"},
        {"frisbee", "dining table"},
        False,
        "pope",
    )
    text = "Two Dogs, a cat, frisbees and a hot dog by the dining table."
    objects = mark_answer(text, truth)
    assert [(text[slice(*o["span"])], o["category"], o["status"]) for o in objects] == [
        ("Dogs", "dog", "present"),
        ("cat", "cat", "unknown"),
        ("frisbees", "frisbee", "hallucinated"),
        ("hot dog", "hot dog", "unknown"),
        ("dining table", "dining table", "hallucinated"),
    ]
    pieces = segments(text, objects)
    assert "".join(p for p, _ in pieces) == text
    assert [p for p, s in pieces if s == "hallucinated"] == ["frisbees", "dining table"]


class _Page(HTMLParser):
    """Collects tags with their attributes, and the text inside each <mark> by class."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.marks: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._mark: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "mark":
            self._mark = dict(attrs).get("class")
            self.marks.append((self._mark or "", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "mark":
            self._mark = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._mark is not None:
            cls, seen = self.marks[-1]
            self.marks[-1] = (cls, seen + data)


def test_demo_writes_valid_html(tmp_path: Path, cli, fixed_answers) -> None:
    from PIL import Image

    data = make_data(tmp_path / "data", chair={DOG: ["dog"]})
    run = make_run(tmp_path / "run", "tiny-llava", settings={"data": str(data)})
    page = tmp_path / "out" / "demo.html"
    question = "Is <b>this</b> a dog & a frisbee?"
    code, out, err = cli(["demo", "--adapter", str(run), "--question", question, "--html", str(page)])
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(page)
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    tags = [t for t, _ in parser.tags]
    assert tags[0] == "html" and "b" not in tags and "script" not in tags and "link" not in tags
    assert question in "".join(parser.text)  # escaped, shown as text
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 1
    src = images[0]["src"] or ""
    assert src.startswith("data:image/png;base64,")
    embedded = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert embedded.format == "PNG" and embedded.size == Image.open(data / "images" / DOG).size
    for _, attrs in parser.tags:
        for name in ("src", "href"):
            assert not attrs.get(name) or (attrs[name] or "").startswith(("data:", "#")), attrs
    assert sorted(set(parser.marks)) == [("hallucinated", "frisbee"), ("present", "dog")]
    assert parser.marks.count(("hallucinated", "frisbee")) == 2  # base and SEED columns


def test_demo_defaults_find_the_newest_run(tmp_path: Path, cli, fixed_answers, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_data(Path("seed-quickstart/data"), chair={DOG: ["dog"], CUP: ["cup"]})
    make_run(Path("seed-quickstart/runs/quick"), "tiny-llava", settings={"data": "seed-quickstart/data"})
    results = _json(cli, ["demo"])
    assert [Path(r["image"]).resolve() for r in results] == [
        Path("seed-quickstart/data/images", n).resolve() for n in (DOG, CUP)
    ]
    assert results[1]["answers"][1]["model"] == "tiny-llava + quick"
    assert fixed_answers[0]["prompts"] == ["Please describe this image in detail."] * 2

    # A finished run under ./runs wins over the quickstart's; the newest summary.json wins there.
    make_data(Path("other-data"), chair={CUP: ["cup"]})
    make_run(Path("runs/old"), "tiny-llava", settings={"data": "seed-quickstart/data"})
    make_run(Path("runs/new"), "tiny-llava", settings={"data": "other-data"})
    old = time.time() - 100
    os.utime("runs/old/summary.json", (old, old))
    results = _json(cli, ["demo", "--num-images", "1"])
    assert [r["name"] for r in results] == [CUP]
    assert results[0]["answers"][1]["model"] == "tiny-llava + new"


def test_demo_on_merged_model_matches_the_run(tmp_path: Path, cli) -> None:
    data = make_data(tmp_path / "data", chair={DOG: ["dog"]})
    run = make_run(tmp_path / "run", "tiny-qwen2-vl", settings={"data": str(data)})
    merged = tmp_path / "merged"
    assert cli(["merge", str(run), "--out", str(merged)])[0] == 0
    from_run = _json(cli, ["demo", "--adapter", str(run), "--max-new-tokens", "6"])
    from_merged = _json(cli, ["demo", "--model", str(merged), "--max-new-tokens", "6"])
    assert [a["model"] for a in from_merged[0]["answers"]] == ["tiny-qwen2-vl", str(merged)]
    assert [a["text"] for a in from_merged[0]["answers"]] == [a["text"] for a in from_run[0]["answers"]]
    assert from_merged[0]["truth"]["present"] == ["dog"]  # data directory found through the merge marker
    code, _, err = cli(["demo", "--model", str(run / "adapter"), "--image", str(data / "images" / DOG)])
    assert code == 2 and "--baseline is required" in err
