"""`seed detect train`: the HKD4VLM pyramid as one readable loop per stage.

Stages (each switchable, see `plan`):
    sft      the largest rung learns the labels (cross-entropy on the two-way answer distribution)
    kd-i     rung i learns from rung i-1: CE + w T^2 KL(teacher || student). Online (default): the
             teacher keeps training on CE + mutual T^2 KL(student || teacher) in the same steps.
    refine   the smallest rung is refined by three coupled signals: labels, the largest rung and
             the rung above it (weights --refine-labels/--refine-large/--refine-medium), teachers frozen.

With --transfer (or --transfer-files), the stages whose teachers are frozen (refine, and the kd stages
with --offline) also go through the transfer set (unlabelled items): there the label terms are absent
and the student learns the teachers' answers alone.

Run directory::

    RUN/config.json        {"command": "detect train", "config": {...}, "resolved": {"plan": [...]}}
    RUN/env.json           versions and devices
    RUN/metrics.jsonl      one line per stage and epoch: the epoch's mean loss and parts per question
    RUN/stages/<stage>/rung-<i>/   weights (safetensors) + processor of every rung the stage trained, or
                                   for a LoRA rung its adapter + rung.json (the base model it belongs to)
    RUN/checkpoints/<stage>/       the last finished epoch of the running stage (resume)
    RUN/state.json         completed stages and where every rung's newest weights are
    RUN/summary.json       written last: the detector (the final student) and per-stage dev scores

Each rung trains all its weights or a LoRA adapter on its language model's attention (`--tuning`).
With --gpus/--nproc N, N processes each hold the whole ladder and take a contiguous share of every
global batch of questions; the gradients of every model the step trains are summed across processes
(each share's loss weighted by its size), so all replicas take the same step. Rank 0 writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic, rundir
from seedcli.config.base import from_dict, to_dict
from seedcli.config.detect import DetectTrainConfig
from seedcli.detect.items import Item, read_items
from seedcli.detect.questions import NO_AUGMENT, Augment, training_questions
from seedcli.detect.world import UNLABELLED
from seedcli.errors import ConfigError, DataError, ModelError, SeedError
from seedcli.reporting import Reporter
from seedcli.seeds import torch_seed

COMMAND = "detect train"
STAGES = "stages"
STATE = "state.json"
RUNG = "rung.json"  # in a LoRA rung's stage directory: the base model its adapter belongs to
# --tuning auto: rungs of at most this many parameters train all weights, larger ones a LoRA adapter.
FULL_MAX_PARAMS = 100_000_000


@dataclass(frozen=True)
class Stage:
    """One training stage: who learns, from whom, with which weights."""

    name: str
    student: int  # rung index (0 = largest)
    teachers: tuple[tuple[int, float], ...] = ()  # (rung index, KL weight)
    label_weight: float = 1.0
    online: bool = False  # the first teacher keeps training (mutual term)
    epochs: int = 1
    transfer: bool = False  # the stage's epochs also cover the unlabelled transfer set (KL terms only)


def plan(cfg: DetectTrainConfig) -> list[Stage]:
    """The stages `cfg` asks for, in order."""
    n = len(cfg.models)
    stages = [Stage("sft", 0, epochs=cfg.epochs)]
    if n == 1:
        return stages
    online = not cfg.offline
    # The transfer set goes where the teachers are frozen: an online teacher would take a step on every
    # transfer batch too, so more unlabelled items would mean more epochs of its own on the same labels.
    transfer = uses_transfer(cfg) and not online
    if cfg.pyramid:
        for i in range(1, n):
            teacher = ((i - 1, cfg.kd_weight),)
            stages.append(Stage(f"kd-{i}", i, teacher, cfg.ce_weight, online, cfg.epochs, transfer))
    else:
        teacher = ((0, cfg.kd_weight),)
        stages.append(Stage(f"kd-{n - 1}", n - 1, teacher, cfg.ce_weight, online, cfg.epochs, transfer))
    if cfg.refine:
        teachers = [(0, cfg.refine_large)]
        if cfg.pyramid and n >= 3:
            teachers.append((n - 2, cfg.refine_medium))
        refine = Stage(
            "refine", n - 1, tuple(teachers), cfg.refine_labels, False, cfg.refine_epochs, uses_transfer(cfg)
        )
        stages.append(refine)
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


def load_items(files: list[Path], *, labelled: bool = True, taken: set[str] | None = None) -> list[Item]:
    """Items of several files, ids unique across them (and not in `taken`).

    labelled=False reads a transfer set: labels may be absent and are dropped where present.
    """
    items: list[Item] = []
    seen: set[str] = set(taken or ())
    flag = "--train-files" if labelled else "--transfer-files"
    for path in files:
        for item in read_items(path, require_labels=labelled, flag=flag):
            if item.id in seen:
                raise DataError(f"{path}: item id {item.id!r} also appears in an earlier file.")
            seen.add(item.id)
            items.append(item if labelled else replace(item, labels=None))
    return items


def uses_transfer(cfg: DetectTrainConfig) -> bool:
    """--transfer, or transfer files given."""
    return cfg.transfer or bool(cfg.transfer_files)


def transfer_files(cfg: DetectTrainConfig) -> list[Path]:
    """--transfer-files, else with --transfer the data directory's unlabelled split (the training items must come
    from that directory too)."""
    if cfg.transfer_files:
        return list(cfg.transfer_files)
    if not cfg.transfer:
        return []
    if cfg.train_files:
        raise ConfigError("--transfer: with --train-files, name the unlabelled items with --transfer-files.")
    found = data_files(cfg.data, UNLABELLED, (), "--transfer-files")
    if not found:
        raise DataError(
            f"--transfer: {Path(cfg.data) / 'detect'} has no track1-unlabelled.jsonl or track2-unlabelled.jsonl; "
            "run `seed prepare --synthetic --detect` again or pass --transfer-files."
        )
    return found


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


def tuning_of(cfg: DetectTrainConfig, loaded: Any) -> str:
    """`lora` or `full` for one rung: --tuning, where `auto` decides by the rung's size."""
    if cfg.tuning != "auto":
        return cfg.tuning
    return "full" if sum(p.numel() for p in loaded.model.parameters()) <= FULL_MAX_PARAMS else "lora"


def _check_lora_targets(cfg: DetectTrainConfig, loaded: Any) -> None:
    """--lora-targets must name attention projections of the rung's language model (PEFT matches in full)."""
    import re

    pattern = re.compile(loaded.family.lora_target_regex(cfg.lora_targets or None))
    if not any(pattern.fullmatch(name) for name, _ in loaded.model.named_modules()):
        names = ",".join(cfg.lora_targets or loaded.family.attention_projections)
        raise ConfigError(
            f"--lora-targets {names} matches no attention projection of {loaded.ref.name}'s language model; "
            "use names like q_proj,v_proj."
        )


def _lora_config(cfg: DetectTrainConfig, loaded: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=loaded.family.lora_target_regex(cfg.lora_targets or None),
        bias="none",
    )


def _rung_model(cfg: DetectTrainConfig, index: int, loaded: Any, tuning: str, saved: str | None, out: Path) -> Any:
    """Rung `index` as training starts: its newest saved weights (or adapter) if any, else the loaded model."""
    import torch

    from seedcli.models.loading import load

    if tuning == "full":
        return load(str(out / saved), dtype=cfg.dtype, device=str(loaded.device)).model if saved else loaded.model
    from peft import PeftModel, get_peft_model

    if saved:
        return PeftModel.from_pretrained(loaded.model, str(out / saved), is_trainable=True)
    # Seeded per rung: every process, and a resumed run, start from the same adapter.
    torch.manual_seed(torch_seed("lora", cfg.seed, index))
    return get_peft_model(loaded.model, _lora_config(cfg, loaded))


def _base_name(loaded: Any) -> str:
    """How run/evaluate find a LoRA rung's base again: the name, or the absolute path of a local directory."""
    return str(loaded.ref.source) if loaded.ref.kind == "local" else str(loaded.ref.name)


def _save_model(cfg: DetectTrainConfig, loaded: Any, model: Any, tuning: str, directory: Path) -> None:
    """A full rung: weights + processor. A LoRA rung: the adapter (PEFT's files) + rung.json naming its base."""
    with atomic.staged_dir(directory, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        if tuning == "lora":
            (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
            atomic.write_json(tmp / RUNG, {"base": _base_name(loaded), "quantization": cfg.quantization})
        else:
            loaded.processor.save_pretrained(str(tmp))


def _set_trainable(model: Any, trainable: bool, tuning: str = "full") -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable and (tuning == "full" or "lora_" in name))
    model.train(trainable)


def _checkpoint_activations(model: Any) -> None:
    """Non-reentrant activation checkpointing, as `seed distill --gradient-checkpointing` enables it.

    transformers recomputes only in training mode, so frozen rungs (eval mode) run as before.
    """
    from seedcli.core.distill import _enable_checkpointing
    from seedcli.models.forward import unwrap

    _enable_checkpointing(unwrap(model))


def _trained_state(model: Any, tuning: str) -> dict[str, Any]:
    """What a checkpoint keeps of a trained rung: every weight, or only its adapter."""
    if tuning == "lora":
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def _open_or_create(cfg: DetectTrainConfig, out: Path, stages: list[Stage], resolved: dict[str, Any]) -> dict[str, Any]:
    """Create the run directory (config, env) or, with --resume, check it and return its state."""
    import dataclasses

    from seedcli.config.base import affects_result
    from seedcli.environment import environment

    if cfg.resume:
        if not (out / rundir.CONFIG).is_file():
            raise ConfigError(f"--resume: {out} is not a `seed detect train` run directory (no {rundir.CONFIG}).")
        saved = json.loads((out / rundir.CONFIG).read_text(encoding="utf-8"))
        previous = from_dict(DetectTrainConfig, saved["config"])
        before, now = _plain(to_dict(previous)), _plain(to_dict(cfg))
        free = {"resume", "overwrite", "out"} | {f.name for f in dataclasses.fields(cfg) if not affects_result(f)}
        differs = [k for k in before if k not in free and before.get(k) != now.get(k)]
        if differs:
            raise ConfigError(
                f"--resume: the settings differ from the run's ({', '.join(differs)}); resume with the same flags."
            )
        return _read_state(out)
    atomic.prepare_output_dir(out, overwrite=cfg.overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = {
        "seedcli_version": __version__,
        "command": COMMAND,
        "config": to_dict(cfg),
        "resolved": {"plan": [asdict(s) for s in stages], **resolved},
    }
    atomic.write_json(out / rundir.CONFIG, config)
    atomic.write_json(out / rundir.ENV, environment())
    return {"completed": [], "weights": {}}


def _read_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"completed": [], "weights": {}}


def train(cfg: DetectTrainConfig, reporter: Reporter) -> dict[str, Any]:
    """Run every stage of the plan (skipping completed ones on --resume) and write summary.json.

    Joins the process group that --gpus/--nproc (or torchrun, SLURM) started and leaves it at the end.
    """
    import torch

    from seedcli import distributed
    from seedcli.core.collective import LocalCollective
    from seedcli.models.loading import resolve_device

    joined = distributed.join(device=cfg.device, processes=cfg.gpus or cfg.nproc or 1, timeout_s=cfg.nccl_timeout_s)
    try:
        return _train(cfg, reporter, joined or LocalCollective(torch.device(resolve_device(cfg.device))))
    finally:
        if joined is not None:
            distributed.shutdown()


def _load_ladder(cfg: DetectTrainConfig, collective: Any) -> list[Any]:
    """Every rung on this process's device; rank 0 first (it may build caches the others then read)."""
    from seedcli.models.loading import load

    ladder: list[Any] = []
    for turn in (True, False):
        if collective.is_main == turn:
            ladder = [
                load(name, dtype=cfg.dtype, device=str(collective.device), quantization=cfg.quantization)
                for name in cfg.models
            ]
        if collective.world > 1 and turn:
            collective.any_flag(False)
    return ladder


def _dev_scores(stage: Stage, ladder: list[Any], models: list[Any], dev: list[Item], collective: Any) -> dict:
    """Single-pass dev scores of the stage's student (each process predicts a share), calibrated thresholds."""
    from seedcli import distributed
    from seedcli.detect.infer import calibrate, predict, score

    part = distributed.shard(dev, collective.rank, collective.world)
    probs = predict(ladder[stage.student], models[stage.student], part, shifts=1, batch_size=64) if part else []
    if collective.world > 1:
        probs = distributed.gather_records(probs, collective)
    thresholds = calibrate(dev, probs)
    return {**score(dev, probs, thresholds)[0], "thresholds": thresholds}


def _check_replicas(collective: Any, stage: Stage, models: list[Any], tuning: list[str], trained: list[int]) -> None:
    """After a stage on several processes, every trained rung must be identical on all of them."""
    from seedcli import distributed

    for i in trained:
        digests = distributed.replica_digests(collective, _trained_state(models[i], tuning[i]))
        if len(set(digests)) > 1:
            raise SeedError(
                f"stage {stage.name}: rung {i} differs across processes (digests by rank: {', '.join(digests)}); "
                "the gradient reduction is broken, please report this."
            )


def _train(cfg: DetectTrainConfig, reporter: Reporter, collective: Any) -> dict[str, Any]:
    import torch

    from seedcli import distributed

    started = time.monotonic()
    if not collective.is_main:
        reporter = distributed.RankReporter(reporter, collective.rank)
    out = Path(cfg.out) if cfg.out is not None else default_out()
    items = load_items(data_files(cfg.data, "train", cfg.train_files, "--train-files"))
    dev_files = data_files(cfg.data, "dev", cfg.dev_files, "--dev-files")
    dev = load_items(dev_files) if dev_files else []
    stages = plan(cfg)
    used = any(stage.transfer for stage in stages)
    if uses_transfer(cfg) and not used:
        raise ConfigError(
            "--transfer: no stage of this run uses a transfer set (it feeds the refinement and --offline "
            "distillation stages of a ladder of two or more rungs)."
        )
    transfer = load_items(transfer_files(cfg), labelled=False, taken={item.id for item in items}) if used else []
    torch.manual_seed(cfg.seed)
    ladder = _load_ladder(cfg, collective)
    _check_shared_inputs(ladder)
    tuning = [tuning_of(cfg, loaded) for loaded in ladder]
    for loaded, mode in zip(ladder, tuning):
        if mode == "lora":
            _check_lora_targets(cfg, loaded)
    resolved = {
        "transfer_items": len(transfer),
        "tuning": tuning,
        "lora_target_regex": [
            loaded.family.lora_target_regex(cfg.lora_targets or None) if mode == "lora" else None
            for loaded, mode in zip(ladder, tuning)
        ],
    }
    state = _open_or_create(cfg, out, stages, resolved) if collective.is_main else None
    if collective.world > 1:
        collective.any_flag(False)  # barrier: the run directory exists (and was checked) before the others read it
    if state is None:
        state = _read_state(out) if cfg.resume else {"completed": [], "weights": {}}
    models = [
        _rung_model(cfg, i, loaded, tuning[i], state["weights"].get(str(i)), out) for i, loaded in enumerate(ladder)
    ]
    modes = ", ".join(f"{name} {mode}" for name, mode in zip(cfg.models, tuning))
    where = f", {collective.world} processes" if collective.world > 1 else ""
    unlabelled = f", {len(transfer)} unlabelled (transfer set)" if transfer else ""
    reporter.info(
        f"detect train: {len(items)} items{unlabelled}, {len(dev)} dev items, stages "
        f"{', '.join(s.name for s in stages)} ({modes}{where}) -> {out}"
    )
    dev_scores: dict[str, Any] = {k: v for k, v in state.get("dev", {}).items()}
    for stage in stages:
        if stage.name in state["completed"]:
            continue
        seen = items + transfer if stage.transfer else items
        trained = run_stage(cfg, stage, ladder, models, seen, out, reporter, tuning=tuning, collective=collective)
        if collective.world > 1:
            _check_replicas(collective, stage, models, tuning, trained)
        for i in trained:
            relative = f"{STAGES}/{stage.name}/rung-{i}"
            if collective.is_main:
                _save_model(cfg, ladder[i], models[i], tuning[i], out / relative)
            state["weights"][str(i)] = relative
        state["completed"].append(stage.name)
        if dev:
            dev_scores[stage.name] = _dev_scores(stage, ladder, models, dev, collective)
            reporter.log({"stage": stage.name, **_headline(dev_scores[stage.name])})
        state["dev"] = dev_scores
        if collective.is_main:
            atomic.write_json(out / STATE, state)
            shutil.rmtree(out / rundir.CHECKPOINTS / stage.name, ignore_errors=True)
        if collective.world > 1:
            collective.any_flag(False)  # barrier: the stage is on disk before any process moves on
    final = stages[-1]
    summary = {
        "command": COMMAND,
        "detector": f"{STAGES}/{final.name}/rung-{final.student}",
        "detector_model": cfg.models[final.student],
        "stages": {s.name: f"{STAGES}/{s.name}/rung-{s.student}" for s in stages},
        "dev": dev_scores,
        # Decision thresholds calibrated on the dev items per stage (the final student's under "detector").
        "thresholds": {name: scores["thresholds"] for name, scores in dev_scores.items()},
        "tuning": dict(zip(cfg.models, tuning)),
        "processes": collective.world,
        "train_items": len(items),
        "transfer_items": len(transfer),
        "seconds": round(time.monotonic() - started, 1),
    }
    if collective.is_main:
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
    *,
    tuning: list[str] | None = None,
    collective: Any = None,
) -> list[int]:
    """Train one stage on `items` (unlabelled ones add only KL terms); returns the rung indices whose weights changed.

    Each process computes the loss on its contiguous share of every global batch, weighted by the
    share's size, so the summed gradients are those of the whole batch's mean loss.
    """
    import torch

    from seedcli.core.checkpoint import _flatten_optimizer, _unflatten_optimizer
    from seedcli.core.collective import LocalCollective
    from seedcli.core.distill import warmup_cosine
    from seedcli.detect.scoring import Images
    from seedcli.distributed import shard

    tuning = tuning or ["full"] * len(models)
    collective = collective or LocalCollective(ladder[stage.student].device)
    trained = [stage.student] + ([stage.teachers[0][0]] if stage.online and stage.teachers else [])
    for i, model in enumerate(models):
        _set_trainable(model, i in trained, tuning[i])
        if cfg.gradient_checkpointing and i in trained:
            _checkpoint_activations(model)
    params = {i: [p for p in models[i].parameters() if p.requires_grad] for i in trained}
    steps_per_epoch = math.ceil(sum(max(1, len(item.options)) for item in items) / cfg.batch_size)
    total = steps_per_epoch * stage.epochs
    optimizers = {i: torch.optim.AdamW(params[i], lr=cfg.lr, weight_decay=cfg.weight_decay) for i in trained}
    schedule = warmup_cosine(total, int(cfg.warmup_ratio * total), 0.1)
    schedulers = {i: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for i, opt in optimizers.items()}
    checkpoint = out / rundir.CHECKPOINTS / stage.name
    start_epoch = (
        _restore(checkpoint, models, tuning, optimizers, schedulers, _unflatten_optimizer)
        if (checkpoint / STATE).is_file()
        else 0
    )
    augment = Augment() if cfg.augment else NO_AUGMENT
    images = Images([item.image for item in items])
    names = ["ce", *(f"kl{j}" for j in range(len(stage.teachers)))] + (
        ["teacher_ce", "mutual"] if len(trained) > 1 else []
    )
    with reporter.task(
        f"{stage.name}: rung {stage.student} ({cfg.models[stage.student]})", total=total, unit="step"
    ) as task:
        task.advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, stage.epochs):
            # Each epoch's augmentation and order depend only on (seed, stage, epoch): resume reproduces them.
            rng = random.Random(f"{cfg.seed}/{stage.name}/{epoch}")
            questions = training_questions(items, rng, augment)
            rng.shuffle(questions)
            sums = torch.zeros(1 + len(names), dtype=torch.float64)  # loss and parts, summed over questions
            for step, start in enumerate(range(0, len(questions), cfg.batch_size)):
                batch = questions[start : start + cfg.batch_size]
                local = shard(batch, collective.rank, collective.world)
                # Dropout (LoRA) draws from the global generator: seeded by position, resume draws the same.
                torch.manual_seed(torch_seed("dropout", cfg.seed, stage.name, epoch, step, collective.rank))
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                share = len(local) / len(batch)  # this process's part of the global batch
                values = torch.zeros(1 + len(names), dtype=torch.float64)  # loss, then the parts by `names`
                finite = True
                if local:
                    loss, parts = _batch_loss(cfg, stage, ladder, models, trained, local, images)
                    finite = bool(torch.isfinite(loss))
                    if finite:
                        (loss * share).backward()
                    values = share * torch.tensor(
                        [float(loss.detach()), *(parts.get(n, 0.0) for n in names)], dtype=torch.float64
                    )
                if collective.any_flag(not finite):
                    raise ModelError(f"stage {stage.name}: non-finite loss at epoch {epoch + 1}; lower --lr.")
                if collective.world > 1:
                    collective.reduce_gradients([p for i in trained for p in params[i]])
                    values = collective.gather(values).view(collective.world, -1).sum(0)
                for i, optimizer in optimizers.items():
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params[i], cfg.max_grad_norm)
                    optimizer.step()
                    schedulers[i].step()
                sums += values * len(batch)  # `values` are the global batch's means
                seen = min(start + cfg.batch_size, len(questions))
                task.advance(1, epoch=epoch + 1, loss=float(sums[0]) / seen)
            if collective.is_main:
                means = (sums / max(1, len(questions))).tolist()  # the epoch's mean per question
                line = {"stage": stage.name, "epoch": epoch + 1, "loss": means[0]}
                atomic.append_jsonl(out / rundir.METRICS, {**line, **dict(zip(names, means[1:]))})
                _save_checkpoint(checkpoint, epoch + 1, models, tuning, optimizers, schedulers, _flatten_optimizer)
            if collective.world > 1:
                collective.any_flag(False)  # barrier: the checkpoint is complete before any process goes on
    for i, model in enumerate(models):
        _set_trainable(model, False, tuning[i])
    return trained


def _batch_loss(
    cfg: DetectTrainConfig,
    stage: Stage,
    ladder: list[Any],
    models: list[Any],
    trained: list[int],
    batch: list[Any],
    images: Any,
) -> tuple[Any, dict[str, float]]:
    """The stage's loss on `batch` (a mean over its questions) and its parts; an online teacher's terms included."""
    import torch

    from seedcli.detect import losses
    from seedcli.detect.scoring import answer_logits, encode_batch

    loaded = ladder[stage.student]
    inputs = encode_batch(loaded, batch, images)
    labels = [-1 if q.target is None else q.target for q in batch]  # -1: a transfer-set question
    target = torch.tensor(labels, device=loaded.device)  # [B]
    s_logits = answer_logits(loaded, models[stage.student], inputs, batch)  # [B, 2]
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
        teacher_ce = losses.label_ce(t_logits, target)
        loss = loss + teacher_ce + cfg.mutual_weight * mutual
        parts["teacher_ce"], parts["mutual"] = float(teacher_ce.detach()), float(mutual.detach())
    return loss, parts


def _save_checkpoint(
    directory: Path,
    epoch: int,
    models: list[Any],
    tuning: list[str],
    optimizers: dict[int, Any],
    schedulers: dict[int, Any],
    flatten: Any,
) -> None:
    from safetensors.torch import save_file

    with atomic.staged_dir(directory, overwrite=True) as tmp:
        meta = {}
        for i, optimizer in optimizers.items():
            save_file(_trained_state(models[i], tuning[i]), str(tmp / f"rung-{i}.safetensors"))
            tensors, opt_meta = flatten(optimizer.state_dict())
            save_file(tensors, str(tmp / f"optimizer-{i}.safetensors"))
            meta[str(i)] = {"optimizer": opt_meta, "scheduler": schedulers[i].state_dict()}
        atomic.write_json(tmp / STATE, {"epoch": epoch, "rungs": meta})


def _restore(
    directory: Path,
    models: list[Any],
    tuning: list[str],
    optimizers: dict[int, Any],
    schedulers: dict[int, Any],
    unflatten: Any,
) -> int:
    from safetensors.torch import load_file

    state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    for key, meta in state["rungs"].items():
        i = int(key)
        weights = load_file(str(directory / f"rung-{i}.safetensors"))
        if tuning[i] == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(models[i], weights)
            if result.unexpected_keys:
                raise DataError(f"{directory}: the checkpoint of rung {i} does not fit its adapter; restart the run.")
        else:
            models[i].load_state_dict(weights)
        optimizers[i].load_state_dict(
            unflatten(load_file(str(directory / f"optimizer-{i}.safetensors")), meta["optimizer"])
        )
        schedulers[i].load_state_dict(meta["scheduler"])
    return int(state["epoch"])
