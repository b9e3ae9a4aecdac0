"""Facts about the software and hardware, for `seed env`, env.json and results files."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

PACKAGES = (
    "seedcli",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "tokenizers",
    "safetensors",
    "typer",
    "rich",
    "pycocotools",
)
HUB_URL = "https://huggingface.co/api/models?limit=1"


def package_versions() -> dict[str, str | None]:
    """Installed version of each relevant package, None when absent."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> dict[str, Any]:
    """Accelerators torch can see, with memory and bf16 support."""
    import torch

    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 2),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["cpu_threads"] = torch.get_num_threads()
    return info


def hub_status(check: bool, timeout_s: float) -> str:
    """'offline mode set', 'reachable', 'unreachable (...)' or 'not checked'."""
    flags = [
        k
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
        if os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
    ]
    if flags:
        return f"offline mode set ({', '.join(flags)})"
    if not check:
        return "not checked"
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(HUB_URL, timeout=timeout_s) as response:  # noqa: S310 - fixed https URL
            return f"reachable (HTTP {response.status})"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return f"unreachable ({type(exc).__name__})"


def environment(check_hub: bool = False, hub_timeout_s: float = 3.0) -> dict[str, Any]:
    """The block users paste into bug reports, also saved as env.json in every run."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "devices": devices(),
        "hub": hub_status(check_hub, hub_timeout_s),
        "hf_home": os.environ.get("HF_HOME"),
    }
