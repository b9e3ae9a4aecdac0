"""`seedcli.core.distill`: the SEED purify-and-distill engine (PROTOCOLS.md section 1).

Per optimizer step (a window of batch_size x grad_accum samples on each process):
1. Teacher: the frozen base (adapter disabled, no_grad) on the clean and the noised image, logits at
   supervised positions only (one joint forward of 2B, or two forwards).
2. Identify: confidence per sample (or token) -> the history -> beta from its quantiles. The history
   is updated once per window with the window's confidences in sample order, so the result does not
   depend on how the window is split into micro-batches or processes.
3. Purge: purified = (1 + beta) z(v) - beta z(v').
4. Student (adapter enabled): w * T^2 KL(s || softmax(purified / T)) + (1 - w) * CE, both normalised
   by the supervised tokens of the whole window; backward per micro-batch; clip; AdamW step.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import re
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from seedcli import __version__, atomic, rundir, trackers
from seedcli.config.base import to_dict
from seedcli.config.distill import DistillConfig
from seedcli.core import checkpoint, losses, noise, purify, teacher_cache
from seedcli.errors import ConfigError, DataError, Interrupted, SeedError
from seedcli.reporting import Reporter

# Fields that may change when resuming (they do not change what is computed).
OPERATIONAL = ("resume", "overwrite", "out", "log_every", "save_every", "keep_checkpoints", "max_nonfinite", "gpus", "nproc", "nnodes", "node_rank", "master_addr", "master_port", "strategy", "nccl_timeout_s")
OPERATIONAL += ("report_to", "push_to_hub")  # where results go, not what is computed
# May change when resuming on another number of processes, as long as the global batch stays the same.
RESHAPE = ("batch_size", "grad_accum")


class Collective:
    """Cross-process operations; this single-process version is the identity (see seedcli.distributed)."""

    rank: int = 0
    world: int = 1

    def sum_int(self, value: int) -> int:
        """Sum an integer over processes."""
        return value

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate 1-D tensors from all processes in rank order."""
        return values

    def reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum gradients over processes."""

    def any_flag(self, flag: bool) -> bool:
        """True on every process if any process sets the flag."""
        return flag

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and renders progress."""
        return self.rank == 0


@dataclass
class _Stats:
    """Accumulators between two logged steps."""

    steps: int = 0
    loss: float = 0.0
    kl: float = 0.0
    ce: float = 0.0
    beta: float = 0.0
    conf: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0
    samples: int = 0
    started: float = field(default_factory=time.monotonic)

    def mean(self, name: str) -> float:
        return getattr(self, name) / max(self.steps, 1)


def default_out(cfg: DistillConfig) -> Path:
    """runs/<model>-<method>-<timestamp>."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(cfg.model).name if "/" not in cfg.model or Path(cfg.model).exists() else cfg.model.replace("/", "_"))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return rundir.DEFAULT_RUNS_ROOT / f"{slug}-{cfg.method}-{stamp}"


def noise_alpha(cfg: DistillConfig) -> float:
    """The signal weight a of v' = sqrt(a) v + sqrt(1-a) eps (from --noise-step when given)."""
    return noise.vcd_alpha_bar(cfg.noise_step) if cfg.noise_step is not None else cfg.noise_alpha


def _resolve_resume(cfg: DistillConfig, run: Path, world: int, reporter: Reporter) -> DistillConfig:
    """With --resume the saved config is authoritative; a flag that contradicts it is an error.

    The global batch (batch-size x grad-accum x processes) is part of what is computed: resuming on
    another number of processes keeps it, choosing --grad-accum unless the flags say otherwise.
    """
    from seedcli.config.base import from_dict

    saved_doc = rundir.open_run(run, flag="--out", require_complete=False).config
    saved = from_dict(DistillConfig, saved_doc["config"])
    default = DistillConfig()
    asked = {name for name in to_dict(cfg) if getattr(cfg, name) != getattr(default, name)}
    conflicts = [name for name in sorted(asked) if name not in OPERATIONAL + RESHAPE and getattr(cfg, name) != getattr(saved, name)]
    if conflicts:
        raise ConfigError(f"--resume: {', '.join('--' + c.replace('_', '-') for c in conflicts)} differ from the run's config.json; drop them or start a new run.")
    resumed = replace(saved, **{name: getattr(cfg, name) for name in OPERATIONAL + RESHAPE if name in asked or name in OPERATIONAL})
    resolved = saved_doc.get("resolved", {})
    global_batch = int(resolved.get("global_batch", saved.batch_size * saved.grad_accum * int(resolved.get("world_size", 1))))
    if resumed.batch_size * resumed.grad_accum * world == global_batch:
        return resumed
    per_micro = resumed.batch_size * world
    if "grad_accum" not in asked and global_batch % per_micro == 0:
        reporter.info(f"resuming on {world} process(es): --grad-accum {global_batch // per_micro} keeps the run's global batch of {global_batch}")
        return replace(resumed, grad_accum=global_batch // per_micro)
    raise ConfigError(f"--resume: the run's global batch is {global_batch} (batch-size x grad-accum x processes) but {resumed.batch_size} x {resumed.grad_accum} x {world} = {resumed.batch_size * resumed.grad_accum * world}; choose --batch-size and --grad-accum whose product is {global_batch}/{world}.")


def _records(cfg: DistillConfig) -> tuple[Any, list[dict[str, Any]]]:
    from seedcli.data.datadir import open_data_dir, validate_record

    data = open_data_dir(Path(cfg.data))
    rows = [validate_record(row, where=f"{cfg.data}/train").to_row() for row in data.train()]
    if cfg.max_samples is not None and cfg.max_samples < len(rows):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        rows = [rows[i] for i in sorted(order[: cfg.max_samples])]
    return data, rows


def warmup_cosine(total: int, warmup: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR factor per step: linear warmup over `warmup` steps, then cosine from 1 down to `floor`."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


def _noise_generator(cfg: DistillConfig, round_index: int, step: int, sample: int) -> torch.Generator:
    # Per-sample seeds: the noise a sample gets does not depend on batch size or process count.
    return torch.Generator().manual_seed(hash((cfg.seed, round_index, step, sample)) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class _Micro:
    """One encoded micro-batch on the device."""

    inputs: dict[str, Any]
    noisy_pixels: Any
    sup: Any  # seedcli.models.forward.Supervised
    samples: int
    indices: tuple[int, ...] = ()  # positions in the training records of the encoded samples, in batch order
    record_ids: tuple[str, ...] = ()


def _encode_micro(loaded: Any, data: Any, rows: list[dict[str, Any]], indices: list[int], cfg: DistillConfig, round_index: int, step: int, alpha: float, reporter: Reporter) -> _Micro | None:
    from PIL import Image

    from seedcli.models.chat import collate, encode
    from seedcli.models.forward import model_inputs, supervised

    clean, noisy, kept = [], [], []
    for index in indices:
        row = rows[index]
        try:
            with Image.open(data.resolve_image("train", row["image"])) as handle:
                image = handle.convert("RGB")
            enc = encode(loaded.processor, loaded.family, row["messages"], image, max_length=cfg.max_length, where=f"record {row['id']}")
        except (OSError, DataError) as exc:
            reporter.warn(f"skipping record {row['id']}: {exc}")
            continue
        clean.append(enc)
        kept.append(index)
        if cfg.method == "seed":
            pixels = enc.vision["pixel_values"]
            noised = noise.add_diffusion_noise(pixels, alpha, _noise_generator(cfg, round_index, step, index))
            noisy.append(replace(enc, vision={**enc.vision, "pixel_values": noised}))
    if not clean:
        return None
    pad_id = loaded.processor.tokenizer.pad_token_id
    pad_id = loaded.processor.tokenizer.eos_token_id if pad_id is None else pad_id
    batch = collate(clean, pad_id=pad_id)
    sup = supervised(batch["labels"].to(loaded.device))
    inputs = {k: v.to(loaded.device) for k, v in model_inputs(batch).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    noisy_pixels = collate(noisy, pad_id=pad_id)["pixel_values"].to(loaded.device, loaded.dtype) if noisy else None
    return _Micro(inputs=inputs, noisy_pixels=noisy_pixels, sup=sup, samples=len(clean), indices=tuple(kept), record_ids=tuple(str(rows[i]["id"]) for i in kept))


def _teacher(model: Any, micro: _Micro, joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and noisy teacher logits [N, V] from the frozen base (adapter disabled)."""
    from seedcli.models.forward import doubled, supervised_logits

    with torch.no_grad(), model.disable_adapter():
        if joint:
            mask = torch.cat([micro.sup.mask, micro.sup.mask])
            both = supervised_logits(model, doubled(micro.inputs, micro.noisy_pixels), mask)
            return both[: micro.sup.count], both[micro.sup.count :]
        clean = supervised_logits(model, micro.inputs, micro.sup.mask)
        noisy = supervised_logits(model, {**micro.inputs, "pixel_values": micro.noisy_pixels}, micro.sup.mask)
        return clean, noisy


def _teacher_targets(model: Any, micro: _Micro, joint: bool, cache: teacher_cache.TeacherCache | None, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits [N, V]: from the cache when every sample of the micro-batch is in it, else computed and stored."""
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
    from seedcli.models.forward import supervised_logits

    # Mode "clean": the noisy pass still runs, on this step's fresh noise.
    with torch.no_grad(), model.disable_adapter():
        return clean, supervised_logits(model, {**micro.inputs, "pixel_values": micro.noisy_pixels}, micro.sup.mask)


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


@contextmanager
def _stop_signals() -> Iterator[dict[str, bool]]:
    """Turn SIGINT/SIGTERM into a flag checked after each step (so a checkpoint can be saved)."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
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


def _step_seed(cfg: DistillConfig, round_index: int, step: int, rank: int) -> int:
    # Dropout draws from the global generator. Seeding it per (step, rank) makes it a function of the
    # position, so no per-rank generator state needs a checkpoint and resuming is deterministic.
    return hash((cfg.seed, round_index, step, rank, 1)) & 0x7FFF_FFFF_FFFF_FFFF


def _load_dtype(name: str, device: str) -> str:
    """The dtype name that `auto` means on `device` (FSDP loads on cpu for a cuda run)."""
    from seedcli.models.loading import resolve_dtype

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[resolve_dtype(name, device)]


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 5e-2


def _sanity_checks(cfg: DistillConfig, model: Any, base_logits: torch.Tensor, micro: _Micro, alpha: float) -> dict[str, float]:
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
        raise SeedError(f"the teacher (adapter disabled) differs from the base model by {gap:.3g}; the adapter is not cleanly separable.")
    checks = {"teacher_base_gap": gap}
    if cfg.method == "seed":
        clean, noisy = _teacher(model, micro, cfg.teacher_batching == "joint")
        purified = purify.purify(clean, noisy, max(cfg.beta_values), cfg.purify_space, cfg.plausibility_gamma, cfg.plausibility_penalty)
        shift = (torch.softmax(purified / cfg.temperature, -1) - torch.softmax(clean.float() / cfg.temperature, -1)).abs().max().item()
        checks["purification_shift"] = shift
        if shift < 1e-6:
            raise ConfigError(f"--noise-alpha {alpha:.3g}: the noised image gives the same teacher distribution as the clean one, so SEED would be inactive; use more noise.")
    return checks


def _wrap(model: Any, cfg: DistillConfig, family: Any) -> Any:
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
        wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return wrapped


def _prepare_run_dir(cfg: DistillConfig, out: Path, collective: Collective) -> None:
    """Check --out/--resume/--overwrite before any work; nothing is created here."""
    if cfg.resume:
        if not (out / rundir.CONFIG).is_file():
            raise ConfigError(f"--resume: {out} is not a run directory (no {rundir.CONFIG}); drop --resume to start a new run.")
        if (out / rundir.SUMMARY).is_file():
            raise ConfigError(f"--resume: {out} already finished (summary.json exists); start a new run instead.")
        return
    if collective.is_main and out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty; pass --overwrite to replace it, --resume to continue it, or choose another path.")


def _create_run_dir(cfg: DistillConfig, out: Path) -> None:
    """Make the run directory once inputs and model are known good (a failed start leaves nothing)."""
    if cfg.resume:
        return
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # --overwrite was checked by _prepare_run_dir
    out.mkdir(parents=True, exist_ok=True)


def distill(
    cfg: DistillConfig,
    reporter: Reporter,
    *,
    collective: Collective | None = None,
    tracker: trackers.Trackers | None = None,
) -> dict[str, Any]:
    """Run SEED (or the SFT baseline) and write the run directory; returns summary.json's content.

    Without `collective`, joins the process group the launcher's environment describes (see
    seedcli.distributed) and leaves it at the end.
    """
    if collective is not None:
        return _distill(cfg, reporter, collective, tracker)
    from seedcli import distributed

    joined = distributed.join(device=cfg.device, processes=(cfg.gpus or cfg.nproc or 1) * cfg.nnodes, timeout_s=cfg.nccl_timeout_s, master_addr=cfg.master_addr, master_port=cfg.master_port, force=cfg.strategy == "fsdp")
    try:
        return _distill(cfg, reporter, joined or Collective(), tracker)
    finally:
        if joined is not None:
            distributed.shutdown()


def _distill(
    cfg: DistillConfig, reporter: Reporter, collective: Any, tracker: trackers.Trackers | None = None
) -> dict[str, Any]:
    from seedcli import distributed
    from seedcli.environment import environment
    from seedcli.models.loading import load

    if not collective.is_main:
        reporter = distributed.RankReporter(reporter, collective.rank)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if cfg.resume:
        cfg = _resolve_resume(cfg, out, collective.world, reporter)
    _prepare_run_dir(cfg, out, collective)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    data, rows = _records(cfg)
    window = cfg.batch_size * cfg.grad_accum * collective.world
    steps_per_epoch = len(rows) // window
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.data} has {len(rows)} training records, fewer than one optimizer step needs ({window} = batch-size x grad-accum x processes).")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    alpha = noise_alpha(cfg)
    # A process group puts each rank on its own device (cuda:<local rank>); FSDP loads on the CPU
    # and lets fully_shard move each rank's shards there, so the full model never sits on one GPU.
    target = str(getattr(collective, "device", cfg.device))
    sharded = cfg.strategy == "fsdp" and hasattr(collective, "device")
    dtype = _load_dtype(cfg.dtype, target) if sharded else cfg.dtype
    loaded = None
    for turn in (True, False):  # rank 0 first: it may download or build caches the others then read
        if collective.is_main == turn:
            loaded = load(cfg.model, dtype=dtype, device="cpu" if sharded else target, quantization=cfg.quantization, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
        if collective.world > 1 and turn:
            collective.any_flag(False)
    if sharded:
        loaded = replace(loaded, model=distributed.shard_frozen_base(loaded.model, collective), device=torch.device(target))
    env = environment()
    if collective.is_main:
        _create_run_dir(cfg, out)
        chat_template = getattr(loaded.processor, "chat_template", None)
        resolved = {
            "model_source": loaded.ref.source,
            "family": loaded.family.name,
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "device": str(loaded.device),
            "noise_alpha": alpha,
            "global_batch": window,
            "world_size": collective.world,
            "strategy": cfg.strategy if collective.world > 1 or sharded else "single",
            "backend": distributed.backend_for(loaded.device.type) if hasattr(collective, "device") else None,
            "steps_per_epoch": steps_per_epoch,
            "total_steps_per_round": total_steps,
            "train_records": len(rows),
            "lora_target_regex": loaded.family.lora_target_regex(cfg.lora_targets),
            "chat_template": chat_template,
        }
        atomic.write_json(out / rundir.CONFIG, {"seedcli_version": __version__, "command": "distill", "config": to_dict(cfg), "resolved": resolved})
        atomic.write_json(out / rundir.ENV, env)
        reporter.info(f"run directory: {out}")
        reporter.info(f"{cfg.method} on {cfg.model} ({loaded.family.name}, {resolved['dtype']}, {resolved['device']}): {len(rows)} records, {total_steps} steps x {cfg.rounds} round(s), global batch {window}")

    start_round = 1
    if cfg.resume:
        ckpt = checkpoint.newest(out / rundir.CHECKPOINTS)
        if ckpt is not None:
            start_round = int(json.loads((ckpt / checkpoint.STATE).read_text(encoding="utf-8"))["position"]["round"])
    base = loaded.model
    for previous in range(1, start_round):
        base = rundir.apply_adapters(base, [out / rundir.ROUNDS / f"round-{previous}" / "adapter"], merge_last=True)

    results: list[dict[str, Any]] = []
    for round_index in range(start_round, cfg.rounds + 1):
        resume_from = checkpoint.newest(out / rundir.CHECKPOINTS) if cfg.resume and round_index == start_round else None
        model, result = _train_round(
            cfg, base, loaded, data, rows, out, round_index, total_steps, steps_per_epoch, alpha, reporter, collective,
            resume_from, tracker,
        )
        results.append(result)
        if collective.is_main and cfg.rounds > 1:
            model.save_pretrained(str(out / rundir.ROUNDS / f"round-{round_index}" / "adapter"))
        if round_index < cfg.rounds:
            base = model.merge_and_unload()  # the evolved model is the next round's teacher
    from peft import get_peft_model_state_dict

    # Every rank applied the same summed gradients; check the replicas really are identical.
    digests = distributed.replica_digests(collective, get_peft_model_state_dict(model))
    if len(set(digests)) > 1:
        raise SeedError(f"adapter weights differ across processes after training (digests by rank: {', '.join(digests)}); the gradient reduction is broken, please report this.")
    summary = {
        "seedcli_version": __version__,
        "run_dir": str(out),
        "model": cfg.model,
        "method": cfg.method,
        "rounds": cfg.rounds,
        "steps_per_round": total_steps,
        "global_batch": window,
        "adapter": str(out / rundir.ADAPTER),
        "adapter_chain": [str(p) for p in ([out / rundir.ROUNDS / f"round-{r}" / "adapter" for r in range(1, cfg.rounds + 1)] if cfg.rounds > 1 else [out / rundir.ADAPTER])],
        "round_results": results,
        "final": results[-1] if results else {},
        "replicas": {"world_size": collective.world, "adapter_digests": digests},
    }
    if collective.is_main:
        model.save_pretrained(str(out / rundir.ADAPTER))
        atomic.write_json(out / rundir.SUMMARY, summary)
    return summary


def _train_round(
    cfg: DistillConfig,
    base: Any,
    loaded: Any,
    data: Any,
    rows: list[dict[str, Any]],
    out: Path,
    round_index: int,
    total_steps: int,
    steps_per_epoch: int,
    alpha: float,
    reporter: Reporter,
    collective: Collective,
    resume_from: Path | None,
    tracker: trackers.Trackers | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One round of training: the loop, top to bottom."""
    from seedcli.models.forward import supervised_logits

    per_process = cfg.batch_size * cfg.grad_accum
    window = per_process * collective.world
    sharded_forwards = cfg.strategy == "fsdp" and collective.world > 1

    def window_indices(step: int) -> list[int]:
        epoch = step // steps_per_epoch
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed + 1000 * round_index + epoch)).tolist()
        start = (step % steps_per_epoch) * window
        mine = order[start : start + window][collective.rank * per_process : (collective.rank + 1) * per_process]
        return mine

    # --- setup: probe batch on the unwrapped base, adapter, optimizer, schedule -------------------
    probe = _encode_micro(loaded, data, rows, window_indices(0)[: cfg.batch_size], cfg, round_index, 0, alpha, reporter)
    if collective.any_flag(probe is None):
        raise DataError("the first batch could not be encoded (see the warnings above).")
    with torch.no_grad():
        base_logits = supervised_logits(base, probe.inputs, probe.sup.mask)
    model = _wrap(base, cfg, loaded.family)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))
    history = purify.ConfidenceHistory(cfg.history_size)
    start_step, counters = 0, {"skipped_steps": 0, "skipped_samples": 0, "bad_in_a_row": 0, "kl_sum": 0.0, "kl_steps": 0}
    if resume_from is not None:
        state = checkpoint.load(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        start_step = int(state["position"]["step"])
        history = purify.ConfidenceHistory.from_state(state["history"], cfg.history_size)
        counters.update(state["counters"])
        if collective.is_main:
            _truncate_metrics(out / rundir.METRICS, round_index, start_step)
        reporter.info(f"resumed round {round_index} from {resume_from.name} (step {start_step}/{total_steps})")
    checks = _sanity_checks(cfg, model, base_logits, probe, alpha)
    if collective.is_main and start_step == 0:
        reporter.info("sanity checks passed: " + ", ".join(f"{k}={v:.3g}" for k, v in checks.items()))

    def save_checkpoint(step: int) -> None:
        if collective.is_main:
            checkpoint.save(
                out / rundir.CHECKPOINTS / f"step-{round_index}-{step}" if cfg.rounds > 1 else out / rundir.CHECKPOINTS / f"step-{step}",
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                position={"round": round_index, "step": step},
                history=history.state(),
                counters=counters,
            )
            checkpoint.prune(out / rundir.CHECKPOINTS, cfg.keep_checkpoints)
        collective.any_flag(False)  # barrier: no rank stops or moves on before the checkpoint is complete

    # --- the loop ---------------------------------------------------------------------------------
    stats = _Stats()
    last: dict[str, Any] = {}
    joint = cfg.teacher_batching == "joint"
    cache = teacher_cache.TeacherCache(out / "teacher-cache", cfg.teacher_cache_k, cfg.teacher_cache) if cfg.method == "seed" and cfg.teacher_cache != "off" else None
    with _stop_signals() as stop, reporter.task(f"round {round_index}/{cfg.rounds}" if cfg.rounds > 1 else cfg.method, total=total_steps, unit="step") as task:
        if start_step:
            task.advance(start_step)
        for step in range(start_step, total_steps):
            model.train()
            torch.manual_seed(_step_seed(cfg, round_index, step, collective.rank))
            indices = window_indices(step)
            micros = [_encode_micro(loaded, data, rows, indices[i : i + cfg.batch_size], cfg, round_index, step, alpha, reporter) for i in range(0, len(indices), cfg.batch_size)]
            skipped = len(indices) - sum(m.samples for m in micros if m is not None)
            micros = [m for m in micros if m is not None]
            # FSDP all-gathers inside every forward: a rank with fewer forwards would hang the others.
            if sharded_forwards and collective.any_flag(len(micros) < cfg.grad_accum):
                raise DataError(f"step {step + 1}: a whole micro-batch could not be encoded on some process (see the warnings); --strategy fsdp needs the same forwards on every process: fix or remove those records.")
            counters["skipped_samples"] += collective.sum_int(skipped)
            num_tokens = collective.sum_int(sum(m.sup.count for m in micros))
            if num_tokens == 0:
                raise DataError(f"step {step}: no supervised tokens in the whole batch; check the data.")

            # Teacher passes, identify and beta for the whole window (before any student pass).
            targets: list[torch.Tensor | None] = []
            conf_window = torch.zeros(0)
            betas = all_betas = torch.zeros(0)
            if cfg.method == "seed":
                teacher = [_teacher_targets(model, m, joint, cache, round_index) for m in micros]
                confs = [_confidence(cfg, clean, m) for (clean, _), m in zip(teacher, micros)]
                local = torch.cat(confs).float().cpu() if confs else torch.zeros(0)
                conf_window = collective.gather(local)
                all_betas = _betas(cfg, history, conf_window)
                offset = sum(collective.gather(torch.tensor([float(local.numel())]))[: collective.rank].long().tolist()) if collective.world > 1 else 0
                betas = all_betas[offset : offset + local.numel()]
                cursor = 0
                for (clean, noisy), m, conf in zip(teacher, micros, confs):
                    beta = betas[cursor : cursor + conf.numel()].to(clean.device)
                    cursor += conf.numel()
                    token_beta = beta[m.sup.sample_index] if cfg.identify == "sample" else beta
                    targets.append(purify.purify(clean, noisy, token_beta, cfg.purify_space, cfg.plausibility_gamma, cfg.plausibility_penalty))
                del teacher
            else:
                targets = [None] * len(micros)

            # Student passes: loss normalised by the window's supervised tokens, backward per micro.
            loss_value = kl_value = ce_value = 0.0
            for m, target in zip(micros, targets):
                student = supervised_logits(model, m.inputs, m.sup.mask)
                if target is None:
                    ce = losses.cross_entropy_sum(student, m.sup.targets) / num_tokens
                    total, kl = ce, None
                else:
                    parts = losses.seed_loss(student, target, m.sup.targets, temperature=cfg.temperature, distill_weight=cfg.distill_weight, kind=cfg.divergence, num_tokens=num_tokens, jsd_beta=cfg.jsd_beta, chunk=cfg.loss_chunk)
                    total, kl, ce = parts.total, parts.kl, parts.ce
                total.backward()
                loss_value += float(total.detach())
                ce_value += float(ce.detach())
                kl_value += float(kl.detach()) if kl is not None else 0.0
            # Each process holds its share of the window's sums (already over the global token count).
            loss_value, kl_value, ce_value = (float(v) for v in collective.gather(torch.tensor([loss_value, kl_value, ce_value], dtype=torch.float64)).view(-1, 3).sum(0))
            collective.reduce_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
            if collective.any_flag(not finite):
                optimizer.zero_grad(set_to_none=True)
                counters["skipped_steps"] += 1
                counters["bad_in_a_row"] += 1
                reporter.warn(f"step {step + 1}: non-finite loss or gradient; update skipped ({counters['bad_in_a_row']} in a row)")
                if counters["bad_in_a_row"] >= cfg.max_nonfinite:
                    save_checkpoint(step)
                    raise SeedError(f"{counters['bad_in_a_row']} steps in a row had a non-finite loss; stopped after saving the last good state (lower --lr, use --dtype fp32 or bf16 instead of fp16/4-bit).")
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                counters["bad_in_a_row"] = 0
                stats.steps += 1
                stats.loss += loss_value
                stats.kl += kl_value
                stats.ce += ce_value
                stats.grad_norm += float(grad_norm)
                stats.beta += float(all_betas.mean()) if all_betas.numel() else 0.0
                stats.conf += float(conf_window.mean()) if conf_window.numel() else 0.0
                if cfg.method == "seed":
                    counters["kl_sum"] += kl_value
                    counters["kl_steps"] += 1
            with warnings.catch_warnings():
                # A skipped update still advances the schedule, so the LR stays aligned with the step.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            stats.tokens += num_tokens
            stats.samples += len(indices) * collective.world

            done = step + 1
            elapsed = time.monotonic() - stats.started
            fields = {"loss": loss_value, "lr": scheduler.get_last_lr()[0]}
            if cfg.method == "seed":
                fields.update({"kl": kl_value, "ce": ce_value, "beta": stats.mean("beta"), "conf": stats.mean("conf")})
            task.advance(1, **fields, skipped=counters["skipped_steps"], sps=stats.samples / max(elapsed, 1e-9))
            if done % cfg.log_every == 0 or done == total_steps:
                last = {
                    "round": round_index,
                    "step": done,
                    "epoch": round(done / steps_per_epoch, 4),
                    "loss": stats.mean("loss"),
                    "kl": stats.mean("kl") if cfg.method == "seed" else None,
                    "ce": stats.mean("ce"),
                    "beta": stats.mean("beta") if cfg.method == "seed" else None,
                    "confidence": stats.mean("conf") if cfg.method == "seed" else None,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": stats.mean("grad_norm"),
                    "tokens": stats.tokens,
                    "samples_per_s": stats.samples / max(elapsed, 1e-9),
                    "skipped_steps": counters["skipped_steps"],
                    "skipped_samples": counters["skipped_samples"],
                }
                if collective.is_main:
                    atomic.append_jsonl(out / rundir.METRICS, last)
                    trackers.log_metrics(tracker, out, last)
                    reporter.log(last)
                stats = _Stats()
            if done % cfg.save_every == 0 and done < total_steps:
                save_checkpoint(done)
            if collective.any_flag(stop["stop"]):
                save_checkpoint(done)
                raise Interrupted(f"interrupted at step {done}/{total_steps}; checkpoint saved. Continue with: seed distill --resume --out {out}")

    mean_kl = counters["kl_sum"] / counters["kl_steps"] if counters["kl_steps"] else None
    result = {"round": round_index, "steps": total_steps, "last": last, "mean_kl": mean_kl, "skipped_steps": counters["skipped_steps"], "skipped_samples": counters["skipped_samples"], "sanity": checks}
    return model, result


def _truncate_metrics(path: Path, round_index: int, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    rows = atomic.read_jsonl(path)
    keep = [r for r in rows if (r.get("round", 1), r.get("step", 0)) <= (round_index, step)]
    if len(keep) != len(rows):
        atomic.write_jsonl(path, keep)
