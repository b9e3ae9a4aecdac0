"""Config of `seed env`."""

from __future__ import annotations

from dataclasses import dataclass

from seedcli.config.base import check, option


@dataclass(frozen=True)
class EnvConfig:
    """What `seed env` reports."""

    check_hub: bool = option(True, "Probe whether the Hugging Face hub answers (skipped when HF_HUB_OFFLINE=1).")
    hub_timeout_s: float = option(3.0, "Seconds to wait for the hub probe.", min=0.0, min_exclusive=True)

    def __post_init__(self) -> None:
        check(self)
