"""Config of `seed quickstart`: the synthetic world, the world model, both distill runs, the evaluation.

Every value that changes a result is a field here and is saved in quickstart.json. `--fast` swaps
in the shortened CI settings of `FAST` (a smaller world, fewer steps, fewer evaluation items); the
values actually used are recorded as `resolved` in the results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from seedcli.config.base import check, option, require
from seedcli.data.world_defaults import WORLD_NAMES
from seedcli.world_model import WorldRecipe

OUTPUT = "Output"
WORLD = "World and base model"
DISTILL = "SEED and SFT runs"
EVAL = "Evaluation"


@dataclass(frozen=True)
class QuickstartConfig:
    """What `seed quickstart` builds, trains and compares."""

    out: Path = option(
        Path("seed-quickstart"),
        "Directory for everything the quickstart writes (data/, runs/seed, runs/sft, eval/, quickstart.json).",
        panel=OUTPUT,
    )
    overwrite: bool = option(
        False,
        "Write into --out even if `seed quickstart` did not create it (its data/, runs/, eval/ and quickstart.json "
        "are replaced; other files are left alone).",
        panel=OUTPUT,
    )
    fast: bool = option(
        False,
        "Shortened settings for CI (smaller world, fewer steps and items); the numbers are not meaningful.",
        panel=OUTPUT,
    )
    seed: int = option(
        0, "One seed for everything: the world, the world model's training, and both distill runs.", panel=OUTPUT
    )
    threads: int = option(
        1,
        "CPU threads for torch (tiny models: more threads mostly add contention; 0 = torch's default).",
        min=0,
        panel=OUTPUT,
    )

    synthetic_images: int = option(
        600, "Images rendered for the synthetic world (a quarter are held out for evaluation).", min=8, panel=WORLD
    )
    cooccurrence: float = option(
        0.9, "Probability that an anchor object's usual partner appears with it.", min=0.0, max=1.0, panel=WORLD
    )
    world: str = option(
        "llava-like",
        "World preset of the text-borne hallucination sources: llava-like (yes-biased questions, a few "
        "hallucinated annotations; docs/data.md) or clean (balanced, perfect labels).",
        choices=WORLD_NAMES,
        panel=WORLD,
    )
    yes_rate: float | None = option(
        None, "Share of training existence questions drawn as 'yes' (default: the preset's).", min=0.0, max=1.0,
        panel=WORLD,
    )
    label_noise: float | None = option(
        None, "Probability that a training description or 'yes' answer names an absent usual partner (default: "
        "the preset's).", min=0.0, max=1.0, panel=WORLD,
    )
    partner_negatives: float | None = option(
        None, "Probability that a 'no' question asks about an absent usual partner (default: the preset's).",
        min=0.0, max=1.0, panel=WORLD,
    )
    base_epochs: int = option(
        WorldRecipe.epochs, "Epochs of full-parameter training of the tiny base model on the world.", min=1, panel=WORLD
    )
    base_lr: float = option(
        WorldRecipe.lr, "Peak learning rate of the base model's training.", min=0.0, min_exclusive=True, panel=WORLD
    )
    base_batch_size: int = option(
        WorldRecipe.batch_size, "Batch size of the base model's training.", min=1, panel=WORLD
    )

    steps: int = option(120, "Optimizer steps of each distill run (SEED and SFT get the same).", min=1, panel=DISTILL)
    batch_size: int = option(8, "Samples per forward pass in the distill runs.", min=1, panel=DISTILL)
    grad_accum: int = option(1, "Forward passes per optimizer step in the distill runs.", min=1, panel=DISTILL)
    lr: float = option(
        2e-3,
        "Peak learning rate of the adapter (tiny models need far more than the 7B recipe's 2e-6).",
        min=0.0,
        min_exclusive=True,
        panel=DISTILL,
    )
    lora_r: int = option(16, "LoRA rank of the adapter.", min=1, panel=DISTILL)
    lora_alpha: int = option(32, "LoRA alpha.", min=1, panel=DISTILL)
    noise_alpha: float = option(
        0.3,
        "SEED's noise level a of v' = sqrt(a) v + sqrt(1-a) eps.",
        min=0.0,
        min_exclusive=True,
        max=1.0,
        panel=DISTILL,
    )
    distill_weight: float = option(0.7, "SEED's w in w T^2 KL + (1-w) CE.", min=0.0, max=1.0, panel=DISTILL)
    temperature: float = option(2.0, "SEED's distillation temperature T.", min=0.0, min_exclusive=True, panel=DISTILL)
    # Four times `seed distill`'s defaults, chosen on dev seed 0: the world model has memorised its
    # training conversations, so at the defaults the purified target hardly differs from the clean
    # one (KL term ~0.2 at T = 2); x4 brings it near the ~1.3 of a healthy 7B run (docs/results.md).
    beta_values: tuple[float, ...] = option(
        (4.4, 3.2, 2.4, 1.6), "SEED's purge strength per confidence bucket, lowest confidence first.", min=0.0,
        panel=DISTILL,
    )

    limit: int | None = option(
        None, "Evaluate only the first N questions per POPE split and N CHAIR images (default: all).", min=1, panel=EVAL
    )
    max_new_tokens_chair: int = option(
        512, "New-token limit for CHAIR captions (the protocol's 512).", min=1, panel=EVAL
    )
    vcd: bool = option(
        True, "Also evaluate the base model with Visual Contrastive Decoding (two forward passes a token).", panel=EVAL
    )
    examples: int = option(
        3,
        "Examples to show where the base model hallucinates an object's usual partner and SEED does not.",
        min=0,
        panel=EVAL,
    )

    def __post_init__(self) -> None:
        check(self)
        require(
            len(self.beta_values) == 4,
            "--beta-values",
            f"needs 4 values, one per confidence quartile (got {len(self.beta_values)}).",
        )

    def resolved(self) -> QuickstartConfig:
        """The settings in force: this config, with `FAST`'s values where --fast is set."""
        if not self.fast:
            return self
        return replace(self, **FAST)


# Shortened CI settings (--fast): about a minute on two shared cores; numbers are a plumbing check.
FAST: dict[str, object] = {
    "synthetic_images": 120,
    "base_epochs": 2,
    "steps": 4,
    "batch_size": 4,
    "limit": 24,
    "max_new_tokens_chair": 32,
    "examples": 1,
}
