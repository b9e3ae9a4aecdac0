"""Config of `seed merge`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from seedcli.config.base import check, option, require
from seedcli.core.choices import WEIGHT_DTYPES

INPUT = "Input"
OUTPUT = "Output"
MODEL = "Model"
# What transformers' save_pretrained accepts as a shard size: a positive integer and a unit.
SHARD_SIZE = re.compile(r"[1-9][0-9]*(GIB|MIB|KIB|GB|MB|KB)", re.IGNORECASE)


@dataclass(frozen=True)
class MergeConfig:
    """What `seed merge` reads and writes."""

    run_dir: Path | None = option(
        None, "Run directory of `seed distill` (or a PEFT adapter directory together with --model).", argument=True
    )
    out: Path | None = option(None, "Directory to write the merged model to (required).", panel=OUTPUT)
    overwrite: bool = option(False, "Replace an existing non-empty --out directory.", panel=OUTPUT)
    dtype: str = option(
        "base",
        "Dtype of the merged weights; base = the dtype the base checkpoint is stored in (fp32 when it records none).",
        choices=("base", *WEIGHT_DTYPES),
        panel=MODEL,
    )
    device: str = option(
        "auto",
        "Device the merge and its verification run on; auto = cuda when available.",
        choices=("auto", "cpu", "cuda"),
        panel=MODEL,
    )
    model: str | None = option(
        None,
        "Base model of a PEFT adapter directory made by another tool (alias, hub id, local directory); for a run "
        "directory it replaces the recorded base (e.g. a local copy).",
        panel=INPUT,
    )
    dequantize: bool = option(
        False,
        "Merge an adapter trained on a 4/8-bit base: load the base as trained, dequantize it to --dtype, then merge.",
        panel=MODEL,
    )
    trust_remote_code: bool = option(
        False, "Allow custom model code from the checkpoint (only if you trust it).", panel=MODEL
    )
    push_to_hub: str | None = option(
        None,
        "After merging, upload --out and its model card to this Hugging Face Hub repo (user/name); "
        "needs a login (hf auth login or HF_TOKEN) and network.",
        panel=OUTPUT,
    )
    max_shard_size: str = option(
        "5GB", "Largest safetensors shard (transformers size string, e.g. 5GB, 500MB).", panel=OUTPUT
    )

    def __post_init__(self) -> None:
        check(self)
        require(
            self.run_dir is not None,
            "RUN_DIR",
            "is required: pass the run directory of `seed distill` (or a PEFT adapter directory with --model).",
        )
        require(self.out is not None, "--out", "is required: the directory to write the merged model to.")
        require(
            SHARD_SIZE.fullmatch(self.max_shard_size) is not None,
            "--max-shard-size",
            f"must be a whole number with a unit: KB, MB, GB, KiB, MiB or GiB, e.g. 5GB (got {self.max_shard_size!r}).",
        )
        require(
            self.out is None or self.run_dir is None or Path(self.out).resolve() != Path(self.run_dir).resolve(),
            "--out",
            "must differ from the run directory.",
        )
