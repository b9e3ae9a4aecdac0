"""`seed prepare` end to end on small hand-written COCO and LLaVA-Instruct fixtures."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from seedcli.cli.app import main
from seedcli.data.coco import image_id_from_name
from seedcli.data.datadir import MANIFEST, POPE_SPLITS, open_data_dir, pope_file

pytestmark = pytest.mark.smoke

NAMES = ["person", "dog", "cat", "car", "bus", "kite", "cup", "chair"]
TRAIN_IDS = list(range(1, 11))
VAL_IDS = list(range(101, 113))


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 40, 40)).save(path)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """data/{annotations,val2014,train2017,llava_instruct_150k.json}; train2017 also holds the val2014 images."""
    root = tmp_path / "data"
    images, annotations, captions = [], [], []
    for k, image_id in enumerate(VAL_IDS):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name})
        _image(root / "val2014" / name, k)
        chosen = [NAMES[(k + j * (1 + k % 3)) % len(NAMES)] for j in range(3 + k % 2)]
        for j, category in enumerate(dict.fromkeys(chosen)):
            annotations.append(
                {"id": 10 * image_id + j, "image_id": image_id, "category_id": NAMES.index(category) + 1}
            )
        captions.append({"id": image_id, "image_id": image_id, "caption": f"A {chosen[0]} next to a {chosen[1]}."})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"annotations": captions}))
    records = []
    for image_id in TRAIN_IDS + VAL_IDS:
        _image(root / "train2017" / f"{image_id:012d}.jpg", image_id % 200)
        turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": f"Image {image_id}."}]
        records.append({"id": f"{image_id:012d}", "image": f"{image_id:012d}.jpg", "conversations": turns})
    records.append({"id": "missing", "image": "000000999999.jpg", "conversations": records[0]["conversations"]})
    (root / "llava_instruct_150k.json").write_text(json.dumps(records, indent=1))
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "--instruct", str(data / "llava_instruct_150k.json"),
        "--images", str(data / "train2017"),
        "--coco-annotations", str(data / "annotations"),
        "--coco-images", str(data / "val2014"),
        "--out", str(out),
        "--pope-images", "6",
        "--chair-images", "5",
        *extra,
    ]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_prepare_writes_a_readable_data_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seed-data"
    code, stdout, stderr = _run(_args(data, out), capsys)
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out.resolve())

    opened = open_data_dir(out)
    pope_images: set[int] = set()
    for split in POPE_SPLITS:
        rows = [json.loads(line) for line in opened.pope_path(split).read_text().splitlines()]
        assert len(rows) == 36 and sum(r["label"] == "yes" for r in rows) == 18
        pope_images |= {image_id_from_name(r["image"]) for r in rows}
        assert opened.resolve_image("pope", rows[0]["image"]).is_file()
    chair = opened.chair_images()
    assert len(chair) == 5
    eval_ids = pope_images | {row["image_id"] for row in chair}

    train = list(opened.iter_train())
    kept_ids = {image_id_from_name(r.image) for r in train}
    assert kept_ids == set(TRAIN_IDS + VAL_IDS) - eval_ids
    assert all(opened.resolve_image("train", r.image).is_file() for r in train)
    manifest = opened.manifest
    assert manifest["dropped"]["eval_overlap"] == len(eval_ids)
    assert manifest["dropped"]["image_missing"] == 1
    assert manifest["counts"]["read"] == len(TRAIN_IDS) + len(VAL_IDS) + 1
    assert (
        manifest["counts"]["read"]
        == sum(manifest["dropped"].values()) + manifest["counts"]["train"] + manifest["counts"]["not_sampled"]
    )
    assert manifest["seed"] == 0 and len(manifest["source"]["instruct"]["sha256"]) == 64
    assert pope_file("random") in manifest["files"] and "chair/images.jsonl" in manifest["files"]

    # Without --overwrite a second run is refused (exit 2) and the first output is left as it was.
    before = (out / MANIFEST).read_bytes()
    code, _, stderr = _run(_args(data, out, "--seed", "1"), capsys)
    assert code == 2 and "--overwrite" in stderr
    assert (out / MANIFEST).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seed-data")]

    code, stdout, _ = _run(_args(data, out, "--seed", "1", "--overwrite", "--allow-eval-overlap", "--json"), capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["dropped"]["eval_overlap"] == 0 and summary["counts"]["train"] == len(TRAIN_IDS) + len(VAL_IDS)
    assert open_data_dir(out).manifest["seed"] == 1


def test_missing_instruct_names_the_flag(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.json"
    args = _args(data, tmp_path / "out")
    args[args.index("--instruct") + 1] = str(missing)
    code, _, stderr = _run(args, capsys)
    assert code == 3
    assert "--instruct" in stderr and str(missing) in stderr
    assert not (tmp_path / "out").exists()


def test_missing_default_annotations_explain_the_opt_out(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(data, tmp_path / "out")
    args[args.index("--coco-annotations") + 1] = str(tmp_path / "no-annotations")
    code, _, stderr = _run(args, capsys)
    assert code == 3 and "--coco-annotations" in stderr and "--no-pope --no-chair" in stderr
    code, stdout, stderr = _run([*args, "--no-pope", "--no-chair"], capsys)
    assert code == 0, stderr
    assert open_data_dir(tmp_path / "out").manifest["counts"]["train"] == len(TRAIN_IDS) + len(VAL_IDS)


def test_verify_images_in_worker_processes(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data / "train2017" / "000000000003.jpg").write_bytes(b"truncated")
    out = tmp_path / "verified"
    code, stdout, stderr = _run(
        _args(data, out, "--verify-images", "--workers", "2", "--max-samples", "100", "--json"), capsys
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["dropped"]["image_unreadable"] == 1
    assert "000000000003.jpg" not in {r.image for r in open_data_dir(out).iter_train()}


def test_pope_from_imports_official_files(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first"
    assert _run(_args(data, first, "--no-train", "--no-chair"), capsys)[0] == 0
    official = tmp_path / "official"
    shutil.copytree(first / "pope", official)
    lines = (official / "coco_pope_popular.json").read_text().splitlines()
    lines[0] = lines[0].replace('"image"', '"imange"')
    (official / "coco_pope_popular.json").write_text("\n".join(lines) + "\n")
    second = tmp_path / "second"
    code, stdout, stderr = _run(_args(data, second, "--pope-from", str(official), "--no-chair", "--json"), capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["pope_import"]["popular"]["typos_fixed"] == 1
    for split in POPE_SPLITS:
        assert (second / pope_file(split)).read_text() == (first / pope_file(split)).read_text()
    pope_ids = {
        image_id_from_name(json.loads(line)["image"]) for line in (first / pope_file("random")).read_text().splitlines()
    }
    assert summary["dropped"]["eval_overlap"] == len(pope_ids)


@pytest.mark.skipif(
    importlib.util.find_spec("seedcli.data.synthetic") is None,
    reason="seedcli.data.synthetic (the synthetic world) is not there yet",
)
def test_synthetic_world_is_a_movable_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    code, stdout, stderr = _run(
        ["prepare", "--synthetic", "--synthetic-images", "80", "--out", str(out), "--json"], capsys
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["source"] == "synthetic"
    assert any(note.startswith("POPE uses") for note in summary["notes"])  # 500 > eligible images
    moved = tmp_path / "moved"
    out.rename(moved)
    opened = open_data_dir(moved)
    assert all(not Path(root).is_absolute() for root in opened.manifest["image_roots"].values())
    train = list(opened.iter_train())
    assert train and all(opened.resolve_image("train", r.image).is_file() for r in train)
    chair = opened.chair_images()
    assert chair and all(opened.resolve_image("chair", row["image"]).is_file() for row in chair)
    pope_rows = [json.loads(line) for line in opened.pope_path("adversarial").read_text().splitlines()]
    assert len(pope_rows) == 6 * summary["counts"]["pope_images"]
    eval_ids = {image_id_from_name(r["image"]) for r in pope_rows} | {row["image_id"] for row in chair}
    assert not eval_ids & {image_id_from_name(r.image) for r in train}


def test_synthetic_world_knobs_are_recorded_and_flags_override_the_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from seedcli.data.world_defaults import WORLDS

    base = ["prepare", "--synthetic", "--synthetic-images", "120", "--json"]
    runs = {
        "clean": [],
        "llava": ["--world", "llava-like"],
        "override": ["--world", "llava-like", "--yes-rate", "0.6", "--label-noise", "0", "--partner-negatives", "0.3"],
    }
    manifests = {}
    for name, flags in runs.items():
        code, _, stderr = _run([*base, "--out", str(tmp_path / name), *flags], capsys)
        assert code == 0, stderr
        manifests[name] = open_data_dir(tmp_path / name).manifest
    cooc = {"cooccurrence": 0.9}
    assert manifests["clean"]["source"]["world_preset"] == "clean"
    assert manifests["clean"]["source"]["knobs"] == WORLDS["clean"] | cooc
    assert manifests["llava"]["source"]["knobs"] == WORLDS["llava-like"] | cooc
    override = {"yes_rate": 0.6, "label_noise": 0.0, "partner_negatives": 0.3}
    assert manifests["override"]["source"]["knobs"] == override | cooc
    assert manifests["override"]["config"]["world"] == "llava-like"
    assert manifests["override"]["config"]["yes_rate"] == 0.6
    realised = manifests["llava"]["source"]["realised"]
    assert realised["yes_share"] > manifests["clean"]["source"]["realised"]["yes_share"] + 0.15
    # Evaluation sets depend on the images only, which the knobs do not touch.
    for split in POPE_SPLITS:
        clean, llava = (tmp_path / name / pope_file(split) for name in ("clean", "llava"))
        assert clean.read_bytes() == llava.read_bytes()
    code, _, stderr = _run([*base, "--out", str(tmp_path / "bad"), "--label-noise", "1.5"], capsys)
    assert code == 2 and "--label-noise" in stderr and not (tmp_path / "bad").exists()
    code, _, stderr = _run(["prepare", "--no-train", "--out", str(tmp_path / "real"), "--yes-rate", "0.7"], capsys)
    assert code == 2 and "--yes-rate" in stderr and "--synthetic" in stderr and not (tmp_path / "real").exists()
