"""Config of `seed prepare`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seedcli.config.base import check, option, require
from seedcli.data.chair_gt import CHAIR_IMAGES
from seedcli.data.pope import OBJECTS_PER_IMAGE
from seedcli.data.world_defaults import DEFAULT_COOCCURRENCE, DEFAULT_IMAGES, WORLD_NAMES, world_knobs

INPUTS = "Inputs"
OUTPUT = "Output"
EVAL = "Evaluation sets"
SYNTHETIC = "Synthetic world"
FETCH = "Fetching"
FILTER = "Filtering"
DEFAULT_FILTER_SHIFTS = 3
DEFAULT_UNLABELLED = 360  # captions of the detection world's unlabelled split (seedcli.detect.world.WorldSpec)

DEFAULT_TRAIN_IMAGE_DIRS = (Path("data/train2014"), Path("data/train2017"))


@dataclass(frozen=True)
class PrepareConfig:
    """What `seed prepare` reads, checks and writes."""

    instruct: Path = option(
        Path("data/llava_instruct_150k.json"), "LLaVA-Instruct JSON array (llava_instruct_150k.json).", panel=INPUTS
    )
    images: Path | None = option(
        None,
        "COCO training image directory (train2014 or train2017 file names). Default: data/train2014 if it exists, "
        "else data/train2017.",
        panel=INPUTS,
    )
    coco_annotations: Path = option(
        Path("data/annotations"),
        "COCO annotation directory holding instances_val2014.json and captions_val2014.json.",
        panel=INPUTS,
    )
    coco_images: Path = option(
        Path("data/val2014"), "COCO val2014 image directory (the POPE and CHAIR images).", panel=INPUTS
    )
    out: Path = option(Path("seed-data"), "Data directory to write.", panel=OUTPUT)
    overwrite: bool = option(False, "Replace an existing --out directory.", panel=OUTPUT)
    seed: int = option(
        0, "Seed of every random choice (sampling, POPE negatives, CHAIR images, synthetic world).", panel=OUTPUT
    )
    train: bool = option(
        True, "Convert the LLaVA-Instruct training set (--no-train writes only the evaluation sets).", panel=INPUTS
    )
    max_samples: int | None = option(
        None, "Keep at most this many training conversations, sampled by --seed (default: all).", min=1, panel=INPUTS
    )
    verify_images: bool = option(
        False,
        "Decode every selected training image and drop unreadable ones (default: existence check only).",
        panel=INPUTS,
    )
    workers: int = option(
        0, "Processes decoding images for --verify-images (0 = one per CPU core).", min=0, panel=INPUTS
    )
    allow_eval_overlap: bool = option(
        False, "Keep training records whose COCO image is a POPE or CHAIR evaluation image.", panel=INPUTS
    )
    pope: bool = option(True, "Build (or import, with --pope-from) the POPE sets; --no-pope skips them.", panel=EVAL)
    pope_images: int = option(
        500,
        "Images sampled for POPE (2 questions per probed object and split: 3,000 per split at the defaults).",
        min=1,
        panel=EVAL,
    )
    pope_objects: int = option(
        OBJECTS_PER_IMAGE,
        "Ground-truth objects probed per POPE image (also the minimum number of categories).",
        min=1,
        panel=EVAL,
    )
    pope_from: Path | None = option(
        None,
        "Import official POPE files (coco_pope_{random,popular,adversarial}.json) from this directory instead of "
        "building them, or the hub's POPE parquet files (lmms-lab/POPE layout, images embedded); "
        "'official' fetches the released files into --data-root/pope.",
        panel=EVAL,
    )
    chair: bool = option(True, "Build the CHAIR image list and ground truth; --no-chair skips it.", panel=EVAL)
    chair_images: int = option(CHAIR_IMAGES, "Images sampled for CHAIR.", min=1, panel=EVAL)
    synthetic: bool = option(
        False, "Build the offline synthetic world instead of reading COCO / LLaVA-Instruct.", panel=SYNTHETIC
    )
    synthetic_images: int = option(DEFAULT_IMAGES, "Images rendered for the synthetic world.", min=1, panel=SYNTHETIC)
    cooccurrence: float = option(
        DEFAULT_COOCCURRENCE,
        "Synthetic world: probability that an object's usual partner appears with it.",
        min=0.0,
        max=1.0,
        panel=SYNTHETIC,
    )
    data_root: Path = option(
        Path("data"), "Where missing inputs are fetched to, and where the default input paths point.", panel=FETCH
    )
    fetch_only: bool = option(False, "Fetch and verify the missing inputs, then stop (no conversion).", panel=FETCH)
    offline: bool = option(
        False, "Never use the network (as with HF_HUB_OFFLINE=1); missing inputs are listed with their URLs.",
        panel=FETCH,
    )
    yes: bool = option(False, "Download more than 1 GB without asking (needed without a terminal).", panel=FETCH)
    detect: bool = option(
        False,
        "Synthetic world: also write the hallucination-detection sets (detect/, see `seed detect`).",
        panel=SYNTHETIC,
    )
    detect_unlabelled: int = option(
        DEFAULT_UNLABELLED,
        "--detect: captions in the unlabelled split, the transfer set of `seed detect train --transfer` (claims: "
        "half as many). It draws from a stream of its own: the labelled splits do not change with it.",
        min=1,
        panel=SYNTHETIC,
    )
    world: str = option(
        "clean",
        "Synthetic world preset of the text-borne hallucination sources: clean (balanced, perfect labels) or "
        "llava-like (docs/data.md). --yes-rate, --label-noise and --partner-negatives override it.",
        choices=WORLD_NAMES,
        panel=SYNTHETIC,
    )
    yes_rate: float | None = option(
        None, "Synthetic world: share of training existence questions drawn as 'yes' (default: the preset's).",
        min=0.0, max=1.0, panel=SYNTHETIC,
    )
    label_noise: float | None = option(
        None,
        "Synthetic world: probability that a training description or 'yes' answer names the absent usual partner "
        "of a visible object, as a hallucinated annotation would (default: the preset's).",
        min=0.0, max=1.0, panel=SYNTHETIC,
    )
    partner_negatives: float | None = option(
        None,
        "Synthetic world: probability that a 'no' question asks about the absent usual partner of a visible "
        "object, when there is one (default: the preset's).",
        min=0.0, max=1.0, panel=SYNTHETIC,
    )
    filter_with: str | None = option(
        None,
        "Run directory of `seed detect train` (RUN or RUN@STAGE): drop every training conversation with an answer "
        "in which it flags an object, attribute or relation (docs/data.md).",
        panel=FILTER,
    )
    filter_shifts: int = option(
        DEFAULT_FILTER_SHIFTS, "Mapping shifts the --filter-with detector averages (1 = a single pass).", min=1,
        panel=FILTER,
    )
    filter_threshold: float | None = option(
        None,
        "The --filter-with detector flags an option when P(hallucinated) exceeds this (default: the run's "
        "thresholds calibrated on dev, one per option kind, else 0.5).",
        min=0.0, max=1.0, panel=FILTER,
    )

    def __post_init__(self) -> None:
        check(self)
        require(
            self.train or self.pope or self.chair,
            "--no-train",
            "with --no-pope and --no-chair leaves nothing to prepare.",
        )
        require(self.pope_from is None or self.pope, "--pope-from", "cannot be combined with --no-pope.")
        require(
            not self.detect or self.synthetic,
            "--detect",
            "needs --synthetic (import other files with `seed detect import`).",
        )
        require(
            self.detect or self.detect_unlabelled == DEFAULT_UNLABELLED, "--detect-unlabelled", "needs --detect."
        )
        require(
            self.pope_from is None or not self.synthetic,
            "--pope-from",
            "cannot be combined with --synthetic (its POPE sets are built from the world).",
        )
        require(not (self.fetch_only and self.synthetic), "--fetch-only", "cannot be combined with --synthetic.")
        require(
            self.filter_with is None or self.train,
            "--filter-with",
            "filters the training conversations; it cannot be combined with --no-train.",
        )
        require(
            self.filter_with is not None
            or (self.filter_shifts == DEFAULT_FILTER_SHIFTS and self.filter_threshold is None),
            "--filter-shifts/--filter-threshold",
            "need --filter-with RUN.",
        )
        knobs = {
            "--world": self.world != "clean",
            "--yes-rate": self.yes_rate is not None,
            "--label-noise": self.label_noise is not None,
            "--partner-negatives": self.partner_negatives is not None,
        }
        for flag, given in knobs.items():
            require(self.synthetic or not given, flag, "shapes the synthetic world; add --synthetic.")

    def world_knobs(self) -> dict[str, float]:
        """The synthetic world's hallucination sources in force: the preset, then the explicit flags."""
        knobs = world_knobs(
            self.world, yes_rate=self.yes_rate, label_noise=self.label_noise, partner_negatives=self.partner_negatives
        )
        return knobs | {"cooccurrence": self.cooccurrence}
