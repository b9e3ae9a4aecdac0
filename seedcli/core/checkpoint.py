"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

    checkpoints/step-N/
      adapter/                 PEFT adapter (adapter_model.safetensors + adapter_config.json)
      optimizer.safetensors    optimizer state tensors, keys "state.<param>.<name>"
      rng.safetensors          torch CPU (and CUDA) generator states
      state.json               written last: position, optimizer param groups and scalars,
                               scheduler state, python RNG, confidence history, counters
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from seedcli import atomic

STATE = "state.json"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    directory: Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: dict[str, Any],
    history: list[float],
    counters: dict[str, Any],
) -> Path:
    """Write a complete checkpoint into `directory` (staged, then renamed into place)."""
    from safetensors.torch import save_file

    with atomic.staged_dir(directory, overwrite=True) as tmp:
        model.save_pretrained(str(tmp / "adapter"))
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = state
        save_file(rng, str(tmp / "rng.safetensors"))
        py_state = random.getstate()
        atomic.write_json(
            tmp / STATE,
            {
                "position": position,
                "optimizer": meta,
                "scheduler": scheduler.state_dict(),
                "python_random": [py_state[0], list(py_state[1]), py_state[2]],
                "history": history,
                "counters": counters,
            },
        )
    return directory


def newest(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (has state.json), or None."""
    found = [p for p in Path(checkpoints).glob("step-*") if (p / STATE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (incomplete ones too)."""
    found = sorted(Path(checkpoints).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for path in found[:-keep] if keep > 0 else found:
        shutil.rmtree(path, ignore_errors=True)


def load(directory: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG from `directory`; returns state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    weights = load_file(str(directory / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"checkpoint {directory} has adapter weights the model does not: {missing[:3]}")
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return state
