"""Config of `seed distill`: every SEED, LoRA and training knob, with the reproduction's defaults.

Defaults and their sources are explained in docs/method.md and docs/protocols.md (SEED).
"""

from __future__ import annotations

from dataclasses import dataclass

from seedcli.config.base import check, check_processes, gpus_option, nccl_timeout_option, nproc_option, option, require
from seedcli.core.choices import (
    ATTN_IMPLEMENTATIONS,
    CONFIDENCE_KINDS,
    DEVICES,
    DIVERGENCE_KINDS,
    DTYPES,
    PURIFY_SPACES,
    QUANTIZATION,
    TEACHER_CACHE_MODES,
)
from seedcli.trackers import CHOICES as TRACKERS

MODEL = "Model"
DATA = "Data and output"
TRAIN = "Training"
SEED_PANEL = "SEED"
LORA = "Adapter (LoRA)"
DIST = "Distributed"


@dataclass(frozen=True)
class DistillConfig:
    """Everything `seed distill` needs; saved as config.json in the run directory."""

    model: str = option(
        "llava-1.5-7b",
        "Base model: alias (llava-1.5-7b, qwen2-vl-2b, ...), hub id, local directory, or tiny-llava / tiny-qwen2-vl.",
        panel=MODEL,
    )
    dtype: str = option(
        "auto",
        "Weights and compute dtype; auto = bf16 on GPUs that support it, else fp32.",
        choices=DTYPES,
        panel=MODEL
    )
    device: str = option("auto", "Device; auto = cuda when available.", choices=DEVICES, panel=MODEL)
    quantization: str = option(
        "none",
        "Load the frozen base in 4/8-bit (bitsandbytes); vision tower and projector stay unquantized.",
        choices=QUANTIZATION,
        panel=MODEL,
    )
    trust_remote_code: bool = option(
        False, "Allow custom model code from the checkpoint (only if you trust it).", panel=MODEL
    )
    attn_implementation: str = option(
        "sdpa",
        "Attention kernel passed to transformers.",
        choices=ATTN_IMPLEMENTATIONS,
        panel=MODEL,
        affects_result=False,
    )

    data: str = option("seed-data", "Data directory written by `seed prepare`.", panel=DATA)
    out: str | None = option(
        None,
        "Run directory; default runs/<model>-<method>-<timestamp>.",
        panel=DATA,
        affects_result=False,
    )
    max_length: int = option(
        2048, "Max tokens per sample; only text after the image is ever truncated.", min=8, panel=DATA
    )
    max_samples: int | None = option(None, "Train on a seeded random subset of N training records.", min=1, panel=DATA)
    resume: bool = option(
        False,
        "Continue the run in --out from its newest checkpoint, with its own config.json settings; flags typed "
        "now may only change those that do not change results (memory, logging, checkpoints, processes).",
        panel=DATA,
        affects_result=False,
    )
    overwrite: bool = option(False, "Replace an existing run directory at --out.", panel=DATA, affects_result=False)
    report_to: tuple[str, ...] = option(
        (),
        "Also log the values of metrics.jsonl, the config and the summary to this experiment tracker "
        "(local or offline unless configured otherwise; docs/ecosystem.md).",
        choices=TRACKERS,
        multiple=True,
        panel=DATA,
        affects_result=False,
    )
    push_to_hub: str | None = option(
        None,
        "After training, upload the adapter and its model card to this Hugging Face Hub repo (user/name); "
        "needs a login (hf auth login or HF_TOKEN) and network.",
        panel=DATA,
        affects_result=False,
    )

    method: str = option(
        "seed",
        "seed = purify-and-distill (KL + CE); sft = the same adapter trained with CE only (baseline).",
        choices=("seed", "sft"),
        panel=TRAIN,
    )
    epochs: int = option(1, "Passes over the training data (ignored when --max-steps is set).", min=1, panel=TRAIN)
    max_steps: int | None = option(None, "Stop after this many optimizer steps (per round).", min=1, panel=TRAIN)
    batch_size: int = option(1, "Samples per forward pass (per process).", min=1, panel=TRAIN, affects_result=False)
    grad_accum: int = option(
        8,
        "Forward passes per optimizer step; effective batch = batch-size x grad-accum x processes.",
        min=1,
        panel=TRAIN,
        affects_result=False,
    )
    lr: float = option(
        2e-6,
        "Peak learning rate (2e-5 caused repetition collapse in the reproduction).",
        min=0.0,
        min_exclusive=True,
        panel=TRAIN,
    )
    warmup_ratio: float = option(
        0.03, "Share of steps with linear warmup before the cosine decay.", min=0.0, max=0.5, panel=TRAIN
    )
    weight_decay: float = option(0.0, "AdamW weight decay on adapter weights.", min=0.0, panel=TRAIN)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).", min=0.0, panel=TRAIN)
    seed: int = option(0, "Random seed: data order, noise, adapter init, dropout.", panel=TRAIN)
    gradient_checkpointing: bool = option(
        False,
        "Recompute activations in backward (non-reentrant): less memory, ~30% slower.",
        panel=TRAIN,
        affects_result=False,
    )
    num_workers: int | None = option(
        None,
        "Processes that encode micro-batches ahead of the step (0: in the training process); "
        "default: a share of the cores, at most 4 per training process. Results do not depend on it.",
        min=0,
        panel=TRAIN,
        affects_result=False,
    )
    rounds: int = option(
        1,
        "Self-evolution rounds: after each, the adapter is merged into the teacher and a fresh one is trained.",
        min=1,
        panel=TRAIN,
    )
    log_every: int = option(10, "Log metrics every N optimizer steps.", min=1, panel=TRAIN, affects_result=False)
    save_every: int = option(
        500,
        "Save a resumable checkpoint every N optimizer steps.",
        min=1,
        panel=TRAIN,
        affects_result=False,
    )
    keep_checkpoints: int = option(2, "Keep the newest K checkpoints.", min=1, panel=TRAIN, affects_result=False)
    max_nonfinite: int = option(
        20,
        "Stop (after saving) when this many steps in a row have a non-finite loss.",
        min=1,
        panel=TRAIN,
        affects_result=False,
    )

    noise_alpha: float = option(
        0.3,
        "Isolate: v' = sqrt(a) v + sqrt(1-a) eps; 0.3 default (0.1 too destructive, 0.7 too weak).",
        min=0.0,
        min_exclusive=True,
        max=1.0,
        panel=SEED_PANEL,
    )
    noise_step: int | None = option(
        None,
        "Use VCD's noise schedule instead: a = alpha_bar[step] of the 1000-step schedule (VCD: 500). Overrides "
        "--noise-alpha.",
        min=0,
        max=999,
        panel=SEED_PANEL,
    )
    identify: str = option(
        "sample",
        "Identify: per-sample confidence (mean log max-prob) or per-token confidence.",
        choices=("sample", "token"),
        panel=SEED_PANEL,
    )
    token_confidence: str = option(
        "maxprob",
        "Per-token confidence measure when --identify token (entropy: higher entropy = lower confidence).",
        choices=CONFIDENCE_KINDS,
        panel=SEED_PANEL,
    )
    beta_mode: str = option(
        "quantile",
        "Purge strength from confidence: quantile buckets of the history, or a continuous map.",
        choices=("quantile", "continuous"),
        panel=SEED_PANEL,
    )
    beta_values: tuple[float, ...] = option(
        (1.1, 0.8, 0.6, 0.4), "Beta per confidence bucket, lowest confidence first.", min=0.0, panel=SEED_PANEL
    )
    beta_quantiles: tuple[float, ...] = option(
        (0.25, 0.5, 0.75), "History quantiles separating the buckets.", min=0.0, max=1.0, panel=SEED_PANEL
    )
    history_size: int = option(1000, "Confidences kept in the history.", min=1, panel=SEED_PANEL)
    purify_space: str = option(
        "logits",
        "Purge in logit space (1+b) z(v) - b z(v') or in log-prob space.",
        choices=PURIFY_SPACES,
        panel=SEED_PANEL,
    )
    plausibility_gamma: float | None = option(
        None,
        "VCD-style plausibility: tokens with p < gamma * max p (clean) are pushed down by --plausibility-penalty.",
        min=0.0,
        min_exclusive=True,
        max=1.0,
        panel=SEED_PANEL,
    )
    plausibility_penalty: float = option(
        30.0,
        "Finite logit penalty outside the plausible set: teacher mass there shrinks by exp(-penalty/T); -inf would "
        "make reverse KL infinite, huge values swamp the KL term.",
        min=0.0,
        min_exclusive=True,
        panel=SEED_PANEL,
    )
    divergence: str = option(
        "reverse_kl",
        "Distillation direction: mode-seeking reverse KL (SEED), forward KL, or generalised JSD.",
        choices=DIVERGENCE_KINDS,
        panel=SEED_PANEL,
    )
    jsd_beta: float = option(
        0.5,
        "Mixture weight of the generalised JSD, strictly between 0 and 1 (at 0 or 1 the JSD is identically 0).",
        min=0.0,
        min_exclusive=True,
        max=1.0,
        max_exclusive=True,
        panel=SEED_PANEL,
    )
    temperature: float = option(
        2.0, "Distillation temperature T (loss scaled by T^2).", min=0.0, min_exclusive=True, panel=SEED_PANEL
    )
    distill_weight: float = option(
        0.7,
        "w in w * T^2 KL + (1 - w) CE (0.85 hurt, 0.5 too weak in the reproduction).",
        min=0.0,
        max=1.0,
        panel=SEED_PANEL,
    )
    teacher_batching: str = option(
        "joint",
        "Teacher passes: one forward of 2B (clean + noisy) or two forwards of B (less memory).",
        choices=("joint", "separate"),
        panel=SEED_PANEL,
        affects_result=False,
    )
    loss_chunk: int | None = option(
        None,
        "Compute the loss over chunks of this many tokens (bounds float32 vocab-sized memory).",
        min=1,
        panel=SEED_PANEL,
        affects_result=False,
    )
    teacher_cache: str = option(
        "off",
        "Reuse teacher logits across epochs (top-k in <out>/teacher-cache): clean = z(v) only (exact at k >= vocab); "
        "both = also z(v'), no teacher pass after epoch 1 but each sample keeps its epoch-1 noise "
        "(not fresh per step).",
        choices=("off", *TEACHER_CACHE_MODES),
        panel=SEED_PANEL,
    )
    teacher_cache_k: int = option(
        64,
        "Logits kept per supervised token in the teacher cache (k >= vocabulary size: exact; see docs/performance.md).",
        min=1,
        panel=SEED_PANEL,
    )

    lora_r: int = option(64, "LoRA rank.", min=1, panel=LORA)
    lora_alpha: int = option(128, "LoRA alpha (scale = alpha / r).", min=1, panel=LORA)
    lora_dropout: float = option(0.05, "LoRA dropout.", min=0.0, max=0.9, panel=LORA)
    lora_targets: tuple[str, ...] = option(
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        "Attention projections of the LANGUAGE model that take the adapter (never the vision tower).",
        panel=LORA,
    )

    gpus: int | None = gpus_option()
    nproc: int | None = nproc_option()
    nnodes: int = option(
        1,
        "Nodes in the job (run the same command on each with its --node-rank).",
        min=1,
        panel=DIST,
        affects_result=False,
    )
    node_rank: int = option(0, "This node's index, 0 .. nnodes-1.", min=0, panel=DIST, affects_result=False)
    master_addr: str | None = option(
        None,
        "Address of node 0 for the rendezvous; default 127.0.0.1 (required with --nnodes > 1).",
        panel=DIST,
        affects_result=False,
    )
    master_port: int | None = option(
        None,
        "Rendezvous port on node 0; default a free port (required with --nnodes > 1).",
        min=1,
        max=65535,
        panel=DIST,
        affects_result=False,
    )
    strategy: str = option(
        "ddp",
        "ddp = replicate the model, sum adapter gradients; fsdp = shard the frozen base across ranks (FSDP2) "
        "for models that do not fit one GPU.",
        choices=("ddp", "fsdp"),
        panel=DIST,
        affects_result=False,
    )
    nccl_timeout_s: float = nccl_timeout_option()

    def __post_init__(self) -> None:
        check(self)
        require(
            len(self.beta_values) == len(self.beta_quantiles) + 1,
            "--beta-values",
            f"needs one more value than --beta-quantiles ({len(self.beta_values)} values, {len(self.beta_quantiles)} "
            "quantiles).",
        )
        require(list(self.beta_quantiles) == sorted(self.beta_quantiles), "--beta-quantiles", "must be increasing.")
        require(not (self.resume and self.overwrite), "--resume", "and --overwrite contradict each other; pick one.")
        require(
            not (self.method == "sft" and self.rounds > 1),
            "--rounds",
            "applies to --method seed only (SFT has no teacher to evolve).",
        )
        require(
            self.method == "seed" or self.teacher_cache == "off",
            "--teacher-cache",
            "applies to --method seed only (SFT has no teacher).",
        )
        require(
            self.quantization == "none" or self.rounds == 1,
            "--rounds",
            "> 1 merges adapters into the base, which a 4/8-bit base cannot take; use --quantization none.",
        )
        check_processes(self)
        require(
            self.node_rank < self.nnodes, "--node-rank", f"must be below --nnodes ({self.node_rank} >= {self.nnodes})."
        )
        require(
            self.nnodes == 1 or (self.master_addr is not None and self.master_port is not None),
            "--nnodes",
            "> 1 needs --master-addr and --master-port (node 0's address and a free port there), the same on every "
            "node.",
        )
        require(
            self.strategy == "ddp" or self.quantization == "none",
            "--strategy",
            "fsdp cannot shard a 4/8-bit base; use --quantization none or --strategy ddp.",
        )
        require(
            self.strategy == "ddp" or self.rounds == 1,
            "--strategy",
            "fsdp cannot merge an adapter into a sharded base between rounds; use --rounds 1 or --strategy ddp.",
        )
