"""`seedcli.core.distill`: the SEED purify-and-distill engine (the method is described in docs/method.md).

Per optimizer step (a window of batch_size x grad_accum samples on each process):
1. Teacher: the frozen base (adapter disabled, no_grad) on the clean and the noised image, logits at
   supervised positions only (one joint forward of 2B, or two forwards).
2. Identify: confidence per sample (or token) -> the history -> beta from its quantiles. The history
   is updated once per window with the window's confidences in sample order, so the result does not
   depend on how the window is split into micro-batches or processes.
3. Purge: purified = (1 + beta) z(v) - beta z(v').
4. Student (adapter enabled): w * T^2 KL(s || softmax(purified / T)) + (1 - w) * CE, both normalised
   by the supervised tokens of the whole window; backward per micro-batch; clip; AdamW step.

Steps 1-3 are `purified_targets`, step 4 is `student_backward`; the loop in `_train_round` holds
everything else (update policy, metrics, checkpoints, signals). Micro-batches arrive encoded from
the data pipeline (seedcli.core.feed), the run directory's life cycle lives in seedcli.rundir, and
cross-process operations sit behind the `Collective` protocol (seedcli.core.collective).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from seedcli import atomic, rundir, trackers
from seedcli.config.base import to_dict
from seedcli.config.distill import DistillConfig
from seedcli.core import checkpoint, feed, losses, noise, purify, teacher_cache
from seedcli.core.collective import Collective, LocalCollective
from seedcli.errors import ConfigError, DataError, Interrupted, SeedError
from seedcli.reporting import Reporter, Task
from seedcli.seeds import torch_seed

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from seedcli.data.datadir import DataDir
    from seedcli.models.chat import Encoded
    from seedcli.models.families import Family
    from seedcli.models.forward import Supervised
    from seedcli.models.loading import Loaded

__all__ = [
    "Interrupted",
    "Step",
    "TrainState",
    "distill",
    "noise_alpha",
    "purified_targets",
    "student_backward",
    "warmup_cosine",
]

PIXELS = "pixel_values"  # the vision input that SEED noises


def noise_alpha(cfg: DistillConfig) -> float:
    """The signal weight a of v' = sqrt(a) v + sqrt(1-a) eps (from --noise-step when given)."""
    return noise.vcd_alpha_bar(cfg.noise_step) if cfg.noise_step is not None else cfg.noise_alpha


def warmup_cosine(total: int, warmup: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR factor per step: linear warmup over `warmup` steps, then cosine from 1 down to `floor`."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


# --- what a round works with, and what it carries from step to step -----------------------------------------


@dataclass(frozen=True)
class Round:
    """Everything one round of training reads and never changes."""

    cfg: DistillConfig
    loaded: Loaded
    data: DataDir
    rows: list[dict[str, Any]]
    out: Path
    index: int  # 1-based round number
    total_steps: int
    steps_per_epoch: int
    alpha: float
    collective: Collective
    reporter: Reporter
    tracker: trackers.Trackers | None = None  # experiment trackers fed with every metrics line

    @property
    def per_process(self) -> int:
        """Samples per optimizer step on this process."""
        return self.cfg.batch_size * self.cfg.grad_accum

    @property
    def window(self) -> int:
        """Samples per optimizer step over all processes (the global batch)."""
        return self.per_process * self.collective.world

    @property
    def plan(self) -> feed.Plan:
        """Which records each step gives this process."""
        world, rank = self.collective.world, self.collective.rank
        per_epoch, size = self.steps_per_epoch, self.cfg.batch_size
        return feed.Plan(self.cfg.seed, self.index, len(self.rows), per_epoch, self.per_process, world, rank, size)


@dataclass
class Window:
    """Sums over the optimizer steps since the last metrics line (`steps` counts applied updates)."""

    steps: int = 0
    loss: float = 0.0
    kl: float = 0.0
    ce: float = 0.0
    beta: float = 0.0
    conf: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0  # of `seconds`, spent waiting for the data pipeline

    def mean(self, name: str) -> float:
        """The per-update mean of a summed quantity."""
        return float(getattr(self, name)) / max(self.steps, 1)


@dataclass(frozen=True)
class Step:
    """What one optimizer step reports to the metrics: loss terms over all processes and what it cost."""

    loss: float
    kl: float
    ce: float
    grad_norm: float | None  # None: the update was skipped (non-finite)
    beta: float  # mean over the window (SEED)
    conf: float
    tokens: int
    samples: int
    seconds: float
    data_wait: float


@dataclass
class TrainState:
    """What the loop carries from step to step besides weights; checkpoints save and restore it."""

    skipped_steps: int = 0
    skipped_samples: int = 0
    bad_in_a_row: int = 0
    kl_sum: float = 0.0
    kl_steps: int = 0
    window: Window = field(default_factory=Window)

    def record(self, step: Step, seed: bool) -> None:
        """Add a step to the metrics window: its tokens, samples and time always, its values if it updated."""
        w = self.window
        w.tokens, w.samples = w.tokens + step.tokens, w.samples + step.samples
        w.seconds, w.data_wait = w.seconds + step.seconds, w.data_wait + step.data_wait
        if step.grad_norm is None:
            return
        w.steps += 1
        w.loss, w.kl, w.ce = w.loss + step.loss, w.kl + step.kl, w.ce + step.ce
        w.grad_norm, w.beta, w.conf = w.grad_norm + step.grad_norm, w.beta + step.beta, w.conf + step.conf
        if seed:
            self.kl_sum += step.kl
            self.kl_steps += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the `counters` entry of a checkpoint's state.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainState:
        """Rebuild from `to_dict` output (checkpoints of older versions hold no window: it starts empty)."""
        window = Window(**doc.get("window", {}))
        return cls(**{k: v for k, v in doc.items() if k != "window"}, window=window)


@dataclass(frozen=True)
class _Micro:
    """One encoded micro-batch (on the CPU when encoded, then moved to the device by `to`)."""

    inputs: dict[str, torch.Tensor]
    noisy_pixels: torch.Tensor | None
    sup: Supervised
    samples: int
    indices: tuple[int, ...] = ()  # positions in the training records of the encoded samples, in batch order
    record_ids: tuple[str, ...] = ()

    def to(self, device: torch.device, dtype: torch.dtype) -> _Micro:
        """On `device`, pixels in the model's `dtype`."""
        inputs = {k: v.to(device, dtype) if k == PIXELS else v.to(device) for k, v in self.inputs.items()}
        noisy = self.noisy_pixels.to(device, dtype) if self.noisy_pixels is not None else None
        sup = replace(self.sup, **{k: getattr(self.sup, k).to(device) for k in ("mask", "targets", "sample_index")})
        return replace(self, inputs=inputs, noisy_pixels=noisy, sup=sup)

    def pin_memory(self) -> _Micro:
        """Page-locked copy (asynchronous copies to a GPU)."""
        inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        noisy = self.noisy_pixels.pin_memory() if self.noisy_pixels is not None else None
        return replace(self, inputs=inputs, noisy_pixels=noisy)


@dataclass
class _Learner:
    """What a round trains: the adapter-wrapped model with its optimizer and schedule."""

    model: PeftModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


# --- data: records, windows, micro-batches -------------------------------------------------------------------


def _records(cfg: DistillConfig) -> tuple[DataDir, list[dict[str, Any]]]:
    from seedcli.data.datadir import open_data_dir, validate_record

    data = open_data_dir(Path(cfg.data))
    rows = [validate_record(row, where=f"{cfg.data}/train").to_row() for row in data.train()]
    if cfg.max_samples is not None and cfg.max_samples < len(rows):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        rows = [rows[i] for i in sorted(order[: cfg.max_samples])]
    return data, rows


def _noise_generator(cfg: DistillConfig, round_index: int, step: int, sample: int) -> torch.Generator:
    # Per-sample seeds: the noise a sample gets does not depend on batch size or process count.
    return torch.Generator().manual_seed(torch_seed("noise", cfg.seed, round_index, step, sample))


def _step_seed(cfg: DistillConfig, round_index: int, step: int, rank: int) -> int:
    # Dropout draws from the global generator. Seeding it per (step, rank) makes it a function of the
    # position, so no per-rank generator state needs a checkpoint and resuming is deterministic.
    return torch_seed("dropout", cfg.seed, round_index, step, rank)


def _encode_record(loaded: Loaded, data: DataDir, row: dict[str, Any], max_length: int) -> Encoded:
    """One record as model inputs; an image that cannot be used raises DataError."""
    from PIL import Image

    from seedcli.models.chat import encode

    where = f"record {row['id']}"
    try:
        with Image.open(data.resolve_image("train", row["image"])) as handle:
            image = handle.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image too large to decode safely ({exc})") from None
    try:
        return encode(loaded.processor, loaded.family, row["messages"], image, max_length=max_length, where=where)
    except ValueError as exc:  # the processor rejects the image (e.g. Qwen2-VL's aspect-ratio limit)
        raise DataError(f"{where}: the processor rejected the image ({exc})") from None


def _encode_micro(
    loaded: Loaded,
    data: DataDir,
    rows: list[dict[str, Any]],
    indices: list[int],
    cfg: DistillConfig,
    round_index: int,
    step: int,
    alpha: float,
    reporter: Reporter,
) -> _Micro | None:
    """Encode records `indices` (with their noised pixels for SEED); unusable ones are skipped with a warning."""
    from seedcli.models.chat import collate
    from seedcli.models.forward import model_inputs, supervised

    clean, noisy, kept = [], [], []
    for index in indices:
        try:
            enc = _encode_record(loaded, data, rows[index], cfg.max_length)
        except (OSError, DataError) as exc:
            reporter.warn(f"skipping record {rows[index]['id']}: {exc}")
            continue
        clean.append(enc)
        kept.append(index)
        if cfg.method == "seed":
            noised = noise.add_diffusion_noise(
                enc.vision[PIXELS], alpha, _noise_generator(cfg, round_index, step, index)
            )
            noisy.append(replace(enc, vision={**enc.vision, PIXELS: noised}))
    if not clean:
        return None
    tokenizer = loaded.processor.tokenizer
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    batch = collate(clean, pad_id=pad_id)
    sup = supervised(batch["labels"])
    inputs = model_inputs(batch)
    noisy_pixels = collate(noisy, pad_id=pad_id)[PIXELS] if noisy else None
    ids = tuple(str(rows[i]["id"]) for i in kept)
    return _Micro(
        inputs=inputs, noisy_pixels=noisy_pixels, sup=sup, samples=len(clean), indices=tuple(kept), record_ids=ids
    )


def _encode(ctx: Round, indices: list[int], step: int) -> _Micro | None:
    """Encode records `indices` in this process, onto the device."""
    micro = _encode_micro(ctx.loaded, ctx.data, ctx.rows, indices, ctx.cfg, ctx.index, step, ctx.alpha, ctx.reporter)
    return micro.to(ctx.loaded.device, ctx.loaded.dtype) if micro is not None else None


def _stream(ctx: Round, start: int) -> Iterator[list[feed.Fed]]:
    """The micro-batches of every step from `start` on, encoded ahead by --num-workers processes."""
    light = replace(ctx.loaded, model=None)  # workers need the processor, never the model
    inputs = (light, ctx.data, ctx.rows, ctx.cfg, ctx.alpha)
    dataset = feed.MicroBatches(_encode_micro, ctx.plan, start, ctx.total_steps, inputs)
    workers = ctx.cfg.num_workers if ctx.cfg.num_workers is not None else feed.default_workers(ctx.collective.world)
    return feed.steps(dataset, workers=workers, pin=ctx.loaded.device.type == "cuda")


def _take_window(ctx: Round, step: int, fed: list[feed.Fed], state: TrainState) -> tuple[list[_Micro], int]:
    """The step's micro-batches on the device and the supervised tokens of the whole window."""
    cfg = ctx.cfg
    for item in fed:
        for message in item.warnings:
            ctx.reporter.warn(message)
        if item.error is not None:
            raise item.error
    assert all(item.step == step for item in fed), "the data pipeline is out of step"
    micros = [item.micro.to(ctx.loaded.device, ctx.loaded.dtype) for item in fed if item.micro is not None]
    # FSDP all-gathers inside every forward: a rank with fewer forwards would hang the others.
    sharded = cfg.strategy == "fsdp" and ctx.collective.backend is not None
    if sharded and ctx.collective.any_flag(len(micros) < cfg.grad_accum):
        raise DataError(
            f"step {step + 1}: a whole micro-batch could not be encoded on some process (see the warnings); "
            "--strategy fsdp needs the same forwards on every process: fix or remove those records."
        )
    state.skipped_samples += ctx.collective.sum_int(ctx.per_process - sum(m.samples for m in micros))
    num_tokens = ctx.collective.sum_int(sum(m.sup.count for m in micros))
    if num_tokens == 0:
        raise DataError(
            f"step {step + 1}: no record of the whole batch could be used (see the warnings); check the data."
        )
    return micros, num_tokens


def _probe(ctx: Round) -> _Micro:
    """The first micro-batch of the round (for the sanity checks); an unusable one stops the start."""
    probe = _encode(ctx, ctx.plan.micro(0, 0), 0)
    if ctx.collective.any_flag(probe is None):
        raise DataError("the first batch could not be encoded (see the warnings above).")
    assert probe is not None
    return probe


# --- SEED: teacher, identify, purge --------------------------------------------------------------------------


def _teacher(model: PeftModel, micro: _Micro, joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and noisy teacher logits [N, V] from the frozen base (adapter disabled)."""
    from seedcli.models.forward import doubled, supervised_logits

    with torch.no_grad(), model.disable_adapter():
        if joint:
            mask = torch.cat([micro.sup.mask, micro.sup.mask])
            both = supervised_logits(model, doubled(micro.inputs, micro.noisy_pixels), mask)
            return both[: micro.sup.count], both[micro.sup.count :]
        clean = supervised_logits(model, micro.inputs, micro.sup.mask)
        noisy = supervised_logits(model, {**micro.inputs, PIXELS: micro.noisy_pixels}, micro.sup.mask)
        return clean, noisy


def _teacher_targets(
    model: PeftModel, micro: _Micro, joint: bool, cache: teacher_cache.TeacherCache | None, round_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits [N, V]: from the cache when every sample of the micro-batch is in it, else computed and stored."""
    from seedcli.models.forward import supervised_logits

    if cache is None:
        return _teacher(model, micro, joint)
    rows = torch.bincount(micro.sup.sample_index, minlength=micro.samples).tolist()
    hit = cache.load_micro(round_index, micro.indices, micro.record_ids, rows, micro.sup.mask.device)
    if hit is None:
        clean, noisy = _teacher(model, micro, joint)
        cache.store_micro(round_index, micro.indices, micro.record_ids, micro.sup.sample_index, clean, noisy)
        return clean, noisy
    clean, cached_noisy = hit
    if cached_noisy is not None:
        return clean, cached_noisy
    # Mode "clean": the noisy pass still runs, on this step's fresh noise.
    with torch.no_grad(), model.disable_adapter():
        return clean, supervised_logits(model, {**micro.inputs, PIXELS: micro.noisy_pixels}, micro.sup.mask)


def _confidence(cfg: DistillConfig, clean: torch.Tensor, micro: _Micro) -> torch.Tensor:
    """Per-sample [B] or per-token [N] confidence; higher = more confident."""
    if cfg.identify == "sample":
        return purify.sample_confidence(clean, micro.sup.sample_index, micro.samples)
    return purify.token_confidence(clean, cfg.token_confidence)  # "entropy" is already -H


def _betas(cfg: DistillConfig, history: purify.ConfidenceHistory, window_conf: torch.Tensor) -> torch.Tensor:
    """Beta for every confidence of the window, after adding the window to the history."""
    history.update(window_conf)
    if cfg.beta_mode == "quantile":
        return purify.beta_from_quantiles(window_conf, history.quantiles(cfg.beta_quantiles), cfg.beta_values)
    lo, hi = history.quantiles((0.0, 1.0)).tolist()
    return purify.continuous_beta(window_conf, lo, hi, min(cfg.beta_values), max(cfg.beta_values))


def purified_targets(
    ctx: Round,
    model: PeftModel,
    micros: list[_Micro],
    history: purify.ConfidenceHistory,
    cache: teacher_cache.TeacherCache | None,
) -> tuple[list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
    """SEED's teacher side for a window: (purified logits per micro-batch, window confidences, window betas).

    Teacher passes on clean and noised images, confidences of the whole window (all processes, in
    sample order) into the history, beta per sample (or token), then purge. SFT has no targets.
    """
    cfg = ctx.cfg
    if cfg.method != "seed":
        return [None] * len(micros), torch.zeros(0), torch.zeros(0)
    joint = cfg.teacher_batching == "joint"
    teacher = [_teacher_targets(model, m, joint, cache, ctx.index) for m in micros]
    confs = [_confidence(cfg, clean, m) for (clean, _), m in zip(teacher, micros)]
    local = torch.cat(confs).float().cpu() if confs else torch.zeros(0)
    parts = ctx.collective.gather_parts(local)
    window_conf = torch.cat(parts)
    window_betas = _betas(cfg, history, window_conf)
    cursor = sum(p.numel() for p in parts[: ctx.collective.rank])  # where this process's samples start
    targets: list[torch.Tensor | None] = []
    for (clean, noisy), m, conf in zip(teacher, micros, confs):
        beta = window_betas[cursor : cursor + conf.numel()].to(clean.device)
        cursor += conf.numel()
        token_beta = beta[m.sup.sample_index] if cfg.identify == "sample" else beta
        targets.append(
            purify.purify(clean, noisy, token_beta, cfg.purify_space, cfg.plausibility_gamma, cfg.plausibility_penalty)
        )
    return targets, window_conf, window_betas


# --- the student, the update, the metrics line ----------------------------------------------------------------


def student_backward(
    ctx: Round, model: PeftModel, micros: list[_Micro], targets: list[torch.Tensor | None], num_tokens: int
) -> tuple[float, float, float]:
    """Student passes and backward per micro-batch; returns the window's (loss, kl, ce) over all processes.

    Every term is normalised by the supervised tokens of the whole window (`num_tokens`), so the
    gradient does not depend on how the window is split into micro-batches or processes.
    """
    from seedcli.models.forward import supervised_logits

    cfg = ctx.cfg
    sums = torch.zeros(3, dtype=torch.float64)  # loss, kl, ce
    for m, target in zip(micros, targets):
        student = supervised_logits(model, m.inputs, m.sup.mask)  # [N, V]
        if target is None:
            ce = losses.cross_entropy_mean(student, m.sup.targets, num_tokens=num_tokens, chunk=cfg.loss_chunk)
            total, kl = ce, ce.new_zeros(())
        else:
            parts = losses.seed_loss(
                student,
                target,
                m.sup.targets,
                temperature=cfg.temperature,
                distill_weight=cfg.distill_weight,
                kind=cfg.divergence,
                num_tokens=num_tokens,
                jsd_beta=cfg.jsd_beta,
                chunk=cfg.loss_chunk,
            )
            total, kl, ce = parts.total, parts.kl, parts.ce
        total.backward()
        sums += torch.tensor([float(total.detach()), float(kl.detach()), float(ce.detach())], dtype=torch.float64)
    # Each process holds its share of the window's sums (already over the global token count).
    loss, kl_sum, ce_sum = (float(v) for v in ctx.collective.gather(sums).view(-1, 3).sum(0))
    return loss, kl_sum, ce_sum


def apply_update(ctx: Round, learner: _Learner, state: TrainState, step: int, loss: float) -> float | None:
    """Sum and clip gradients, then step; a non-finite loss or gradient on any process skips the update.

    Returns the gradient norm of an applied update, or None for a skipped one.
    """
    ctx.collective.reduce_gradients(learner.params)
    max_norm = ctx.cfg.max_grad_norm if ctx.cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(learner.params, max_norm)
    finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
    if ctx.collective.any_flag(not finite):
        learner.optimizer.zero_grad(set_to_none=True)
        state.skipped_steps += 1
        state.bad_in_a_row += 1
        ctx.reporter.warn(
            f"step {step + 1}: non-finite loss or gradient; update skipped ({state.bad_in_a_row} in a row)"
        )
        return None
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    state.bad_in_a_row = 0
    return float(grad_norm)


def _advance_schedule(learner: _Learner) -> None:
    with warnings.catch_warnings():
        # A skipped update still advances the schedule, so the LR stays aligned with the step.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        learner.scheduler.step()


def metrics_line(ctx: Round, state: TrainState, done: int, lr: float) -> dict[str, Any]:
    """One line of metrics.jsonl: means over the updates since the previous line."""
    seed = ctx.cfg.method == "seed"
    w = state.window
    return {
        "round": ctx.index,
        "step": done,
        "epoch": round(done / ctx.steps_per_epoch, 4),
        "loss": w.mean("loss"),
        "kl": w.mean("kl") if seed else None,
        "ce": w.mean("ce"),
        "beta": w.mean("beta") if seed else None,
        "confidence": w.mean("conf") if seed else None,
        "lr": lr,
        "grad_norm": w.mean("grad_norm"),
        "tokens": w.tokens,
        "samples_per_s": w.samples / max(w.seconds, 1e-9),
        "data_wait_share": w.data_wait / max(w.seconds, 1e-9),
        "skipped_steps": state.skipped_steps,
        "skipped_samples": state.skipped_samples,
    }


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0


# --- one round ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, bool]]:
    """Turn SIGINT/SIGTERM into a flag checked after each step (so a checkpoint can be saved)."""
    flag = {"stop": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing, through the API the installed transformers offers."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _wrap(model: PreTrainedModel, cfg: DistillConfig, family: Family) -> PeftModel:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=family.lora_target_regex(cfg.lora_targets),
        bias="none",
    )
    torch.manual_seed(cfg.seed)
    wrapped = get_peft_model(model, config)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(wrapped.get_base_model())
    return wrapped


def _learner(ctx: Round, base: PreTrainedModel) -> _Learner:
    model = _wrap(base, ctx.cfg, ctx.loaded.family)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ctx.cfg.lr, weight_decay=ctx.cfg.weight_decay)
    schedule = warmup_cosine(ctx.total_steps, int(ctx.cfg.warmup_ratio * ctx.total_steps))
    return _Learner(model, params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 5e-2


def _sanity_checks(
    cfg: DistillConfig, model: PeftModel, base_logits: torch.Tensor, micro: _Micro, alpha: float
) -> dict[str, float]:
    """Fail in the first minute: supervised tokens, trainable set, teacher = base, SEED active."""
    from seedcli.models.forward import supervised_logits

    if micro.sup.count == 0:
        raise DataError("the first batch has no supervised tokens; check the data's assistant turns.")
    wrong = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if wrong:
        raise SeedError(f"non-adapter parameters require grad ({wrong[:3]}...); only the adapter may train.")
    if not any(p.requires_grad for p in model.parameters()):
        raise SeedError("no adapter parameter requires grad; the LoRA targets matched nothing.")
    with torch.no_grad(), model.disable_adapter():
        teacher = supervised_logits(model, micro.inputs, micro.sup.mask)
    gap = (teacher.float() - base_logits.float()).abs().max().item()
    if gap > _tolerance(base_logits.dtype) * max(1.0, base_logits.float().abs().max().item()):
        raise SeedError(
            f"the teacher (adapter disabled) differs from the base model by {gap:.3g}; "
            "the adapter is not cleanly separable."
        )
    checks = {"teacher_base_gap": gap}
    if cfg.method == "seed":
        clean, noisy = _teacher(model, micro, cfg.teacher_batching == "joint")
        purified = purify.purify(
            clean, noisy, max(cfg.beta_values), cfg.purify_space, cfg.plausibility_gamma, cfg.plausibility_penalty
        )
        t = cfg.temperature
        shift = (torch.softmax(purified / t, -1) - torch.softmax(clean.float() / t, -1)).abs().max().item()
        checks["purification_shift"] = shift
        if shift < 1e-6:
            raise ConfigError(
                f"--noise-alpha {alpha:.3g}: the noised image gives the same teacher distribution as the clean one, "
                "so SEED would be inactive; use more noise."
            )
    return checks


def _start_round(
    ctx: Round, base: PreTrainedModel, resume_from: Path | None
) -> tuple[_Learner, TrainState, purify.ConfidenceHistory, int, dict[str, float]]:
    """Adapter, optimizer and schedule on the round's base, restored from `resume_from`, then checked."""
    from seedcli.models.forward import supervised_logits

    probe = _probe(ctx)
    with torch.no_grad():
        base_logits = supervised_logits(base, probe.inputs, probe.sup.mask)
    learner = _learner(ctx, base)
    state, history, start = TrainState(), purify.ConfidenceHistory(ctx.cfg.history_size), 0
    if resume_from is not None:
        saved = checkpoint.load(
            resume_from, model=learner.model, optimizer=learner.optimizer, scheduler=learner.scheduler
        )
        start = int(saved["position"]["step"])
        history = purify.ConfidenceHistory.from_state(saved["history"], ctx.cfg.history_size)
        state = TrainState.from_dict(saved["counters"])
        ctx.reporter.info(f"resumed round {ctx.index} from {resume_from.name} (step {start}/{ctx.total_steps})")
    checks = _sanity_checks(ctx.cfg, learner.model, base_logits, probe, ctx.alpha)
    if ctx.collective.is_main and start == 0:
        ctx.reporter.info("sanity checks passed: " + ", ".join(f"{k}={v:.3g}" for k, v in checks.items()))
    return learner, state, history, start, checks


def _save(ctx: Round, learner: _Learner, state: TrainState, history: purify.ConfidenceHistory, step: int) -> None:
    if ctx.collective.is_main:
        root = ctx.out / rundir.CHECKPOINTS
        checkpoint.save(
            root / checkpoint.name(ctx.index, step, ctx.cfg.rounds),
            model=learner.model,
            optimizer=learner.optimizer,
            scheduler=learner.scheduler,
            position={"round": ctx.index, "step": step},
            history=history.state(),
            counters=state.to_dict(),
        )
        checkpoint.prune(root, ctx.cfg.keep_checkpoints)
    ctx.collective.any_flag(False)  # barrier: no rank stops or moves on before the checkpoint is complete


def _log(
    ctx: Round, state: TrainState, task: Task, done: int, lr: float, values: tuple[float, float, float]
) -> dict[str, Any] | None:
    """Progress every step; a metrics line every --log-every steps and at the end (then the window restarts)."""
    loss, kl, ce = values
    fields: dict[str, Any] = {"loss": loss, "lr": lr}
    if ctx.cfg.method == "seed":
        fields.update({"kl": kl, "ce": ce, "beta": state.window.mean("beta"), "conf": state.window.mean("conf")})
    task.advance(1, **fields, skipped=state.skipped_steps, sps=state.window.samples / max(state.window.seconds, 1e-9))
    if done % ctx.cfg.log_every and done != ctx.total_steps:
        return None
    line = metrics_line(ctx, state, done, lr)
    if ctx.collective.is_main:
        atomic.append_jsonl(ctx.out / rundir.METRICS, line)
        trackers.log_metrics(ctx.tracker, ctx.out, line)
        ctx.reporter.log(line)
    state.window = Window()
    return line


def _train_round(ctx: Round, base: PreTrainedModel, resume_from: Path | None) -> tuple[PeftModel, dict[str, Any]]:
    """One round of training: the loop, top to bottom."""
    cfg, collective = ctx.cfg, ctx.collective
    learner, state, history, start, checks = _start_round(ctx, base, resume_from)
    cache = None
    if cfg.method == "seed" and cfg.teacher_cache != "off":
        cache = teacher_cache.TeacherCache(ctx.out / rundir.TEACHER_CACHE, cfg.teacher_cache_k, cfg.teacher_cache)
    last: dict[str, Any] = {}
    title = f"round {ctx.index}/{cfg.rounds}" if cfg.rounds > 1 else cfg.method
    task_cm = ctx.reporter.task(title, total=ctx.total_steps, unit="step")
    with _stop_signals() as stop, task_cm as task, contextlib.closing(_stream(ctx, start)) as stream:
        if start:
            task.advance(start)
        for step in range(start, ctx.total_steps):
            began = time.monotonic()
            fed = next(stream)
            waited = time.monotonic() - began
            learner.model.train()
            torch.manual_seed(_step_seed(cfg, ctx.index, step, collective.rank))
            micros, num_tokens = _take_window(ctx, step, fed, state)

            targets, conf, betas = purified_targets(ctx, learner.model, micros, history, cache)
            values = student_backward(ctx, learner.model, micros, targets, num_tokens)

            grad_norm = apply_update(ctx, learner, state, step, values[0])
            if grad_norm is None and state.bad_in_a_row >= cfg.max_nonfinite:
                _save(ctx, learner, state, history, step)
                raise SeedError(
                    f"{state.bad_in_a_row} steps in a row had a non-finite loss; stopped after saving the last good "
                    "state (lower --lr, use --dtype fp32 or bf16 instead of fp16/4-bit)."
                )
            _advance_schedule(learner)
            seconds = time.monotonic() - began
            stats = Step(*values, grad_norm, _mean(betas), _mean(conf), num_tokens, ctx.window, seconds, waited)
            state.record(stats, seed=cfg.method == "seed")

            done = step + 1
            last = _log(ctx, state, task, done, learner.scheduler.get_last_lr()[0], values) or last
            if done % cfg.save_every == 0 and done < ctx.total_steps:
                _save(ctx, learner, state, history, done)
            if collective.any_flag(stop["stop"]):
                _save(ctx, learner, state, history, done)
                resume = f"seed distill --resume --out {ctx.out}"
                raise Interrupted(
                    f"interrupted at step {done}/{ctx.total_steps}; checkpoint saved. Continue with: {resume}"
                )

    mean_kl = state.kl_sum / state.kl_steps if state.kl_steps else None
    result = {"round": ctx.index, "steps": ctx.total_steps, "last": last, "mean_kl": mean_kl}
    result.update({"skipped_steps": state.skipped_steps, "skipped_samples": state.skipped_samples, "sanity": checks})
    return learner.model, result


# --- a run: start, rounds, finish ------------------------------------------------------------------------------------


def distill(
    cfg: DistillConfig,
    reporter: Reporter,
    *,
    collective: Collective | None = None,
    given: frozenset[str] | None = None,
    tracker: trackers.Trackers | None = None,
) -> dict[str, Any]:
    """Run SEED (or the SFT baseline) and write the run directory; returns summary.json's content.

    Without `collective`, joins the process group the launcher's environment describes (see
    seedcli.distributed) and leaves it at the end. `given` names the config fields the user set
    explicitly (the CLI's parser knows); with --resume only those override config.json. None
    counts every field that differs from its default as given. `tracker` receives every metrics line.
    """
    if collective is not None:
        return _distill(cfg, reporter, collective, given, tracker)
    from seedcli import distributed
    from seedcli.models.loading import resolve_device

    processes = (cfg.gpus or cfg.nproc or 1) * cfg.nnodes
    joined = distributed.join(
        device=cfg.device,
        processes=processes,
        timeout_s=cfg.nccl_timeout_s,
        master_addr=cfg.master_addr,
        master_port=cfg.master_port,
        force=cfg.strategy == "fsdp",
    )
    try:
        local = LocalCollective(torch.device(resolve_device(cfg.device)))
        return _distill(cfg, reporter, joined or local, given, tracker)
    finally:
        if joined is not None:
            distributed.shutdown()


def _load_dtype(name: str, device: str) -> str:
    """The dtype name that `auto` means on `device` (FSDP loads on cpu for a cuda run)."""
    from seedcli.models.loading import resolve_dtype

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[resolve_dtype(name, device)]


def _load(cfg: DistillConfig, collective: Collective) -> Loaded:
    """The base model on this process's device; FSDP loads on the CPU and shards onto the device."""
    from seedcli import distributed
    from seedcli.models.loading import load

    # A process group puts each rank on its own device (cuda:<local rank>); FSDP loads on the CPU
    # and lets fully_shard move each rank's shards there, so the full model never sits on one GPU.
    target = str(collective.device)
    sharded = cfg.strategy == "fsdp" and collective.backend is not None
    dtype = _load_dtype(cfg.dtype, target) if sharded else cfg.dtype
    loaded = None
    for turn in (True, False):  # rank 0 first: it may download or build caches the others then read
        if collective.is_main == turn:
            loaded = load(
                cfg.model,
                dtype=dtype,
                device="cpu" if sharded else target,
                quantization=cfg.quantization,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation,
            )
        if collective.world > 1 and turn:
            collective.any_flag(False)
    assert loaded is not None
    if sharded:
        loaded = replace(
            loaded, model=distributed.shard_frozen_base(loaded.model, collective), device=collective.device
        )
    return loaded


def _check_lora_targets(cfg: DistillConfig, loaded: Loaded) -> None:
    """--lora-targets must name modules of the language model (PEFT matches the regex in full)."""
    pattern = re.compile(loaded.family.lora_target_regex(cfg.lora_targets))
    if not any(pattern.fullmatch(name) for name, _ in loaded.model.named_modules()):
        names = ",".join(cfg.lora_targets)
        raise ConfigError(
            f"--lora-targets {names} matches no attention projection of {cfg.model}'s language model; "
            "use names like q_proj,v_proj."
        )


def _resolved(cfg: DistillConfig, ctx: Round) -> dict[str, Any]:
    """config.json's `resolved` part: what the flags turned into on this machine."""
    from seedcli import distributed

    loaded, collective = ctx.loaded, ctx.collective
    sharded = cfg.strategy == "fsdp" and collective.backend is not None
    return {
        "model_source": loaded.ref.source,
        "family": loaded.family.name,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "device": str(loaded.device),
        "noise_alpha": ctx.alpha,
        "global_batch": ctx.window,
        "world_size": collective.world,
        "strategy": cfg.strategy if collective.world > 1 or sharded else "single",
        "backend": distributed.backend_for(loaded.device.type) if collective.backend is not None else None,
        "steps_per_epoch": ctx.steps_per_epoch,
        "total_steps_per_round": ctx.total_steps,
        "train_records": len(ctx.rows),
        "lora_target_regex": loaded.family.lora_target_regex(cfg.lora_targets),
        "chat_template": getattr(loaded.processor, "chat_template", None),
    }


def _first_round(cfg: DistillConfig, out: Path, collective: Collective, reporter: Reporter) -> Round:
    """Data, model and the checks that need them, before anything is written."""
    data, rows = _records(cfg)
    window = cfg.batch_size * cfg.grad_accum * collective.world
    steps_per_epoch = len(rows) // window
    if steps_per_epoch == 0:
        raise DataError(
            f"{cfg.data} has {len(rows)} training records, fewer than one optimizer step needs "
            f"({window} = batch-size x grad-accum x processes)."
        )
    loaded = _load(cfg, collective)
    _check_lora_targets(cfg, loaded)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    return Round(cfg, loaded, data, rows, out, 1, total, steps_per_epoch, noise_alpha(cfg), collective, reporter)


def _write_start(ctx: Round) -> None:
    """config.json and env.json (rewritten on resume: the settings of this start are the run's now)."""
    from seedcli import __version__
    from seedcli.environment import environment

    cfg, out = ctx.cfg, ctx.out
    document = {
        "seedcli_version": __version__,
        "command": "distill",
        "config": to_dict(cfg),
        "resolved": _resolved(cfg, ctx),
    }
    atomic.write_json(out / rundir.CONFIG, document)
    atomic.write_json(out / rundir.ENV, environment())
    ctx.reporter.info(f"run directory: {out}")
    where = f"{ctx.loaded.family.name}, {document['resolved']['dtype']}, {document['resolved']['device']}"
    ctx.reporter.info(
        f"{cfg.method} on {cfg.model} ({where}): {len(ctx.rows)} records, "
        f"{ctx.total_steps} steps x {cfg.rounds} round(s), "
        f"global batch {ctx.window}"
    )


def _distill(
    cfg: DistillConfig,
    reporter: Reporter,
    collective: Collective,
    given: frozenset[str] | None,
    tracker: trackers.Trackers | None,
) -> dict[str, Any]:
    from seedcli import distributed

    if not collective.is_main:
        reporter = distributed.RankReporter(reporter, collective.rank)
    out = Path(cfg.out) if cfg.out else rundir.default_out(cfg.model, cfg.method)
    if cfg.resume or collective.is_main:
        rundir.check_out(cfg, out)
    lock = rundir.Lock(out) if cfg.resume and collective.is_main else None
    try:
        if cfg.resume:
            cfg = rundir.resumed_config(cfg, out, given, collective.world, reporter)
            if collective.is_main and checkpoint.remove_staging(out / rundir.CHECKPOINTS):
                reporter.info("removed the staging of a checkpoint save that was cut short")
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        ctx = replace(_first_round(cfg, out, collective, reporter), tracker=tracker)
        _probe(ctx)  # an unusable first batch fails here, before anything is written
        if collective.is_main and not cfg.resume:
            lock = rundir.create(out, overwrite=cfg.overwrite)
        try:
            if collective.is_main:
                _write_start(ctx)
            return _rounds(ctx)
        except BaseException:
            if lock is not None and not cfg.resume and not rundir.has_progress(out):
                rundir.discard(out, lock)  # a failed start leaves nothing; a run that logged steps stays
            raise
    finally:
        if lock is not None:
            lock.release()


def _rounds(first: Round) -> dict[str, Any]:
    """Every round from where the run stands (newest checkpoint), then the adapter and summary.json."""
    from peft import get_peft_model_state_dict

    from seedcli import distributed

    cfg, out, collective = first.cfg, first.out, first.collective
    resume_from = checkpoint.newest(out / rundir.CHECKPOINTS) if cfg.resume else None
    start_round, start_step = checkpoint.position(resume_from) if resume_from else (1, 0)
    if collective.is_main and cfg.resume:
        rundir.truncate_metrics(out, start_round, start_step)  # lines after it will be logged again
    base = first.loaded.model
    for previous in range(1, start_round):
        base = rundir.apply_adapters(base, [rundir.round_adapter(out, previous)], merge_last=True)
    results: list[dict[str, Any]] = []
    for index in range(start_round, cfg.rounds + 1):
        model, result = _train_round(replace(first, index=index), base, resume_from if index == start_round else None)
        results.append(result)
        if collective.is_main and cfg.rounds > 1:
            model.save_pretrained(str(rundir.round_adapter(out, index)))
        if index < cfg.rounds:
            base = model.merge_and_unload()  # the evolved model is the next round's teacher
    # Every rank applied the same summed gradients; check the replicas really are identical.
    digests = distributed.replica_digests(collective, get_peft_model_state_dict(model))
    if len(set(digests)) > 1:
        raise SeedError(
            f"adapter weights differ across processes after training (digests by rank: {', '.join(digests)}); "
            "the gradient reduction is broken, please report this."
        )
    replicas = {"world_size": collective.world, "adapter_digests": digests}
    summary = rundir.summary(
        cfg,
        out,
        steps_per_round=first.total_steps,
        global_batch=first.window,
        round_results=results,
        final=results[-1] if results else {},
        replicas=replicas,
    )
    if collective.is_main:
        model.save_pretrained(str(out / rundir.ADAPTER))
        atomic.write_json(out / rundir.SUMMARY, summary)
    return summary
