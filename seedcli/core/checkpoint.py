"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

    checkpoints/step-N/        (one round; step-R-N with --rounds > 1: round R, step N)
      adapter/                 PEFT adapter (adapter_model.safetensors + adapter_config.json)
      optimizer.safetensors    optimizer state tensors, keys "state.<param>.<name>"
      rng.safetensors          torch CPU (and CUDA) generator states
      state.json               written last: position, optimizer param groups and scalars,
                               scheduler state, python RNG, confidence history, the loop's state

Checkpoints are ordered by their position (round, step), read from the name by `position`, never by
the name's text: `step-2-10` comes after `step-2-9`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seedcli import atomic
from seedcli.errors import DataError, SeedError, StorageError, storage_error
from seedcli.rundir import safetensors_problem

if TYPE_CHECKING:
    from peft import PeftModel
    from torch.optim.lr_scheduler import LRScheduler

STATE = "state.json"
ADAPTER_WEIGHTS = "adapter/adapter_model.safetensors"
_NAME = re.compile(r"step-(\d+)(?:-(\d+))?")


def name(round_index: int, step: int, rounds: int) -> str:
    """The directory name of the checkpoint at (round, step): step-N for one round, step-R-N for more."""
    return f"step-{round_index}-{step}" if rounds > 1 else f"step-{step}"


def position(path: Path) -> tuple[int, int] | None:
    """(round, step) of a checkpoint directory, from its name; None for anything else."""
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        return None
    first, second = match.groups()
    return (int(first), int(second)) if second is not None else (1, int(first))


def _ordered(checkpoints: Path) -> list[Path]:
    found = [(position(p), p) for p in Path(checkpoints).glob("step-*") if p.is_dir()]
    return [p for pos, p in sorted((pos, p) for pos, p in found if pos is not None)]


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, field = key.split(".", 2)
        state.setdefault(int(index), {})[field] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    directory: Path,
    *,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    position: dict[str, Any],
    history: list[float],
    counters: dict[str, Any],
) -> Path:
    """Write a complete checkpoint into `directory` (staged, then renamed into place).

    A full disk (or another refusal of the file system) is a StorageError; the staging is removed and
    older checkpoints stay intact.
    """
    from safetensors.torch import save_file

    try:
        with atomic.staged_dir(directory, overwrite=True) as tmp:
            model.save_pretrained(str(tmp / "adapter"))
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                    rng[f"torch_cuda_{i}"] = cuda_state
            save_file(rng, str(tmp / "rng.safetensors"))
            py_state = random.getstate()
            document = {
                "position": position,
                "optimizer": meta,
                "scheduler": scheduler.state_dict(),
                "python_random": [py_state[0], list(py_state[1]), py_state[2]],
                "history": history,
                "counters": counters,
            }
            atomic.write_json(tmp / STATE, document)
    except Exception as exc:
        problem = storage_error(exc)  # disk full, quota, read-only: also as text from safetensors' Rust code
        if problem is None:
            raise
        kept = newest(directory.parent)
        last = f"the last good checkpoint {kept.name} is kept" if kept else "no earlier checkpoint exists"
        raise StorageError(
            f"saving checkpoint {directory}: {str(problem).rstrip('.')}; {last}; then --resume."
        ) from None
    return directory


def newest(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (has state.json) by (round, step), or None."""
    complete = [p for p in _ordered(checkpoints) if (p / STATE).is_file()]
    return complete[-1] if complete else None


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints by (round, step) (incomplete ones too)."""
    found = _ordered(checkpoints)
    for path in found[:-keep] if keep > 0 else found:
        shutil.rmtree(path, ignore_errors=True)


def remove_staging(checkpoints: Path) -> list[Path]:
    """Delete what a save killed midway left behind (`.step-*.partial`, `.step-*.old`); returns them."""
    debris = [p for pattern in (".step-*.partial", ".step-*.old") for p in Path(checkpoints).glob(pattern)]
    for path in debris:
        shutil.rmtree(path, ignore_errors=True)
    return debris


def _corrupt(path: Path, reason: str) -> DataError:
    checkpoint = next((p for p in path.parents if position(p) is not None), path.parent)
    return DataError(f"checkpoint file {path} is corrupt ({reason}); delete {checkpoint} to resume from an older one.")


def read_state(directory: Path) -> dict[str, Any]:
    """state.json of a checkpoint; a damaged file is a one-line error naming it."""
    path = directory / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, type(exc).__name__) from None
    missing = [
        k
        for k in ("position", "optimizer", "scheduler", "python_random")
        if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise _corrupt(path, f"no {', '.join(missing)}")
    return state


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    problem = safetensors_problem(path)
    if problem:
        raise _corrupt(path, problem)
    return load_file(str(path))


def load(
    directory: Path, *, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG from `directory`; returns state.json."""
    from peft import set_peft_model_state_dict

    state = read_state(directory)
    weights = _tensors(directory / ADAPTER_WEIGHTS)
    optimizer_tensors = _tensors(directory / "optimizer.safetensors")
    rng = _tensors(directory / "rng.safetensors")
    result = set_peft_model_state_dict(model, weights)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        names = (unexpected or missing)[:3]
        raise SeedError(
            f"checkpoint {directory} does not match the adapter being trained ({names}); "
            "was it made with other --lora-* flags?"
        )
    try:
        optimizer.load_state_dict(_unflatten_optimizer(optimizer_tensors, state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        version, internal, gauss = state["python_random"]
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, ValueError, TypeError) as exc:
        raise _corrupt(directory / STATE, f"{type(exc).__name__}: {exc}") from None
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return state
