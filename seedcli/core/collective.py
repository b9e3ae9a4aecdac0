"""The engine's seam to other processes: a `Collective` protocol and its single-process implementation.

`seedcli.distributed.TorchCollective` implements it over a torch.distributed process group. The
engine never asks which kind it holds: `backend` is None exactly when there is no process group.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Collective(Protocol):
    """Cross-process operations the training loop needs; every process calls them in the same order."""

    rank: int
    world: int
    device: torch.device  # where this process computes (and where tensors travel between processes)

    @property
    def backend(self) -> str | None:
        """The process group's backend (nccl, gloo), or None for a lone process."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and renders progress."""

    def sum_int(self, value: int) -> int:
        """Sum an integer over processes."""

    def any_flag(self, flag: bool) -> bool:
        """True on every process if any process sets the flag (also a barrier)."""

    def gather_parts(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Every process's 1-D tensor (lengths may differ), in rank order."""

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate 1-D tensors from all processes in rank order."""

    def reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum gradients over processes."""


class LocalCollective:
    """One process: every operation is the identity."""

    rank = 0
    world = 1
    backend = None
    is_main = True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sum_int(self, value: int) -> int:
        """The value itself."""
        return value

    def any_flag(self, flag: bool) -> bool:
        """The flag itself."""
        return flag

    def gather_parts(self, values: torch.Tensor) -> list[torch.Tensor]:
        """This process's tensor, alone."""
        return [values.reshape(-1)]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """The tensor itself (1-D)."""
        return values.reshape(-1)

    def reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Nothing to sum."""
