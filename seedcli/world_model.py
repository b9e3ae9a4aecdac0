"""The quickstart's base model: tiny-llava trained (all parameters, cross-entropy) on a synthetic world.

The tiny builders give random weights; SEED needs a base model that has learned the world,
including its co-occurrence prior ("fork, therefore knife"). This module trains one with the
project's own encoding (`seedcli.models.chat.encode`: only assistant tokens are supervised) on the
data directory's training split - never its POPE or CHAIR images - and caches it under
`cache_root()/world/` keyed by a fingerprint of the world, the model and the recipe. The result is
an ordinary checkpoint (`save_pretrained` for model and processor) that `seed distill --model DIR`
and `seed evaluate --model DIR` load through `from_pretrained` like any other.

Training is deterministic on CPU for a given recipe: one torch seed, a seeded permutation of the
records per epoch, fp32.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.config.base import to_dict
from seedcli.errors import DataError
from seedcli.reporting import Reporter

BASE_MODEL = "tiny-llava"
RECIPE_VERSION = 1  # bump when the training code changes what it computes
META_FILE = "world_model.json"


@dataclass(frozen=True)
class WorldRecipe:
    """How the base model learns the world (recorded in the checkpoint and in quickstart results)."""

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 256
    seed: int = 0


def world_fingerprint(data_dir: Path) -> dict[str, Any]:
    """What identifies a data directory's training content: the records' and the images' checksums."""
    from seedcli.data.datadir import TRAIN_DIR, open_data_dir, sha256_file

    data = open_data_dir(Path(data_dir))
    # Only the Arrow shards: datasets' state.json carries a fresh random fingerprint on every write.
    records = {
        k: v
        for k, v in data.manifest.get("files", {}).items()
        if k.startswith(TRAIN_DIR + "/") and k.endswith(".arrow")
    }
    if not records:
        raise DataError(
            f"--data {data_dir}: the manifest lists no training records; prepare a world with `seed prepare "
            "--synthetic`."
        )
    images = hashlib.sha256()
    root = data.image_root("train")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        images.update(f"{path.relative_to(root).as_posix()}:{sha256_file(path)}\n".encode())
    return {"records": records, "images": images.hexdigest()}


def fingerprint(data_dir: Path, recipe: WorldRecipe) -> str:
    """Short hash of world + tiny model + recipe + library versions: the cache key."""
    import torch
    import transformers

    from seedcli.models import tiny

    spec = {
        "world": world_fingerprint(data_dir),
        "model": BASE_MODEL,
        "model_fingerprint": tiny.fingerprint(BASE_MODEL),
        "recipe": to_dict(recipe),
        "recipe_version": RECIPE_VERSION,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir(data_dir: Path, recipe: WorldRecipe) -> Path:
    """Where the trained model for this world and recipe lives."""
    from seedcli.models.tiny import cache_root

    return cache_root() / "world" / f"{BASE_MODEL}-world-{fingerprint(data_dir, recipe)}"


def _encode_all(loaded: Any, data: Any, rows: list[dict[str, Any]], max_length: int, reporter: Reporter) -> list[Any]:
    from PIL import Image

    from seedcli.models.chat import encode

    encoded = []
    with reporter.task("encoding world conversations", total=len(rows), unit="rec") as task:
        for row in rows:
            with Image.open(data.resolve_image("train", row["image"])) as handle:
                image = handle.convert("RGB")
            encoded.append(
                encode(
                    loaded.processor,
                    loaded.family,
                    row["messages"],
                    image,
                    max_length=max_length,
                    where=f"record {row['id']}",
                )
            )
            task.advance()
    return encoded


def train(data_dir: Path, out: Path, recipe: WorldRecipe, reporter: Reporter) -> dict[str, Any]:
    """Train tiny-llava on the data directory's training split and save it to `out`; returns stats."""
    import torch

    from seedcli.core.distill import warmup_cosine
    from seedcli.core.losses import cross_entropy_sum
    from seedcli.data.datadir import open_data_dir, validate_record
    from seedcli.models.chat import collate
    from seedcli.models.forward import model_inputs, supervised, supervised_logits
    from seedcli.models.loading import load

    started = time.monotonic()
    data = open_data_dir(Path(data_dir))
    rows = [validate_record(row, where=f"{data_dir}/train").to_row() for row in data.train()]
    torch.manual_seed(recipe.seed)
    loaded = load(BASE_MODEL, dtype="fp32", device="cpu")
    samples = _encode_all(loaded, data, rows, recipe.max_length, reporter)
    model = loaded.model
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    pad = loaded.processor.tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(samples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, int(recipe.warmup_ratio * total), recipe.min_lr_ratio)
    )
    model.train()
    epoch_losses: list[float] = []
    with reporter.task("training the world model", total=total, unit="step") as task:
        for epoch in range(recipe.epochs):
            order = torch.randperm(
                len(samples), generator=torch.Generator().manual_seed(recipe.seed * 1000 + epoch)
            ).tolist()
            loss_sum, token_sum = 0.0, 0
            for start in range(0, len(order), recipe.batch_size):
                batch = collate([samples[i] for i in order[start : start + recipe.batch_size]], pad_id=pad)
                sup = supervised(batch["labels"])
                logits = supervised_logits(model, model_inputs(batch), sup.mask)  # [N, V]
                loss_total = cross_entropy_sum(logits, sup.targets)
                loss = loss_total / sup.count
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss_total.detach())
                token_sum += sup.count
                task.advance(1, epoch=epoch + 1, loss=float(loss.detach()))
            epoch_losses.append(loss_sum / max(token_sum, 1))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    stats = {
        "base_model": BASE_MODEL,
        "records": len(samples),
        "steps": total,
        "epoch_losses": epoch_losses,
        "seconds": round(time.monotonic() - started, 2),
        "recipe": to_dict(recipe),
    }
    model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    atomic.write_json(Path(out) / META_FILE, stats)
    return stats


def ensure_world_model(data_dir: Path, recipe: WorldRecipe, reporter: Reporter) -> tuple[Path, dict[str, Any]]:
    """The cached world-trained model for `data_dir` and `recipe`, training it first if absent."""
    import transformers

    final = cache_dir(data_dir, recipe)
    meta = final / META_FILE
    if meta.is_file() and (final / "config.json").is_file():
        reporter.info(f"world model: cached at {final}")
        return final, json.loads(meta.read_text(encoding="utf-8"))
    transformers.logging.disable_progress_bar()
    reporter.info(f"world model: training {BASE_MODEL} on {data_dir} (cached afterwards at {final})")
    try:
        with atomic.staged_dir(final, overwrite=True) as stage:
            stats = train(data_dir, stage, recipe, reporter)
    except OSError:
        if meta.is_file():  # another process finished the same training first
            return final, json.loads(meta.read_text(encoding="utf-8"))
        raise
    return final, stats
