"""`seed detect train`: the HKD4VLM pyramid as one readable loop per stage.

Stages (each switchable, see `plan`):
    sft      the largest rung learns the labels (cross-entropy on the two-way answer distribution)
    kd-i     rung i learns from rung i-1: CE + w T^2 KL(teacher || student). Online (default): the
             teacher keeps training on CE + mutual T^2 KL(student || teacher) in the same steps.
    refine   the smallest rung is refined by three coupled signals: labels, the largest rung and
             the rung above it (weights --refine-labels/--refine-large/--refine-medium), teachers frozen.

Run directory::

    RUN/config.json        {"command": "detect train", "config": {...}, "resolved": {"plan": [...]}}
    RUN/env.json           versions and devices
    RUN/metrics.jsonl      one line per logged step and one per stage (dev scores)
    RUN/stages/<stage>/rung-<i>/   weights (safetensors) + processor of every rung the stage trained
    RUN/checkpoints/<stage>/       the last finished epoch of the running stage (resume)
    RUN/state.json         completed stages and where every rung's newest weights are
    RUN/summary.json       written last: the detector (the final student) and per-stage dev scores
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic, rundir
from seedcli.config.base import from_dict, to_dict
from seedcli.config.detect import DetectTrainConfig
from seedcli.detect.items import Item, read_items
from seedcli.detect.questions import NO_AUGMENT, Augment, training_questions
from seedcli.errors import ConfigError, DataError, ModelError
from seedcli.reporting import Reporter

COMMAND = "detect train"
STAGES = "stages"
STATE = "state.json"


@dataclass(frozen=True)
class Stage:
    """One training stage: who learns, from whom, with which weights."""

    name: str
    student: int  # rung index (0 = largest)
    teachers: tuple[tuple[int, float], ...] = ()  # (rung index, KL weight)
    label_weight: float = 1.0
    online: bool = False  # the first teacher keeps training (mutual term)
    epochs: int = 1


def plan(cfg: DetectTrainConfig) -> list[Stage]:
    """The stages `cfg` asks for, in order."""
    n = len(cfg.models)
    stages = [Stage("sft", 0, epochs=cfg.epochs)]
    if n == 1:
        return stages
    online = not cfg.offline
    if cfg.pyramid:
        for i in range(1, n):
            stages.append(Stage(f"kd-{i}", i, ((i - 1, cfg.kd_weight),), cfg.ce_weight, online, cfg.epochs))
    else:
        stages.append(Stage(f"kd-{n - 1}", n - 1, ((0, cfg.kd_weight),), cfg.ce_weight, online, cfg.epochs))
    if cfg.refine:
        teachers = [(0, cfg.refine_large)]
        if cfg.pyramid and n >= 3:
            teachers.append((n - 2, cfg.refine_medium))
        stages.append(Stage("refine", n - 1, tuple(teachers), cfg.refine_labels, False, cfg.refine_epochs))
    return stages


def default_out() -> Path:
    """runs/detect-<timestamp>."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return rundir.DEFAULT_RUNS_ROOT / f"detect-{stamp}"


def data_files(data: Path, split: str, given: tuple[Path, ...], flag: str) -> list[Path]:
    """The given files, or the data directory's detect/track{1,2}-<split>.jsonl that exist."""
    if given:
        return list(given)
    files = [Path(data) / "detect" / f"track{t}-{split}.jsonl" for t in (1, 2)]
    found = [f for f in files if f.is_file()]
    if not found and split == "train":
        raise DataError(
            f"--data {data}: no detect/track1-train.jsonl or track2-train.jsonl; "
            f"run `seed prepare --synthetic --detect` or pass {flag}."
        )
    return found


def load_items(files: list[Path]) -> list[Item]:
    """Labelled items of several files, ids unique across them."""
    items: list[Item] = []
    seen: set[str] = set()
    for path in files:
        for item in read_items(path, require_labels=True, flag="--train-files"):
            if item.id in seen:
                raise DataError(f"{path}: item id {item.id!r} also appears in an earlier file.")
            seen.add(item.id)
            items.append(item)
    return items


def _check_shared_inputs(ladder: list[Any]) -> None:
    """Every rung must read the same token ids and pixels, so one encoded batch feeds them all."""
    first = ladder[0].processor
    for loaded in ladder[1:]:
        same_vocab = loaded.processor.tokenizer.get_vocab() == first.tokenizer.get_vocab()
        same_pixels = loaded.processor.image_processor.to_dict() == first.image_processor.to_dict()
        if not (same_vocab and same_pixels):
            raise ModelError(
                f"--models: {loaded.ref.name} and {ladder[0].ref.name} use different tokenizers or image processing; "
                "rungs must be one family."
            )


def _save_model(loaded: Any, model: Any, directory: Path) -> None:
    with atomic.staged_dir(directory, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        loaded.processor.save_pretrained(str(tmp))


def _set_trainable(model: Any, trainable: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(trainable)
    model.train(trainable)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def _open_or_create(cfg: DetectTrainConfig, out: Path, stages: list[Stage]) -> dict[str, Any]:
    """Create the run directory (config, env) or, with --resume, check it and return its state."""
    from seedcli.environment import environment

    if cfg.resume:
        if not (out / rundir.CONFIG).is_file():
            raise ConfigError(f"--resume: {out} is not a `seed detect train` run directory (no {rundir.CONFIG}).")
        saved = json.loads((out / rundir.CONFIG).read_text(encoding="utf-8"))
        previous = from_dict(DetectTrainConfig, saved["config"])
        before, now = _plain(to_dict(previous)), _plain(to_dict(cfg))
        differs = [k for k in before if k not in ("resume", "overwrite", "out") and before[k] != now[k]]
        if differs:
            raise ConfigError(
                f"--resume: the settings differ from the run's ({', '.join(differs)}); resume with the same flags."
            )
        state_path = out / STATE
        return (
            json.loads(state_path.read_text(encoding="utf-8"))
            if state_path.is_file()
            else {"completed": [], "weights": {}}
        )
    atomic.prepare_output_dir(out, overwrite=cfg.overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = {
        "seedcli_version": __version__,
        "command": COMMAND,
        "config": to_dict(cfg),
        "resolved": {"plan": [asdict(s) for s in stages]},
    }
    atomic.write_json(out / rundir.CONFIG, config)
    atomic.write_json(out / rundir.ENV, environment())
    return {"completed": [], "weights": {}}


def train(cfg: DetectTrainConfig, reporter: Reporter) -> dict[str, Any]:
    """Run every stage of the plan (skipping completed ones on --resume) and write summary.json."""
    import torch

    from seedcli.models.loading import load

    started = time.monotonic()
    out = Path(cfg.out) if cfg.out is not None else default_out()
    items = load_items(data_files(cfg.data, "train", cfg.train_files, "--train-files"))
    dev_files = data_files(cfg.data, "dev", cfg.dev_files, "--dev-files")
    dev = load_items(dev_files) if dev_files else []
    stages = plan(cfg)
    torch.manual_seed(cfg.seed)
    ladder = [load(name, dtype=cfg.dtype, device=cfg.device) for name in cfg.models]
    _check_shared_inputs(ladder)
    state = _open_or_create(cfg, out, stages)
    models = []
    for i, loaded in enumerate(ladder):
        saved = state["weights"].get(str(i))
        models.append(load(str(out / saved), dtype=cfg.dtype, device=cfg.device).model if saved else loaded.model)
    reporter.info(
        f"detect train: {len(items)} items, {len(dev)} dev items, stages {', '.join(s.name for s in stages)} -> {out}"
    )
    dev_scores: dict[str, Any] = {k: v for k, v in state.get("dev", {}).items()}
    for stage in stages:
        if stage.name in state["completed"]:
            continue
        trained = run_stage(cfg, stage, ladder, models, items, out, reporter)
        for i in trained:
            relative = f"{STAGES}/{stage.name}/rung-{i}"
            _save_model(ladder[i], models[i], out / relative)
            state["weights"][str(i)] = relative
        state["completed"].append(stage.name)
        if dev:
            from seedcli.detect.infer import calibrate, predict, score

            probs = predict(ladder[stage.student], models[stage.student], dev, shifts=1, batch_size=64)
            thresholds = calibrate(dev, probs)
            dev_scores[stage.name] = {**score(dev, probs, thresholds)[0], "thresholds": thresholds}
            reporter.log({"stage": stage.name, **_headline(dev_scores[stage.name])})
        state["dev"] = dev_scores
        atomic.write_json(out / STATE, state)
        shutil.rmtree(out / rundir.CHECKPOINTS / stage.name, ignore_errors=True)
    final = stages[-1]
    summary = {
        "command": COMMAND,
        "detector": f"{STAGES}/{final.name}/rung-{final.student}",
        "detector_model": cfg.models[final.student],
        "stages": {s.name: f"{STAGES}/{s.name}/rung-{s.student}" for s in stages},
        "dev": dev_scores,
        # Decision thresholds calibrated on the dev items per stage (the final student's under "detector").
        "thresholds": {name: scores["thresholds"] for name, scores in dev_scores.items()},
        "train_items": len(items),
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic.write_json(out / rundir.SUMMARY, summary)
    return {"out": str(out), **summary}


def _headline(scores: dict[str, Any]) -> dict[str, float]:
    out = {}
    if "track1" in scores:
        out["t1_f1"] = round(scores["track1"]["options"]["f1"], 2)
        out["t1_macro_f1"] = round(scores["track1"]["macro_f1"], 2)
    if "track2" in scores:
        out["t2_acc"] = round(scores["track2"]["accuracy"], 2)
    return out


def run_stage(
    cfg: DetectTrainConfig,
    stage: Stage,
    ladder: list[Any],
    models: list[Any],
    items: list[Item],
    out: Path,
    reporter: Reporter,
) -> list[int]:
    """Train one stage; returns the rung indices whose weights changed."""
    import torch

    from seedcli.core.checkpoint import _flatten_optimizer, _unflatten_optimizer
    from seedcli.core.distill import warmup_cosine
    from seedcli.detect import losses
    from seedcli.detect.scoring import Images, answer_logits, encode_batch

    trained = [stage.student] + ([stage.teachers[0][0]] if stage.online and stage.teachers else [])
    for i, model in enumerate(models):
        _set_trainable(model, i in trained)
    steps_per_epoch = math.ceil(sum(max(1, len(item.options)) for item in items) / cfg.batch_size)
    total = steps_per_epoch * stage.epochs
    optimizers = {
        i: torch.optim.AdamW(
            [p for p in models[i].parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        for i in trained
    }
    schedule = warmup_cosine(total, int(cfg.warmup_ratio * total), 0.1)
    schedulers = {i: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for i, opt in optimizers.items()}
    checkpoint = out / rundir.CHECKPOINTS / stage.name
    start_epoch = (
        _restore(checkpoint, ladder, models, optimizers, schedulers, _unflatten_optimizer)
        if (checkpoint / STATE).is_file()
        else 0
    )
    augment = Augment() if cfg.augment else NO_AUGMENT
    images = Images([item.image for item in items])
    student = models[stage.student]
    loaded = ladder[stage.student]
    with reporter.task(
        f"{stage.name}: rung {stage.student} ({cfg.models[stage.student]})", total=total, unit="step"
    ) as task:
        task.advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, stage.epochs):
            # Each epoch's augmentation and order depend only on (seed, stage, epoch): resume reproduces them.
            rng = random.Random(f"{cfg.seed}/{stage.name}/{epoch}")
            questions = training_questions(items, rng, augment)
            rng.shuffle(questions)
            for start in range(0, len(questions), cfg.batch_size):
                batch = questions[start : start + cfg.batch_size]
                inputs = encode_batch(loaded, batch, images)
                target = torch.tensor([q.target for q in batch], device=loaded.device)  # [B]
                s_logits = answer_logits(loaded, student, inputs, batch)  # [B, 2]
                teacher_logits = []
                for i, weight in stage.teachers:
                    with torch.set_grad_enabled(i in trained):
                        teacher_logits.append((answer_logits(ladder[i], models[i], inputs, batch), weight))
                loss, parts = losses.hybrid(
                    s_logits, target, teacher_logits, label_weight=stage.label_weight, temperature=cfg.temperature
                )
                if stage.online and teacher_logits:
                    t_logits = teacher_logits[0][0]
                    mutual = losses.kd_kl(t_logits, s_logits.detach(), cfg.temperature)
                    loss = loss + losses.label_ce(t_logits, target) + cfg.mutual_weight * mutual
                    parts["mutual"] = float(mutual.detach())
                if not torch.isfinite(loss):
                    raise ModelError(f"stage {stage.name}: non-finite loss at epoch {epoch + 1}; lower --lr.")
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for i, optimizer in optimizers.items():
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(models[i].parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    schedulers[i].step()
                task.advance(1, epoch=epoch + 1, loss=float(loss.detach()))
            atomic.append_jsonl(
                out / rundir.METRICS, {"stage": stage.name, "epoch": epoch + 1, "loss": float(loss.detach()), **parts}
            )
            _save_checkpoint(checkpoint, epoch + 1, ladder, models, optimizers, schedulers, trained, _flatten_optimizer)
    for model in models:
        _set_trainable(model, False)
    return trained


def _save_checkpoint(
    directory: Path,
    epoch: int,
    ladder: list[Any],
    models: list[Any],
    optimizers: dict[int, Any],
    schedulers: dict[int, Any],
    trained: list[int],
    flatten: Any,
) -> None:
    from safetensors.torch import save_file

    with atomic.staged_dir(directory, overwrite=True) as tmp:
        meta = {}
        for i in trained:
            state = {k: v.detach().cpu().contiguous() for k, v in models[i].state_dict().items()}
            save_file(state, str(tmp / f"rung-{i}.safetensors"))
            tensors, opt_meta = flatten(optimizers[i].state_dict())
            save_file(tensors, str(tmp / f"optimizer-{i}.safetensors"))
            meta[str(i)] = {"optimizer": opt_meta, "scheduler": schedulers[i].state_dict()}
        atomic.write_json(tmp / STATE, {"epoch": epoch, "rungs": meta})


def _restore(
    directory: Path,
    ladder: list[Any],
    models: list[Any],
    optimizers: dict[int, Any],
    schedulers: dict[int, Any],
    unflatten: Any,
) -> int:
    from safetensors.torch import load_file

    state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    for key, meta in state["rungs"].items():
        i = int(key)
        models[i].load_state_dict(load_file(str(directory / f"rung-{i}.safetensors")))
        optimizers[i].load_state_dict(
            unflatten(load_file(str(directory / f"optimizer-{i}.safetensors")), meta["optimizer"])
        )
        schedulers[i].load_state_dict(meta["scheduler"])
    return int(state["epoch"])
