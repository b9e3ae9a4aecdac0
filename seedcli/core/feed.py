"""The data pipeline of `seed distill`: micro-batches encoded ahead of the step by a torch DataLoader.

Image decoding, the processor, the chat template and SEED's image noise run in `--num-workers`
worker processes while the model computes. Which records a step takes is a pure function of its
position (`Plan`), and each sample's noise is seeded from its position too, so a worker encodes
exactly what the training process would: results are bit-identical to `--num-workers 0`, and a
resumed run simply starts the stream at its step.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

# Encodes one micro-batch: (loaded, data, rows, indices, cfg, round, step, alpha, reporter) -> micro or None.
Encode = Callable[..., Any]


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, round_index: int, epoch: int, records: int) -> tuple[int, ...]:
    """The shuffled record order of one epoch of one round."""
    shuffle = torch.Generator().manual_seed(seed + 1000 * round_index + epoch)
    return tuple(torch.randperm(records, generator=shuffle).tolist())


@dataclass(frozen=True)
class Plan:
    """Which records each optimizer step gives this process (a pure function of the position)."""

    seed: int
    round_index: int
    records: int
    steps_per_epoch: int
    per_process: int  # samples per step on this process
    world: int
    rank: int
    batch_size: int

    def indices(self, step: int) -> list[int]:
        """This process's records of optimizer step `step`, in batch order."""
        order = epoch_order(self.seed, self.round_index, step // self.steps_per_epoch, self.records)
        start = (step % self.steps_per_epoch) * self.per_process * self.world + self.rank * self.per_process
        return list(order[start : start + self.per_process])

    @property
    def micros(self) -> int:
        """Micro-batches per step on this process."""
        return -(-self.per_process // self.batch_size)

    def micro(self, step: int, index: int) -> list[int]:
        """The records of micro-batch `index` of step `step`."""
        return self.indices(step)[index * self.batch_size : (index + 1) * self.batch_size]


class _Collect:
    """A reporter for worker processes: keeps warnings to be shown by the training process."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        """Keep the warning."""
        self.warnings.append(message)

    def info(self, message: str) -> None:
        """Workers have nothing to say."""

    def log(self, fields: Mapping[str, Any]) -> None:
        """Workers log nothing."""


@dataclass(frozen=True)
class Fed:
    """One micro-batch as the pipeline delivers it (CPU tensors; None when no record was usable)."""

    step: int
    micro: Any
    warnings: tuple[str, ...] = ()
    error: BaseException | None = field(default=None)

    def pin_memory(self) -> Fed:
        """Page-locked copy for fast, asynchronous host-to-GPU copies (the DataLoader calls this)."""
        return Fed(self.step, self.micro.pin_memory() if self.micro is not None else None, self.warnings, self.error)


class MicroBatches(Dataset):
    """Item k is micro-batch k % micros of step start + k // micros, encoded by `encode`."""

    def __init__(self, encode: Encode, plan: Plan, start: int, stop: int, inputs: tuple[Any, ...]) -> None:
        self.encode, self.plan, self.start, self.stop = encode, plan, start, stop
        self.loaded, self.data, self.rows, self.cfg, self.alpha = inputs

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.micros

    def __getitem__(self, k: int) -> Fed:
        step, index = divmod(k, self.plan.micros)
        step += self.start
        collect = _Collect()
        indices = self.plan.micro(step, index)
        try:
            micro = self.encode(
                self.loaded, self.data, self.rows, indices, self.cfg, self.plan.round_index, step, self.alpha, collect
            )
        except Exception as exc:  # noqa: BLE001 - raised again, unchanged, in the training process
            return Fed(step, None, tuple(collect.warnings), exc)
        return Fed(step, micro, tuple(collect.warnings))


def _quiet_worker(worker_id: int) -> None:
    # Ctrl-C and SIGTERM are the training process's to handle (it saves a checkpoint); a worker that
    # died of them would break the step that still needs its data. Workers exit with their parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def default_workers(processes: int) -> int:
    """Encoding workers per training process when --num-workers is not given: a share of the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cores // max(processes, 1) - 1))


def steps(dataset: MicroBatches, *, workers: int, pin: bool) -> Iterator[list[Fed]]:
    """The micro-batches of each step from `dataset.start` on, `workers` processes encoding ahead."""
    if workers > 0:
        # Forked workers inherit the process; the tokenizers library would warn (and disable itself) there.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=range(len(dataset)),
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=pin,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_quiet_worker if workers > 0 else None,
        generator=torch.Generator(),  # the loader's own seeds never touch the global RNG
    )
    batch: list[Fed] = []
    for fed in loader:
        batch.append(fed)
        if len(batch) == dataset.plan.micros:
            yield batch
            batch = []


def _identity(item: Fed) -> Fed:
    return item
