"""Configs of `seed detect train`, `seed detect run`, `seed detect evaluate` and `seed detect import`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seedcli.config.base import check, check_processes, gpus_option, nccl_timeout_option, nproc_option, option, require
from seedcli.core.choices import QUANTIZATION
from seedcli.models.loading import DEVICES, DTYPES

MODEL = "Models"
DATA = "Data"
PYRAMID = "Pyramid distillation"
REFINE = "Ternary refinement"
TRAIN = "Training"
INFER = "Inference"
LORA = "Adapter (LoRA)"
TUNING = ("auto", "lora", "full")
DEFAULT_DATA = Path("seed-data")
DEFAULT_RUNGS = ("tiny-qwen2-vl-l", "tiny-qwen2-vl-m", "tiny-qwen2-vl-s")


@dataclass(frozen=True)
class DetectTrainConfig:
    """The pyramid: SFT of the largest rung, progressive KD down the ladder, ternary refinement of the smallest."""

    models: tuple[str, ...] = option(
        DEFAULT_RUNGS,
        "The ladder, largest first (aliases, hub ids, local dirs, tiny rungs). One model = plain fine-tuning.",
        panel=MODEL,
    )
    dtype: str = option("auto", "Weight dtype (auto = bf16 on capable GPUs, else fp32).", choices=DTYPES, panel=MODEL)
    device: str = option("auto", "Device (auto = cuda when available).", choices=DEVICES, panel=MODEL)
    data: Path = option(
        DEFAULT_DATA,
        "Data directory with detect/track{1,2}-{train,dev,unlabelled}.jsonl (`seed prepare --detect`).",
        panel=DATA,
    )
    train_files: tuple[Path, ...] = option(
        (), "Training JSONL files instead of the data directory's (repeatable).", multiple=True, panel=DATA
    )
    dev_files: tuple[Path, ...] = option(
        (),
        "Dev JSONL files scored after each stage (default: the data directory's dev files).",
        multiple=True,
        panel=DATA,
    )
    transfer_files: tuple[Path, ...] = option(
        (),
        "Unlabelled JSONL files for the transfer set (labels in them are ignored; implies --transfer). "
        "With --transfer alone: the data directory's detect/track{1,2}-unlabelled.jsonl.",
        multiple=True,
        panel=DATA,
    )
    out: Path | None = option(None, "Run directory (default runs/detect-<timestamp>).", panel=DATA)
    resume: bool = option(False, "Continue the run in --out from its last completed epoch.", panel=DATA)
    overwrite: bool = option(False, "Replace an existing run directory at --out.", panel=DATA)

    offline: bool = option(
        False,
        "Offline distillation (ablation): the teacher is frozen. Default (online): it keeps training with CE "
        "plus a mutual KL towards the student.",
        panel=PYRAMID,
    )
    pyramid: bool = option(
        True,
        "Distil rung by rung down the ladder; --no-pyramid distils the smallest directly from the largest.",
        panel=PYRAMID,
    )
    transfer: bool = option(
        False,
        "The stages with frozen teachers (refinement; distillation with --offline) also learn the teachers' "
        "answers on an unlabelled transfer set (KL terms only). On the synthetic world, with 1,440 transfer "
        "captions and --refine-epochs 8, it lifted the student 3.8 F1 above direct fine-tuning (docs/detect.md).",
        panel=PYRAMID,
    )
    kd_weight: float = option(1.0, "Weight of the T^2 KL term towards the rung above.", min=0.0, panel=PYRAMID)
    ce_weight: float = option(
        1.0, "Weight of the label cross-entropy in every distillation stage.", min=0.0, panel=PYRAMID
    )
    mutual_weight: float = option(
        0.5, "Online mode: weight of the teacher's KL towards the student.", min=0.0, panel=PYRAMID
    )
    temperature: float = option(
        2.0, "Distillation temperature T (KL scaled by T^2).", min=0.0, min_exclusive=True, panel=PYRAMID
    )

    refine: bool = option(True, "Ternary refinement of the smallest rung after the pyramid.", panel=REFINE)
    refine_labels: float = option(1.0, "Refinement weight of the labels (CE).", min=0.0, panel=REFINE)
    refine_large: float = option(0.5, "Refinement weight of the largest rung (T^2 KL).", min=0.0, panel=REFINE)
    refine_medium: float = option(
        0.5,
        "Refinement weight of the rung just above the smallest (T^2 KL; unused with two rungs).",
        min=0.0,
        panel=REFINE,
    )
    refine_epochs: int = option(2, "Epochs of the refinement stage.", min=1, panel=REFINE)

    augment: bool = option(
        True,
        "Training augmentation: option order, identifier and label-word permutations, caption paraphrases, "
        "mirrored images.",
        panel=TRAIN,
    )
    epochs: int = option(4, "Epochs of the fine-tuning and of every distillation stage.", min=1, panel=TRAIN)
    batch_size: int = option(8, "Questions per optimizer step (over all processes).", min=1, panel=TRAIN)
    lr: float = option(
        1e-3,
        "Peak learning rate (AdamW, warmup + cosine). The default is for tiny rungs trained from scratch; the "
        "world-pretrained tiny rungs were judged at 3e-4 (with --epochs 6), and LoRA on real checkpoints wants "
        "a lower one too (e.g. 2e-4).",
        min=0.0,
        min_exclusive=True,
        panel=TRAIN,
    )
    weight_decay: float = option(0.01, "AdamW weight decay.", min=0.0, panel=TRAIN)
    warmup_ratio: float = option(0.05, "Share of each stage's steps with linear warmup.", min=0.0, max=0.5, panel=TRAIN)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).", min=0.0, panel=TRAIN)
    gradient_checkpointing: bool = option(
        False,
        "Recompute activations in backward (non-reentrant) in the rungs a stage trains: less memory, slower.",
        panel=TRAIN,
        affects_result=False,
    )
    seed: int = option(
        0, "Seed of the training order, augmentation, adapter initialisation and LoRA dropout.", panel=TRAIN
    )

    tuning: str = option(
        "auto",
        "What every stage trains in each rung: lora (an adapter on the language model's attention), full (all "
        "weights), auto (full for rungs of at most 100M parameters, such as the tiny rungs; LoRA above).",
        choices=TUNING,
        panel=LORA,
    )
    lora_r: int = option(16, "LoRA rank.", min=1, panel=LORA)
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).", min=1, panel=LORA)
    lora_dropout: float = option(
        0.05,
        "LoRA dropout (0 makes --nproc N follow one process within float tolerance).",
        min=0.0,
        max=0.9,
        panel=LORA,
    )
    lora_targets: tuple[str, ...] = option(
        (),
        "Attention projections of the LANGUAGE model that take the adapter (default: the family's: "
        "q_proj,k_proj,v_proj,o_proj).",
        panel=LORA,
    )
    quantization: str = option(
        "none",
        "Load the frozen bases of LoRA rungs in 4/8-bit (bitsandbytes, CUDA); needs --tuning lora.",
        choices=QUANTIZATION,
        panel=LORA,
    )

    gpus: int | None = gpus_option()
    nproc: int | None = nproc_option()
    nccl_timeout_s: float = nccl_timeout_option()

    def __post_init__(self) -> None:
        check(self)
        require(len(self.models) >= 1, "--models", "needs at least one model.")
        require(len(set(self.models)) == len(self.models), "--models", "lists a model twice.")
        require(
            self.quantization == "none" or self.tuning == "lora",
            "--quantization",
            "quantizes frozen bases, so it needs --tuning lora (full fine-tuning cannot train 4/8-bit weights).",
        )
        check_processes(self)


@dataclass(frozen=True)
class DetectRunConfig:
    """Flag the hallucinated options of every item of a JSONL file."""

    model: Path = option(Path("runs/detect"), "Run directory of `seed detect train`.", panel=MODEL)
    stage: str | None = option(None, "Which stage's model to use (default: the run's final detector).", panel=MODEL)
    input: Path = option(Path("items.jsonl"), "Detection JSONL file (labels not needed).", panel=DATA)
    output: Path | None = option(None, "Where to write the flagged items as JSONL (default: stdout).", panel=DATA)
    shifts: int = option(3, "Mapping shifts averaged at inference (1 = a single plain pass).", min=1, panel=INFER)
    threshold: float | None = option(
        None,
        "Flag when P(hallucinated) exceeds this (default: the run's thresholds calibrated on dev, else 0.5).",
        min=0.0,
        max=1.0,
        panel=INFER,
    )
    batch_size: int = option(64, "Questions per forward pass.", min=1, panel=INFER)
    dtype: str = option("auto", "Weight dtype.", choices=DTYPES, panel=MODEL)
    device: str = option("auto", "Device.", choices=DEVICES, panel=MODEL)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class DetectEvaluateConfig:
    """Score one or more detectors on labelled items, side by side, with paired significance."""

    model: tuple[str, ...] = option(
        (),
        "Run directory of `seed detect train`, optionally RUN@STAGE (repeatable; the first is the reference).",
        multiple=True,
        panel=MODEL,
    )
    data: Path = option(DEFAULT_DATA, "Data directory whose detect/track{1,2}-<split>.jsonl are scored.", panel=DATA)
    split: str = option("test", "Split of the data directory.", choices=("train", "dev", "test"), panel=DATA)
    input: tuple[Path, ...] = option(
        (), "Labelled JSONL files instead of the data directory's (repeatable).", multiple=True, panel=DATA
    )
    out: Path | None = option(
        None, "Directory for results.json and per-model predictions (default: none written).", panel=DATA
    )
    calibrate: bool = option(
        True,
        "Calibrate each model's thresholds on the dev split with the same --shifts (the data directory's dev "
        "files, or --dev-input); --no-calibrate uses the thresholds stored in each run.",
        panel=INFER,
    )
    dev_input: tuple[Path, ...] = option(
        (), "Labelled dev JSONL files for --calibrate (repeatable).", multiple=True, panel=DATA
    )
    shifts: int = option(3, "Mapping shifts averaged at inference (1 = a single plain pass).", min=1, panel=INFER)
    threshold: float | None = option(
        None,
        "Flag when P(hallucinated) exceeds this (default: the run's thresholds calibrated on dev, else 0.5).",
        min=0.0,
        max=1.0,
        panel=INFER,
    )
    batch_size: int = option(64, "Questions per forward pass.", min=1, panel=INFER)
    dtype: str = option("auto", "Weight dtype.", choices=DTYPES, panel=MODEL)
    device: str = option("auto", "Device.", choices=DEVICES, panel=MODEL)

    def __post_init__(self) -> None:
        check(self)
        require(
            len(self.model) >= 1,
            "--model",
            "is required (a run directory of `seed detect train`; repeat it to compare).",
        )


@dataclass(frozen=True)
class DetectImportConfig:
    """Validate an external detection file and copy it (with its images) into a data directory."""

    input: Path = option(Path("items.jsonl"), "External JSONL file in the detection format.", panel=DATA)
    images: Path | None = option(None, "Root of relative image paths (default: the file's directory).", panel=DATA)
    data: Path = option(DEFAULT_DATA, "Data directory to import into (written to DATA/detect/NAME.jsonl).", panel=DATA)
    name: str = option("imported", "Name of the imported set (file stem).", panel=DATA)
    from_chair: bool = option(
        False,
        "--input is a samples.jsonl of `seed evaluate --chair`: build Track 1 items from its captions, "
        "object options labelled by the CHAIR ground truth (images from --data's CHAIR images).",
        panel=DATA,
    )
    chair_model: str | None = option(None, "With --from-chair: keep only this model label's captions.", panel=DATA)
    overwrite: bool = option(False, "Replace an existing set of the same name.", panel=DATA)

    def __post_init__(self) -> None:
        check(self)
        require(
            self.name.replace("-", "").replace("_", "").isalnum(), "--name", "may hold only letters, digits, - and _."
        )
