"""Config of `seed demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seedcli.config.base import check, option, require
from seedcli.core.choices import DEVICES, DTYPES

MODELS = "Models"
INPUT = "Images and question"
DECODING = "Decoding"
OUTPUT = "Output"

DEFAULT_QUESTION = "Please describe this image in detail."
TINY_MAX_NEW_TOKENS = 48
"""Answer length for the tiny offline models (their answers are short and their words random)."""
MAX_NEW_TOKENS = 512
"""Answer length for real models: the CHAIR protocol's 512, so long descriptions are not cut."""


@dataclass(frozen=True)
class DemoConfig:
    """What `seed demo` compares and shows."""

    adapter: Path | None = option(
        None,
        "Run directory of `seed distill`. Default: the newest finished run under ./runs, "
        "else under ./seed-quickstart/runs.",
        panel=MODELS,
    )
    model: str | None = option(
        None, "Show this model as the SEED column instead of base + adapter (e.g. a `seed merge` output).", panel=MODELS
    )
    baseline: str | None = option(
        None,
        "Model of the base column. Default: the run's base model, or the base recorded in a merged model.",
        panel=MODELS,
    )
    image: Path | None = option(
        None,
        "An image file, or a directory of images (walked in name order). "
        "Default: --num-images held-out images of the data directory.",
        panel=INPUT,
    )
    question: str = option(DEFAULT_QUESTION, "The question asked about every image.", panel=INPUT)
    data: Path | None = option(
        None, "Data directory for ground truth and default images. Default: the run's data directory.", panel=INPUT
    )
    num_images: int = option(
        4,
        "Held-out images shown when --image is not given (the first CHAIR images of the data directory).",
        min=1,
        panel=INPUT,
    )
    vcd: bool = option(
        False,
        "Add a column: the base model with VCD decoding "
        "(alpha 1, beta 0.1, noise step 500, sampling at temperature 1).",
        panel=DECODING,
    )
    max_new_tokens: int | None = option(
        None,
        f"Tokens per answer. Default: {TINY_MAX_NEW_TOKENS} for the tiny offline models, {MAX_NEW_TOKENS} otherwise.",
        min=1,
        panel=DECODING,
    )
    seed: int = option(
        0, "Seed of the VCD column's sampling and noise (base and SEED answer greedily).", panel=DECODING
    )
    batch_size: int = option(4, "Images answered per forward batch.", min=1, panel=DECODING)
    dtype: str = option(
        "auto",
        "Weights and compute dtype; auto = bf16 on GPUs that support it, else fp32.",
        choices=DTYPES,
        panel=MODELS,
    )
    device: str = option("auto", "Device; auto = cuda when available.", choices=DEVICES, panel=MODELS)
    trust_remote_code: bool = option(
        False, "Allow custom model code from the checkpoint (only if you trust it).", panel=MODELS
    )
    html: Path | None = option(
        None, "Also write one self-contained HTML page (images embedded) with the answers side by side.", panel=OUTPUT
    )

    def __post_init__(self) -> None:
        check(self)
        require(not self.question.strip() == "", "--question", "is empty.")
        require(
            self.html is None or self.html.suffix.lower() in (".html", ".htm"),
            "--html",
            f"must end in .html (got {self.html}).",
        )
