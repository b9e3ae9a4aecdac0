"""The synthetic world: determinism, COCO validity, held-out split, co-occurrence, texts, vocabulary."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from seedcli.data import synthetic
from seedcli.data.synthetic import build_world, text_tokens, vocabulary
from seedcli.errors import ConfigError

SYNONYMS = Path(synthetic.__file__).with_name("coco_synonyms.txt")
# Real COCO 2014 category ids (instances_val2014.json), written out independently of the module.
COCO_IDS = {
    "bicycle": 2, "car": 3, "cat": 17, "dog": 18, "umbrella": 28, "frisbee": 34,
    "cup": 47, "fork": 48, "knife": 49, "spoon": 50, "apple": 53, "clock": 85,
    "person": 1, "bottle": 44, "bowl": 51, "banana": 52, "kite": 38, "chair": 62,
}  # fmt: skip
POPE_SUFFIXES = ("\nAnswer the question using a single word or phrase.", " Please answer this question with one word.")
CHAIR_PROMPT = "Please describe this image in detail."


def synonym_table() -> dict[str, str]:
    """Word -> category from the synonym file (category is the first entry of a line)."""
    table: dict[str, str] = {}
    for line in SYNONYMS.read_text(encoding="utf-8").splitlines():
        entries = [e.strip() for e in line.split(",") if e.strip()]
        if entries:
            for entry in entries:
                table.setdefault(entry.lower(), entries[0])
    return table


def mentioned(text: str) -> set[str]:
    """Categories named in `text` by single-word synonym match (our texts have no two-word names)."""
    table = synonym_table()
    return {table[w.lower()] for w in re.findall(r"[A-Za-z]+", text) if w.lower() in table}


def caption_categories(text: str) -> set[str]:
    """CHAIR's extractor when it exists (another module), else the word match above."""
    try:
        chair = importlib.import_module("seedcli.evals.chair")
    except ImportError:
        return mentioned(text)
    return {m[1] if isinstance(m, tuple) else m for m in chair.caption_objects(text)}


def coco_sets(path: Path) -> dict[int, set[str]]:
    """Image id -> category names, loaded with pycocotools."""
    coco = COCO(str(path))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    return {i: {names[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))} for i in coco.getImgIds()}


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `root`."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> synthetic.World:
    """The default world (default size, seed 0)."""
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def train_sets(world: synthetic.World) -> dict[int, set[str]]:
    """Training image id -> category names from the training instances file."""
    return coco_sets(world.instruct_json.parent / synthetic.INSTANCES_TRAIN)


def test_determinism_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = build_world(tmp_path / "a", n_images=40, seed=7, image_size=32)
    b = build_world(tmp_path / "b", n_images=40, seed=7, image_size=32)
    c = build_world(tmp_path / "c", n_images=40, seed=8, image_size=32)
    da, db, dc = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b"), tree_digest(tmp_path / "c")
    assert len(da) == 40 + 4
    assert da == db
    assert a.stats == b.stats and a.eval_image_ids == b.eval_image_ids
    assert c.eval_image_ids != a.eval_image_ids
    shared = set(da) & set(dc)
    assert synthetic.INSTRUCT_FILE in shared and da[synthetic.INSTRUCT_FILE] != dc[synthetic.INSTRUCT_FILE]
    assert not any(da[p] == dc[p] for p in shared if p.endswith(".png"))


def test_at_least_ten_distinct_real_coco_categories(world: synthetic.World) -> None:
    firsts = {line.split(",")[0].strip() for line in SYNONYMS.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert len(world.categories) >= 10 and len(set(world.categories)) == len(world.categories)
    assert set(world.categories) <= firsts
    data = json.loads(world.instances_json.read_text())
    assert {c["name"]: c["id"] for c in data["categories"]} == {n: COCO_IDS[n] for n in world.categories}
    kinds = synthetic.KINDS
    assert len({k.colour for k in kinds}) == len(kinds) and len({k.shape for k in kinds}) == len(kinds)
    for anchor, partner in world.pairs:
        assert anchor in world.categories and partner in world.categories and anchor != partner


def test_train_and_eval_ids_and_files_are_disjoint(world: synthetic.World) -> None:
    train_files = {p.name for p in world.train_images.iterdir()}
    eval_files = {p.name for p in world.eval_images.iterdir()}
    assert (
        len(eval_files)
        == len(world.eval_image_ids)
        == round(synthetic.DEFAULT_IMAGES * synthetic.DEFAULT_EVAL_FRACTION)
    )
    assert len(train_files) + len(eval_files) == synthetic.DEFAULT_IMAGES
    train_ids = {int(re.fullmatch(r"COCO_train2014_(\d{12})\.png", f).group(1)) for f in train_files}  # type: ignore[union-attr]
    eval_ids = {int(re.fullmatch(r"COCO_val2014_(\d{12})\.png", f).group(1)) for f in eval_files}  # type: ignore[union-attr]
    assert eval_ids == set(world.eval_image_ids)
    assert not train_ids & eval_ids
    records = json.loads(world.instruct_json.read_text())
    assert {r["image"] for r in records} == train_files
    instances = json.loads(world.instances_json.read_text())
    assert {i["id"] for i in instances["images"]} == eval_ids
    assert {i["file_name"] for i in instances["images"]} == eval_files


def dominant_kinds(path: Path) -> set[str]:
    """Kinds recognised from the pixels alone: per grid cell, the kind colour nearest to the non-background pixels."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    size = pixels.shape[0]
    cell = size // synthetic.GRID
    colours = np.array([k.colour for k in synthetic.KINDS])
    found = set()
    for row in range(synthetic.GRID):
        for col in range(synthetic.GRID):
            block = pixels[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell].reshape(-1, 3)
            fg = block[np.abs(block - background).max(axis=1) > 40]
            if len(fg) >= 4:
                nearest = np.argmin(((fg.mean(axis=0) - colours) ** 2).sum(axis=1))
                found.add(synthetic.KINDS[nearest].name)
    return found


def test_instances_are_valid_coco_and_match_the_pixels(world: synthetic.World) -> None:
    sets = coco_sets(world.instances_json)
    assert set(sets) == set(world.eval_image_ids)
    data = json.loads(world.instances_json.read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    for image_id, names in sets.items():
        assert 1 <= len(names) <= 4
        assert dominant_kinds(world.eval_images / files[image_id]) == names
    ann = data["annotations"]
    assert len({a["id"] for a in ann}) == len(ann)
    assert all(a["iscrowd"] == 0 and 0 < a["area"] <= a["bbox"][2] * a["bbox"][3] for a in ann)


def test_every_image_decodes_and_differs_from_background_exactly_where_objects_are(world: synthetic.World) -> None:
    data = json.loads(world.instances_json.read_text())
    boxes: dict[int, list[list[int]]] = {}
    for a in data["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a["bbox"])
    for image in data["images"]:
        with Image.open(world.eval_images / image["file_name"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (image["width"], image["height"])
            pixels = np.asarray(im).astype(int)
        background = np.median(pixels.reshape(-1, 3), axis=0)
        deviation = np.abs(pixels - background).max(axis=2)
        covered = np.zeros(deviation.shape, dtype=bool)
        for x, y, w, h in boxes[image["id"]]:
            covered[y : y + h, x : x + w] = True
            assert deviation[y : y + h, x : x + w].mean() > 25
        assert deviation[~covered].max() <= 2 * synthetic.Mix().noise + 1
    for path in world.train_images.iterdir():
        with Image.open(path) as im:
            im.load()


def test_captions_mention_exactly_the_present_objects(world: synthetic.World) -> None:
    sets = coco_sets(world.instances_json)
    captions = json.loads(world.captions_json.read_text())["annotations"]
    per_image: dict[int, list[str]] = {}
    for row in captions:
        per_image.setdefault(row["image_id"], []).append(row["caption"])
    assert set(per_image) == set(world.eval_image_ids)
    assert all(1 <= len(texts) <= 3 for texts in per_image.values())
    for image_id, texts in per_image.items():
        for text in texts:
            assert caption_categories(text) == sets[image_id], text
    words = {w.lower() for row in captions for w in re.findall(r"[a-z]+", row["caption"])}
    assert {"puppy", "bike", "kitten"} & words, "synonyms should appear in some captions"


@pytest.mark.parametrize("cooccurrence, tolerance", [(0.9, 0.025), (0.5, 0.04)])
def test_partner_rate_matches_requested_cooccurrence(tmp_path: Path, cooccurrence: float, tolerance: float) -> None:
    # 1080 training images x ~1.5 anchors: sd of the pooled rate is 0.0075 (0.9) / 0.0125 (0.5),
    # so the tolerance is about 3 sd and 0.9 vs 0.5 (or a rule ignoring the argument) cannot pass.
    world = build_world(tmp_path, n_images=1200, eval_fraction=0.1, seed=3, image_size=16, cooccurrence=cooccurrence)
    sets = list(coco_sets(tmp_path / synthetic.INSTANCES_TRAIN).values())
    with_anchor = together = 0
    for anchor, partner in world.pairs:
        anchored = [s for s in sets if anchor in s]
        rate = sum(partner in s for s in anchored) / len(anchored)
        assert abs(rate - cooccurrence) < 2.5 * tolerance, (anchor, partner, rate)
        with_anchor += len(anchored)
        together += sum(partner in s for s in anchored)
    assert abs(together / with_anchor - cooccurrence) < tolerance
    # A non-partner (here only via its own anchor or as a distractor) is clearly rarer beside an anchor.
    dogs = [s for s in sets if "dog" in s]
    assert sum("knife" in s for s in dogs) / len(dogs) < cooccurrence - 0.2
    rates = world.stats["pair_cooccurrence"]["train"]
    assert rates["fork->knife"]["rate"] == pytest.approx(
        sum("knife" in s for s in sets if "fork" in s) / sum("fork" in s for s in sets)
    )


@pytest.mark.parametrize("cooccurrence", [0.9, 0.5, 0.0])
def test_sampler_partner_rate_is_exact_in_expectation(cooccurrence: float) -> None:
    rng = random.Random(11)
    draws = [synthetic.sample_names(rng, cooccurrence, synthetic.Mix()) for _ in range(20000)]
    assert all(1 <= len(d) <= 4 and len(set(d)) == len(d) for d in draws)
    pairs = dict(synthetic.PAIRS)
    trials = [pairs[a] in d for d in draws for a in d if a in pairs]
    assert abs(sum(trials) / len(trials) - cooccurrence) < 0.01  # sd <= 0.003 over ~30000 trials


def test_instruct_records_are_valid_and_answers_are_true(
    world: synthetic.World, train_sets: dict[int, set[str]]
) -> None:
    records = json.loads(world.instruct_json.read_text())
    assert isinstance(records, list) and len({r["id"] for r in records}) == len(records)
    partners = dict(world.pairs)
    answers: dict[str, int] = {"Yes.": 0, "No.": 0, "partner_no": 0, "no_where_partner_missing": 0}
    for record in records:
        present = train_sets[int(record["id"])]
        turns = record["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        for question, answer in zip(turns[::2], turns[1::2]):
            q, a = question["value"].removeprefix("<image>\n"), answer["value"]
            asked = re.match(r"Is there an? (\w+) in the image\?", q)
            if asked:
                assert a == ("Yes." if asked.group(1) in present else "No.")
                answers[a] += 1
                missing = {partners[p] for p in present if p in partners} - present
                if a == "No." and missing:
                    answers["no_where_partner_missing"] += 1
                    answers["partner_no"] += asked.group(1) in missing
            elif q.startswith("How many"):
                n = len(present)
                assert a == (
                    "There is one object." if n == 1 else f"There are {['two', 'three', 'four'][n - 2]} objects."
                )
            else:
                assert caption_categories(a) == mentioned(a) == present, a
    assert answers["Yes."] > 100 and answers["No."] > 100 and answers["partner_no"] > 5
    # Negatives prefer the absent partner (Mix.partner_negative_rate 0.5 + uniform share ~0.06);
    # uniform negatives alone would give about 1/8.
    assert answers["partner_no"] / answers["no_where_partner_missing"] > 0.35


def test_description_lists_anchor_immediately_before_partner() -> None:
    text = synthetic.describe({"knife", "fork", "apple"}, __import__("random").Random(0))
    assert text.endswith("a fork, a knife and an apple.")


def test_default_world_has_enough_pope_images(world: synthetic.World) -> None:
    sets = coco_sets(world.instances_json)
    n3 = sum(len(s) >= 3 for s in sets.values())
    assert n3 == world.stats["eval_images_min3"]
    assert n3 >= synthetic.DEFAULT_POPE_IMAGES
    # The images where the prior is tested: an anchor without its partner or a partner without its anchor.
    lonely = sum(any((a in s) != (p in s) for a, p in world.pairs) for s in sets.values())
    assert lonely == world.stats["eval_images_missing_partner"] > 0


def test_vocabulary_covers_every_generated_text(world: synthetic.World) -> None:
    vocab = set(vocabulary())
    texts = [
        t["value"].removeprefix("<image>\n")
        for r in json.loads(world.instruct_json.read_text())
        for t in r["conversations"]
    ]
    texts += [c["caption"] for c in json.loads(world.captions_json.read_text())["annotations"]]
    for name in world.categories:
        article = "an" if name[0] in "aeiou" else "a"
        texts += [f"Is there {article} {name} in the image?" + s for s in ("", *POPE_SUFFIXES)]
    texts += [CHAIR_PROMPT, "yes", "no", "Yes", "No"]
    missing = {tok for text in texts for tok in text_tokens(text)} - vocab
    assert not missing
    assert "<" not in vocab and len(vocab) < 120


def test_text_tokens_split_words_and_punctuation() -> None:
    assert text_tokens("There is a dog, a cup and an apple.\nAnswer?") == [
        "There", "is", "a", "dog", ",", "a", "cup", "and", "an", "apple", ".", "Answer", "?",
    ]  # fmt: skip


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Any]:
        self.events.append(("task", total))
        recorder = self

        class _Task:
            def advance(self, n: int = 1, **fields: Any) -> None:
                recorder.events.append(("advance", n))

        yield _Task()

    def log(self, fields: Any) -> None:
        self.events.append(("log", fields))

    def info(self, message: str) -> None:
        self.events.append(("info", message))

    def warn(self, message: str) -> None:
        self.events.append(("warn", message))


def test_reports_progress(tmp_path: Path) -> None:
    recorder = _Recorder()
    build_world(tmp_path, n_images=12, image_size=16, reporter=recorder)
    assert ("task", 12) in recorder.events
    assert sum(n for kind, n in recorder.events if kind == "advance") == 12


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"cooccurrence": 1.5}, "--cooccurrence"),
        ({"n_images": 1}, "--synthetic-images"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"image_size": 8}, "image size"),
    ],
)
def test_bad_arguments_name_the_flag(tmp_path: Path, kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(flag)):
        build_world(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- hallucination sources


def _conversation_tally(mix: synthetic.Mix, n: int = 20000, seed: int = 1) -> dict[str, int]:
    """Answer counts of `n` conversations over sampled scenes (no rendering: the knobs act on texts only)."""
    rng = random.Random(seed)
    tally: dict[str, int] = {}
    for i in range(n):
        names = synthetic.sample_names(rng, 0.9, mix)
        scene = synthetic.Scene(i, "x.png", tuple(synthetic.Placement(m, 0, (0, 0, 1, 1), 1) for m in names))
        for key, value in synthetic.conversation(scene, rng, mix)[1].items():
            tally[key] = tally.get(key, 0) + value
    return tally


def _sd(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("yes_rate", [0.5, 0.75, 0.85])
def test_yes_rate_sets_the_share_of_yes_answers(yes_rate: float) -> None:
    tally = _conversation_tally(synthetic.Mix(yes_rate=yes_rate))
    asked = tally["yes"] + tally["no"]
    share = tally["yes"] / asked
    # A question drawn positive on an image whose objects were all asked already becomes a "no",
    # so the share is at most the rate and (documented) falls short of it by under 3 points.
    assert yes_rate - 0.03 < share < yes_rate + 3 * _sd(yes_rate, asked)
    assert tally.get("yes_hallucinated", 0) == 0  # no label noise asked for, none made


@pytest.mark.parametrize("label_noise", [0.1, 0.2, 0.4])
def test_label_noise_names_absent_partners_at_the_requested_rate(label_noise: float) -> None:
    tally = _conversation_tally(synthetic.Mix(label_noise=label_noise))
    for hallucinated, eligible in (
        ("description_hallucinated", "description_missing_partners"),
        ("yes_hallucinated", "yes_missing_partner"),
    ):
        n = tally[eligible]
        assert n > 1000
        assert abs(tally[hallucinated] / n - label_noise) < 3.5 * _sd(label_noise, n), hallucinated
    # Label noise turns true "yes" answers into false ones; it does not add "yes" answers.
    assert abs(tally["yes"] / (tally["yes"] + tally["no"]) - 0.5) < 0.01


def test_partner_negatives_set_how_often_a_no_asks_about_the_absent_partner() -> None:
    # Besides the deliberate draw, the uniform negative can land on the absent partner too (rate r0).
    r0 = _conversation_tally(synthetic.Mix(partner_negative_rate=0.0))
    base = r0["no_partner"] / r0["no_missing_partner"]
    assert 0.05 < base < 0.2
    for rate in (0.1, 0.5, 0.9):
        tally = _conversation_tally(synthetic.Mix(partner_negative_rate=rate))
        expected = rate + (1 - rate) * base
        n = tally["no_missing_partner"]
        tolerance = 3.5 * _sd(expected, n) + 3 * _sd(base, r0["no_missing_partner"])
        assert abs(tally["no_partner"] / n - expected) < tolerance


def _answers_on_disk(world: synthetic.World, root: Path) -> dict[str, int]:
    """Counts read back from the written conversations against the training instances (the ground truth)."""
    truth = coco_sets(root / synthetic.INSTANCES_TRAIN)
    partners = dict(world.pairs)
    counts = {"yes": 0, "no": 0, "false_yes": 0, "descriptions": 0, "false_mentions": 0, "false_non_partner": 0}
    for record in json.loads(world.instruct_json.read_text()):
        present = truth[int(record["id"])]
        missing = {partners[p] for p in present if p in partners} - present
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            q, a = question["value"].removeprefix("<image>\n"), answer["value"]
            asked = re.match(r"Is there an? (\w+) in the image\?", q)
            if asked:
                counts["yes" if a == "Yes." else "no"] += 1
                if a == "Yes." and asked.group(1) not in present:
                    counts["false_yes"] += 1
                    counts["false_non_partner"] += asked.group(1) not in missing
                if a == "No.":
                    assert asked.group(1) not in present  # noise never denies a visible object
            elif not q.startswith("How many"):
                counts["descriptions"] += 1
                extra = mentioned(a) - present
                counts["false_mentions"] += len(extra)
                counts["false_non_partner"] += len(extra - missing)
                assert present <= mentioned(a)  # noise adds objects, never drops one
    return counts


def test_knobs_change_the_written_world_and_only_its_training_texts(tmp_path: Path) -> None:
    kwargs = {"n_images": 400, "seed": 5, "image_size": 16}
    clean = build_world(tmp_path / "clean", **kwargs)
    noisy_mix = synthetic.Mix(yes_rate=0.85, label_noise=0.4, partner_negative_rate=0.1)
    noisy = build_world(tmp_path / "noisy", mix=noisy_mix, **kwargs)
    again = build_world(tmp_path / "again", mix=noisy_mix, **kwargs)
    assert tree_digest(tmp_path / "noisy") == tree_digest(tmp_path / "again")  # deterministic per seed
    assert noisy.stats == again.stats
    a, b = _answers_on_disk(clean, tmp_path / "clean"), _answers_on_disk(noisy, tmp_path / "noisy")
    assert a["false_yes"] == a["false_mentions"] == 0
    assert b["false_yes"] > 0 and b["false_mentions"] > 0 and b["false_non_partner"] == 0
    assert b["yes"] / (b["yes"] + b["no"]) > a["yes"] / (a["yes"] + a["no"]) + 0.25
    assert b["false_yes"] == noisy.stats["answers"]["yes_hallucinated"]
    assert b["false_mentions"] == noisy.stats["answers"]["description_hallucinated"]
    assert noisy.stats["knobs"] == {"yes_rate": 0.85, "label_noise": 0.4, "partner_negatives": 0.1, "cooccurrence": 0.9}
    # The pictures and the evaluation ground truth do not depend on the knobs.
    da, db = tree_digest(tmp_path / "clean"), tree_digest(tmp_path / "noisy")
    assert {p: h for p, h in da.items() if p.endswith(".png")} == {p: h for p, h in db.items() if p.endswith(".png")}
    assert da[synthetic.INSTANCES_EVAL] == db[synthetic.INSTANCES_EVAL]
    assert clean.eval_image_ids == noisy.eval_image_ids
    sets = coco_sets(noisy.instances_json)
    for row in json.loads(noisy.captions_json.read_text())["annotations"]:
        assert caption_categories(row["caption"]) == sets[row["image_id"]]  # reference captions stay exact


def test_default_mix_is_the_clean_preset() -> None:
    from seedcli.data.world_defaults import WORLDS

    mix = synthetic.Mix()
    clean = WORLDS["clean"]
    assert (mix.yes_rate, mix.label_noise, mix.partner_negative_rate) == (
        clean["yes_rate"], clean["label_noise"], clean["partner_negatives"],
    )  # fmt: skip
    assert all(0.0 <= v <= 1.0 for preset in WORLDS.values() for v in preset.values())


@pytest.mark.parametrize("knob, flag", [("yes_rate", "--yes-rate"), ("label_noise", "--label-noise"),
                                        ("partner_negative_rate", "--partner-negatives")])
def test_bad_knob_names_the_flag(tmp_path: Path, knob: str, flag: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(flag)):
        build_world(tmp_path, n_images=12, image_size=16, mix=synthetic.Mix(**{knob: 1.5}))
    assert not any(tmp_path.iterdir())
