"""`seed prepare` as a library call: inputs -> a complete data directory (see seedcli.data.datadir).

Order: resolve and check every input (errors name the flag and the path tried), then, inside a
staged directory that replaces --out only on success: build the synthetic world if asked, build
or import POPE, build CHAIR, convert the training set with the leakage guard (the evaluation image
ids are known by then), and write manifest.json last.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seedcli import atomic
from seedcli.config.base import to_dict
from seedcli.config.prepare import DEFAULT_TRAIN_IMAGE_DIRS, PrepareConfig
from seedcli.data import chair_gt, coco, fetch, instruct, pope
from seedcli.data.datadir import POPE_SPLITS, Record, sha256_file, write_manifest, write_train
from seedcli.data.pope_hub import IMAGE_DIR, is_hub_layout
from seedcli.errors import DataError
from seedcli.reporting import Reporter

if TYPE_CHECKING:
    from seedcli.detect.screen import Detector

COUNT_ORDER = (
    "read",
    "train",
    "not_sampled",
    "renamed_ids",
    "pope_images",
    "pope_random",
    "pope_popular",
    "pope_adversarial",
    "chair_images",
)
WORLD_DIR = "images"
"""Where the synthetic world is built inside the data directory (excluded from checksums)."""


@dataclass
class Findings:
    """Notes and warnings shown to the user as they happen and kept in the manifest."""

    reporter: Reporter
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Record and show a note."""
        self.notes.append(message)
        self.reporter.info(message)

    def warn(self, message: str) -> None:
        """Record and show a warning."""
        self.warnings.append(message)
        self.reporter.warn(message)


@dataclass(frozen=True)
class Sources:
    """Resolved inputs; None where a part is not prepared."""

    instruct: Path | None
    train_images: Path | None
    instances: Path | None
    captions: Path | None
    eval_images: Path | None
    pope_from: Path | None


def _file(path: Path, flag: str, hint: str) -> Path:
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file; {hint}")
    return path


def _directory(path: Path, flag: str, hint: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{flag} {path}: no such directory; {hint}")
    return path


def resolve_sources(cfg: PrepareConfig) -> Sources:
    """Check the real-data inputs that `cfg` needs; each error names its flag and the path tried."""
    instruct_json = train_images = instances = captions = eval_images = None
    if cfg.train:
        instruct_json = _file(
            cfg.instruct, "--instruct", "pass --instruct PATH to llava_instruct_150k.json (or --no-train)."
        )
        if cfg.images is None:
            train_images = next((d for d in DEFAULT_TRAIN_IMAGE_DIRS if d.is_dir()), None)
            if train_images is None:
                tried = " nor ".join(str(d) for d in DEFAULT_TRAIN_IMAGE_DIRS)
                raise DataError(f"--images: neither {tried} exists; pass --images DIR with the COCO training images.")
        else:
            train_images = _directory(
                cfg.images, "--images", "pass --images DIR with the COCO train2014 or train2017 images."
            )
    skip = (
        "pass --coco-annotations DIR, or skip the evaluation sets with --no-pope --no-chair "
        "(--pope-from DIR imports POPE)."
    )
    if cfg.chair or (cfg.pope and cfg.pope_from is None):
        annotations = _directory(cfg.coco_annotations, "--coco-annotations", skip)
        instances = _file(annotations / coco.INSTANCES_FILE, "--coco-annotations", skip)
        if cfg.chair:
            captions = _file(
                annotations / coco.CAPTIONS_FILE,
                "--coco-annotations",
                "CHAIR needs the reference captions; or pass --no-chair.",
            )
    if cfg.chair or (cfg.pope and not is_hub_layout(cfg.pope_from)):  # the hub's POPE parquet embeds its images
        eval_images = _directory(
            cfg.coco_images,
            "--coco-images",
            "pass --coco-images DIR with the COCO val2014 images, or --no-pope --no-chair.",
        )
    return Sources(instruct_json, train_images, instances, captions, eval_images, cfg.pope_from if cfg.pope else None)


def _missing_images(root: Path, names: set[str]) -> int:
    return sum(not (root / name).is_file() for name in names)


def prepare(cfg: PrepareConfig, reporter: Reporter, *, confirm: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Write the data directory `cfg.out` and return a JSON-ready summary of what was kept and dropped.

    Missing inputs at their --data-root layout paths are fetched first (seedcli.data.fetch); `confirm` is
    asked before downloading more than 1 GB without --yes. With --fetch-only, returns after fetching.
    """
    started = time.monotonic()
    detector = None
    if cfg.filter_with is not None:  # checked before anything is fetched or written
        from seedcli.detect.screen import open_detector

        detector = open_detector(
            cfg.filter_with, flag="--filter-with", shifts=cfg.filter_shifts, threshold=cfg.filter_threshold
        )
    fetched = None
    if not cfg.synthetic:
        if not cfg.fetch_only:
            atomic.prepare_output_dir(Path(cfg.out), overwrite=cfg.overwrite)  # refuse before any download
        fetched = fetch.ensure_inputs(cfg, reporter, confirm=confirm)
        cfg = fetched.cfg
        if cfg.fetch_only:
            return fetch.fetch_summary(fetched, resolve_sources(cfg))
    sources = None if cfg.synthetic else resolve_sources(cfg)
    out = Path(cfg.out)
    findings = Findings(reporter)
    counts: dict[str, int] = {}
    dropped: Counter[str] = Counter({reason: 0 for reason in instruct.DROP_REASONS}) if cfg.train else Counter()
    source: dict[str, Any] = {"kind": "synthetic" if cfg.synthetic else "llava-instruct"}
    if fetched is not None and fetched.records:
        source["fetched"] = list(fetched.records)
    roots: dict[str, str] = {}
    extra: dict[str, Any] = {"config": to_dict(cfg), "notes": findings.notes, "warnings": findings.warnings}

    for stale in atomic.remove_stale_stages(out):  # left by a prepare that was killed mid-write
        reporter.info(f"removed the staging debris {stale} of an interrupted run")
    with atomic.staged_dir(out, overwrite=cfg.overwrite) as stage:
        if cfg.synthetic:
            sources = _build_world(cfg, stage, reporter, source, findings)
        assert sources is not None
        relative = cfg.synthetic

        instances = coco.load_instances(sources.instances) if sources.instances else None
        if instances is not None:
            source["instances"] = {
                "path": _stored(sources.instances, stage, relative),
                "sha256": sha256_file(sources.instances),
            }
        eval_ids: set[int] = set()
        eval_names: set[str] = set()

        if cfg.pope:
            pope_ids, pope_names = _pope(cfg, sources, instances, stage, counts, findings, source, extra)
            eval_ids |= pope_ids
            eval_names |= pope_names
            embedded = (stage / IMAGE_DIR).is_dir()  # the hub's POPE layout: images written into the data directory
            roots["pope"] = IMAGE_DIR if embedded else _stored(sources.eval_images or Path(), stage, relative)
        if cfg.chair:
            chair_ids, chair_names = _chair(cfg, sources, instances, stage, counts, findings, source)
            eval_ids |= chair_ids
            eval_names |= chair_names
            roots["chair"] = _stored(sources.eval_images, stage, relative)  # type: ignore[arg-type]
        if eval_names:
            missing = _missing_images(sources.eval_images, eval_names)  # type: ignore[arg-type]
            if missing:
                findings.warn(
                    f"{missing} of {len(eval_names)} POPE/CHAIR images are not in --coco-images "
                    f"{sources.eval_images}; `seed evaluate` will need them."
                )

        if cfg.train:
            assert sources.instruct is not None and sources.train_images is not None
            if not eval_ids:
                findings.warn(
                    "No evaluation sets were prepared, so no training record was checked for overlap with them."
                )
            _train(
                cfg, sources, frozenset(eval_ids), stage, reporter, counts, dropped, findings, source, detector, extra
            )
            roots["train"] = _stored(sources.train_images, stage, relative)

        if cfg.detect:
            from seedcli.detect.world import WorldSpec, build_detect_sets

            spec = replace(WorldSpec(), unlabelled=(cfg.detect_unlabelled, cfg.detect_unlabelled // 2))
            counts.update(build_detect_sets(stage / "detect", seed=cfg.seed, spec=spec, reporter=reporter))
            source["detect"] = "detect"
        counts = {
            key: counts[key]
            for key in sorted(counts, key=lambda k: COUNT_ORDER.index(k) if k in COUNT_ORDER else len(COUNT_ORDER))
        }
        manifest = write_manifest(
            stage, source=source, seed=cfg.seed, counts=counts, dropped=dict(dropped), image_roots=roots, extra=extra
        )

    return {
        "out": str(out.resolve()),
        "source": source["kind"],
        "seed": cfg.seed,
        "counts": counts,
        "dropped": dict(dropped),
        "image_roots": roots,
        "notes": findings.notes,
        "warnings": findings.warnings,
        "pope_import": extra.get("pope_import"),
        "filter": extra.get("filter"),
        "files": len(manifest["files"]),
        "seconds": round(time.monotonic() - started, 3),
    }


def _write_train_quietly(stage: Path, records: list[Record]) -> int:
    """`write_train` without the `datasets` tqdm bars (progress belongs to the Reporter)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return write_train(stage, records)
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _stored(path: Path, stage: Path, relative: bool) -> str:
    """A path as the manifest stores it: relative to DATA for the synthetic world (movable), else absolute."""
    return os.path.relpath(path, stage) if relative else str(path.resolve())


def _build_world(
    cfg: PrepareConfig, stage: Path, reporter: Reporter, source: dict[str, Any], findings: Findings
) -> Sources:
    from seedcli.data.synthetic import Mix, build_world

    knobs = cfg.world_knobs()
    mix = Mix(
        yes_rate=knobs["yes_rate"], label_noise=knobs["label_noise"], partner_negative_rate=knobs["partner_negatives"]
    )
    world = build_world(
        stage / WORLD_DIR,
        n_images=cfg.synthetic_images,
        seed=cfg.seed,
        cooccurrence=cfg.cooccurrence,
        reporter=reporter,
        mix=mix,
    )
    source.update({"synthetic_images": cfg.synthetic_images, "cooccurrence": cfg.cooccurrence, "world": WORLD_DIR})
    # The hallucination sources: the preset, the values in force, and the same rates measured on the data.
    source.update({"world_preset": cfg.world, "knobs": knobs, "realised": world.stats["realised"]})
    findings.note(f"Synthetic world built in {WORLD_DIR}/ with {len(world.eval_image_ids)} held-out evaluation images.")
    return Sources(
        instruct=world.instruct_json if cfg.train else None,
        train_images=world.train_images if cfg.train else None,
        instances=world.instances_json,
        captions=world.captions_json if cfg.chair else None,
        eval_images=world.eval_images,
        pope_from=None,
    )


def _pope(
    cfg: PrepareConfig,
    sources: Sources,
    instances: coco.CocoInstances | None,
    stage: Path,
    counts: dict[str, int],
    findings: Findings,
    source: dict[str, Any],
    extra: dict[str, Any],
) -> tuple[set[int], set[str]]:
    """Build or import the POPE splits into `stage`; returns their image ids and names."""
    if sources.pope_from is not None:
        imported = pope.import_pope(sources.pope_from, objects_per_image=cfg.pope_objects, images_to=stage / IMAGE_DIR)
        for warning in imported.warnings:
            findings.warn(warning)
        pope.write_pope(stage, imported.splits)
        source["pope_from"] = {
            split: {"path": report["file"], "sha256": sha256_file(Path(report["file"]))}
            for split, report in imported.report.items()
        }
        extra["pope_import"] = dict(imported.report)
        for split, rows in imported.splits.items():
            counts[f"pope_{split}"] = len(rows)
        names = {row["image"] for rows in imported.splits.values() for row in rows}
        ids = imported.image_ids()
        unnamed = len({n for n in names if coco.image_id_from_name(n) is None})
        if unnamed:
            findings.note(
                f"{unnamed} imported POPE images have no COCO id in their name; the leakage guard cannot check them."
            )
        counts["pope_images"] = len(names)
        # Embedded images are in the data directory, not in --coco-images.
        return ids, names if imported.image_root is None else set()
    assert instances is not None
    built = pope.build_pope(
        instances.objects,
        instances.images,
        n_images=cfg.pope_images,
        seed=cfg.seed,
        objects_per_image=cfg.pope_objects,
        allow_fewer=cfg.synthetic,
    )
    if len(built.image_ids) < cfg.pope_images:
        findings.note(
            f"POPE uses {len(built.image_ids)} images: --pope-images {cfg.pope_images} is more than the evaluation "
            "images "
            f"with at least {cfg.pope_objects} object categories."
        )
    pope.write_pope(stage, {split: [q.to_row() for q in built.splits[split]] for split in POPE_SPLITS})
    for split in POPE_SPLITS:
        counts[f"pope_{split}"] = len(built.splits[split])
        if built.fallbacks.get(split):
            findings.note(
                f"POPE {split}: {built.fallbacks[split]} negatives fell back to a random draw (no eligible name)."
            )
    counts["pope_images"] = len(built.image_ids)
    extra["pope_fallbacks"] = dict(built.fallbacks)
    return set(built.image_ids), {instances.images[i] for i in built.image_ids}


def _chair(
    cfg: PrepareConfig,
    sources: Sources,
    instances: coco.CocoInstances | None,
    stage: Path,
    counts: dict[str, int],
    findings: Findings,
    source: dict[str, Any],
) -> tuple[set[int], set[str]]:
    """Sample the CHAIR images and write their ground truth into `stage`; returns their ids and names."""
    assert instances is not None and sources.captions is not None
    captions = coco.load_captions(sources.captions)
    source["captions"] = {
        "path": _stored(sources.captions, stage, cfg.synthetic),
        "sha256": sha256_file(sources.captions),
    }
    pool = set(captions) & set(instances.images)
    chair_ids = chair_gt.sample_chair_ids(pool, cfg.chair_images, cfg.seed, allow_fewer=cfg.synthetic)
    if len(chair_ids) < cfg.chair_images:
        findings.note(
            f"CHAIR uses {len(chair_ids)} images: --chair-images {cfg.chair_images} is more than the {len(pool)} "
            "captioned evaluation images."
        )
    rows = chair_gt.chair_rows(chair_ids, instances.objects, captions, instances.images)
    chair_gt.write_chair(stage, rows)
    counts["chair_images"] = len(rows)
    return set(chair_ids), {row["image"] for row in rows}


def _train(
    cfg: PrepareConfig,
    sources: Sources,
    eval_ids: frozenset[int],
    stage: Path,
    reporter: Reporter,
    counts: dict[str, int],
    dropped: Counter[str],
    findings: Findings,
    source: dict[str, Any],
    detector: Detector | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Convert, filter and sample the training conversations into `stage`/train (--filter-with: then screen them)."""
    assert sources.instruct is not None and sources.train_images is not None
    scan = instruct.scan_instruct(
        sources.instruct,
        sources.train_images,
        eval_ids=eval_ids,
        allow_eval_overlap=cfg.allow_eval_overlap,
        reporter=reporter,
    )
    dropped.update(scan.dropped)
    workers = cfg.workers or instruct.default_workers()
    records, unreadable = instruct.select_records(
        scan.records,
        sources.train_images,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
        verify_images=cfg.verify_images,
        workers=workers,
        reporter=reporter,
    )
    dropped["image_unreadable"] += unreadable
    if not records:
        reasons = ", ".join(f"{reason} {n}" for reason, n in dropped.items() if n) or "the file holds no records"
        raise DataError(
            f"--instruct {sources.instruct}: no usable training record ({reasons}); check --images "
            f"{sources.train_images}."
        )
    if scan.dropped["image_missing"]:
        findings.warn(
            f"{scan.dropped['image_missing']} records name images missing from --images {sources.train_images} "
            "(train2014 lacks the images that train2017 took from val2014; they are evaluation candidates anyway)."
        )
    sampled = len(records)
    if detector is not None:
        records = _screen(records, sources.train_images, detector, stage, reporter, counts, dropped, extra)
    written = _write_train_quietly(stage, records)
    relative = cfg.synthetic
    source["instruct"] = {"path": _stored(sources.instruct, stage, relative), "sha256": scan.sha256}
    source["images"] = _stored(sources.train_images, stage, relative)
    # read == sum(dropped) + train + not_sampled
    counts.update(
        {
            "read": scan.read,
            "train": written,
            "not_sampled": len(scan.records) - unreadable - sampled,
            "renamed_ids": scan.renamed_ids,
        }
    )


def _screen(
    records: list[Record],
    images: Path,
    detector: Detector,
    stage: Path,
    reporter: Reporter,
    counts: dict[str, int],
    dropped: Counter[str],
    extra: dict[str, Any] | None,
) -> list[Record]:
    """--filter-with: drop the conversations whose answers the detector flags; counts into the manifest."""
    from seedcli.data.answer_filter import DROP_REASON, FLAGGED_FILE, filter_records

    kept, removed, report = filter_records(records, images, detector, reporter)
    if not kept:
        raise DataError(
            f"--filter-with {detector.spec}: the detector flagged every one of the {len(records)} training "
            "conversations; nothing would be left to train on (try --filter-threshold)."
        )
    atomic.write_jsonl(stage / FLAGGED_FILE, removed)
    reporter.info(
        f"--filter-with {detector.label}: dropped {len(removed)} of {len(records)} conversations "
        f"({report['answers_flagged']} of {report['answers']} answers flagged, "
        f"{report['answers_no_options']} without options)"
    )
    dropped[DROP_REASON] += len(removed)
    counts.update(
        {
            "filter_answers": report["answers"],
            "filter_no_options": report["answers_no_options"],
            "filter_flagged_answers": report["answers_flagged"],
        }
    )
    if extra is not None:
        extra["filter"] = report
    return kept
