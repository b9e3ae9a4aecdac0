"""Multi-process runs on torch.distributed: placement, process group, collectives, launch, sharding.

A process learns where it sits from the standard environment: torchrun / torch's elastic agent
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or a SLURM task
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODELIST). Without either it is one process,
and `seed distill --gpus N` / `--nproc N` starts N workers through torch's elastic launcher
(`launch`), the same machinery as torchrun. NCCL on CUDA, gloo on CPU. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from seedcli.core.collective import Collective
from seedcli.errors import ConfigError, Interrupted, SeedError
from seedcli.reporting import Reporter, Task

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
# Bytes of the sha256 digest kept when comparing replicas through an int64 all-gather (60 bits).
DIGEST_HEX = 15


class PeerLost(SeedError):
    """A collective failed because another process died or timed out (a consequence, not the cause)."""


class RankFailed(SeedError):
    """A worker process failed; carries the failing rank's message and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- where this process sits ----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """This process's place in the job, read from the launcher's environment."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    master_addr: str | None
    master_port: int | None
    source: str  # "torchrun" (also the elastic agent), "slurm" or "single"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[03-05,9],cpu1` -> `gpu03`."""
    head = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist.strip())
    if head is None or not head.group(1) and not head.group(3):
        raise ConfigError(f"cannot read SLURM_NODELIST {nodelist!r}; pass --master-addr.")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={env[name]!r} is not an integer; fix the launcher's environment."
        ) from None


def placement(env: Mapping[str, str] | None = None) -> Placement:
    """Rank, world size and rendezvous address from torchrun or SLURM variables; one process otherwise."""
    env = os.environ if env is None else env
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else None
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        return Placement(_int(env, "RANK"), world, local_rank, local_world, env.get("MASTER_ADDR"), port, "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        world = _int(env, "SLURM_NTASKS")
        # SLURM_NTASKS_PER_NODE looks like "4" or "4(x2)"; the leading count is this node's.
        per_node = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE", ""))
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
        return Placement(
            _int(env, "SLURM_PROCID"),
            world,
            int(env.get("SLURM_LOCALID", "0")),
            int(per_node.group()) if per_node else world,
            addr,
            port,
            "slurm",
        )
    return Placement(0, 1, 0, 1, None, None, "single")


def under_launcher(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun, the elastic agent or a multi-task SLURM step started this process."""
    return placement(env).source != "single"


def process_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return placement().rank


def backend_for(device_type: str) -> str:
    """NCCL for CUDA tensors, gloo for CPU."""
    return "nccl" if device_type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port that was free a moment ago (for a single-node rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# --- collectives ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _peer_guard(rank: int, op: str) -> Iterator[None]:
    """Turn a communication failure into PeerLost, so the launcher reports the rank that caused it."""
    try:
        yield
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"\[[^\]]*\]\s*", "", first)  # drop source locations like [.../pair.cc:553]
        raise PeerLost(
            f"rank {rank}: {op} failed because another process stopped or timed out ({first}); see that rank's error, "
            "or raise --nccl-timeout-s if it is only slow."
        ) from None


class TorchCollective:
    """The engine's Collective (seedcli.core.collective) over an initialised torch.distributed process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device  # where tensors travel: cuda:<local rank> for NCCL, cpu for gloo

    @property
    def backend(self) -> str:
        """nccl or gloo."""
        return str(dist.get_backend())

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and renders progress."""
        return self.rank == 0

    def sum_int(self, value: int) -> int:
        """Sum an integer over processes."""
        total = torch.tensor([value], dtype=torch.int64, device=self.device)
        with _peer_guard(self.rank, "sum_int"):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total.item())

    def any_flag(self, flag: bool) -> bool:
        """True on every process if any process sets the flag (also a barrier)."""
        value = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        with _peer_guard(self.rank, "any_flag"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_parts(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Every process's 1-D tensor (lengths may differ), in rank order, on every process."""
        local = values.reshape(-1).to(self.device)
        with _peer_guard(self.rank, "gather"):
            sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world)]
            dist.all_gather(sizes, torch.tensor([local.numel()], dtype=torch.int64, device=self.device))
            longest = max(1, *(int(s.item()) for s in sizes))  # gloo rejects empty buffers
            padded = torch.zeros(longest, dtype=local.dtype, device=self.device)
            padded[: local.numel()] = local
            parts = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(parts, padded)
        return [part[: int(size.item())].to(values.device) for part, size in zip(parts, sizes)]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate 1-D tensors from all processes in rank order."""
        return torch.cat(self.gather_parts(values))

    def reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum gradients over processes: one all-reduce per dtype over a flat buffer."""
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for param in parameters:
            if param.grad is None:  # every rank must send the same buffer layout
                param.grad = torch.zeros_like(param)
            by_dtype.setdefault(param.grad.dtype, []).append(param)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group]).to(self.device)
            with _peer_guard(self.rank, "reduce_gradients"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n


def init_collective(
    *,
    device_type: str,
    timeout_s: float,
    master_addr: str | None = None,
    master_port: int | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
) -> TorchCollective | None:
    """Join the launcher's process group (NCCL on cuda, gloo on cpu); None for a lone process.

    `force` makes a lone process a group of one (FSDP needs a process group even on one GPU).
    """
    where = placement(env)
    if where.world == 1 and not force:
        return None
    backend = backend_for(device_type)
    device = torch.device("cpu")
    if backend == "nccl":
        visible = torch.cuda.device_count()
        # A scheduler that binds one GPU per task (CUDA_VISIBLE_DEVICES of one) shows it as device 0.
        index = where.local_rank if visible > where.local_rank else 0 if visible == 1 else None
        if index is None:
            raise ConfigError(
                f"local rank {where.local_rank} has no GPU (torch sees {visible}); start at most that many processes "
                "per node (--gpus)."
            )
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    if dist.is_initialized():
        return TorchCollective(device)
    timeout = _dt.timedelta(seconds=timeout_s)
    if where.source == "torchrun":
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    else:
        addr = where.master_addr or master_addr or LOCALHOST
        port = where.master_port or master_port or (free_port() if where.world == 1 else None)
        if port is None:
            raise ConfigError(
                "a SLURM job needs a rendezvous port: pass --master-port (the same on every task) or export "
                "MASTER_PORT."
            )
        dist.init_process_group(
            backend, init_method=f"tcp://{addr}:{port}", rank=where.rank, world_size=where.world, timeout=timeout
        )
    return TorchCollective(device)


def join(
    *,
    device: str,
    processes: int,
    timeout_s: float,
    master_addr: str | None = None,
    master_port: int | None = None,
    force: bool = False,
) -> TorchCollective | None:
    """The process group a command asked for (`processes` across all nodes); None for a lone process.

    Asking for several processes without a launcher is an error: the CLI relaunches itself, a
    library caller must start the workers (`launch`, torchrun, srun).
    """
    from seedcli.models.loading import resolve_device

    where = placement()
    if where.source == "single" and processes > 1:
        raise ConfigError(
            f"{processes} processes were asked for (--gpus/--nproc/--nnodes) but this process was not started by a "
            "launcher; use the `seed` CLI (it relaunches itself), torchrun or srun."
        )
    device_type = "cuda" if resolve_device(device).startswith("cuda") else "cpu"
    return init_collective(
        device_type=device_type, timeout_s=timeout_s, master_addr=master_addr, master_port=master_port, force=force
    )


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of `tensors` (sorted by name)."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        sha.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def replica_digests(collective: Collective, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Every process's digest prefix of `tensors`, in rank order (identical replicas give one value)."""
    mine = int(digest(tensors)[:DIGEST_HEX], 16)
    gathered = collective.gather(torch.tensor([mine], dtype=torch.int64))
    return [format(int(v), f"0{DIGEST_HEX}x") for v in gathered.tolist()]


# --- FSDP2: shard the frozen base ---------------------------------------------------------------------


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Repeated blocks (entries of ModuleLists that hold parameters), outermost lists only."""
    found: list[torch.nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        if isinstance(module, torch.nn.ModuleList):
            children = [c for c in module if any(True for _ in c.parameters())]
            if len(children) > 1:
                found.extend(children)
                taken.append(name)
    return found


def shard_frozen_base(model: Any, collective: TorchCollective) -> Any:
    """Shard a transformers VLM across ranks with FSDP2 before the adapter is added.

    Units: every repeated block (vision and language layers), then the multimodal backbone
    (`model.model`: embeddings, projector, norms). The LM head is called on its own outside the
    backbone (logits only at supervised positions), so it stays replicated, as does an output
    embedding tied to the input embedding.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    backbone = getattr(model, "model", None)
    head = model.get_output_embeddings()
    if backbone is None or head is None:
        raise ConfigError(f"--strategy fsdp does not know how to shard {type(model).__name__}; use --strategy ddp.")
    mesh = init_device_mesh(collective.device.type, (collective.world,))
    replicated = set(head.parameters())
    for block in _blocks(backbone):
        fully_shard(block, mesh=mesh)
    fully_shard(backbone, mesh=mesh, ignored_params=replicated & set(backbone.parameters()) or None)
    head.to(collective.device)
    return model


# --- launching -----------------------------------------------------------------------------------------


def _message(failure: Any) -> str:
    """The first line of a worker's recorded error (a string, or a dict for executable workers)."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = str(message).strip().splitlines()
    return lines[0] if lines else f"exit code {failure.exitcode}"


def _primary(failures: Mapping[int, Any]) -> tuple[int, Any]:
    """The failure that caused the others: not a lost peer, not a signal from the agent, earliest."""

    def secondary(failure: Any) -> bool:
        message = _message(failure)
        return (
            message.startswith(PeerLost.__name__) or failure.exitcode < 0 or message.startswith("To enable traceback")
        )

    rank = min(failures, key=lambda r: (secondary(failures[r]), failures[r].timestamp, r))
    return rank, failures[rank]


def launch(
    entry: Callable[..., Any] | str,
    args: Sequence[Any],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    rendezvous_timeout_s: int = 900,
    shutdown_timeout_s: int = 300,
) -> dict[int, Any]:
    """Run `entry(*args)` (a function or an executable) in `nproc` workers per node via torch's elastic launcher.

    Static rendezvous (like `torchrun --node-rank --master-addr --master-port`), no restarts. On a
    failure or a signal the agent gives the workers `shutdown_timeout_s` to exit before killing them.
    Returns the workers' return values by local rank; a failure raises RankFailed with the
    failing rank's message and exit code, after the launcher has stopped every worker.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and (master_addr is None or master_port is None):
        raise ConfigError(
            "--nnodes > 1 needs --master-addr and --master-port (node 0's address and a port free there)."
        )
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=f"seedcli-{uuid.uuid4().hex[:12]}" if nnodes == 1 else f"seedcli-{master_addr}-{master_port}",
        rdzv_backend="static",
        rdzv_endpoint=f"{master_addr or LOCALHOST}:{master_port or free_port()}",
        rdzv_configs={"rank": node_rank, "timeout": rendezvous_timeout_s},
        max_restarts=0,
        start_method="spawn",
        shutdown_timeout=shutdown_timeout_s,
    )
    try:
        return elastic_launch(config, entry)(*args)
    except SignalException as exc:
        # The agent forwarded the signal; workers finish their step, save a checkpoint and exit.
        raise Interrupted(
            f"interrupted by signal {exc.sigval}; the workers saved a checkpoint at the end of their step: continue "
            "with --resume --out <the run directory>."
        ) from None
    except ChildFailedError as exc:
        rank, failure = _primary(exc.failures)
        raise RankFailed(
            f"rank {rank} failed: {_message(failure)}", failure.exitcode if failure.exitcode > 0 else 1
        ) from None


def relaunch_cli(
    argv: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `python -m seedcli ARGV` in `nproc` workers per node; their stdout and stderr are this one's."""
    env = os.environ if env is None else env
    if "OMP_NUM_THREADS" not in env:
        # As torchrun does: N workers with all cores each oversubscribe the CPU (speed only).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    launch(
        sys.executable,
        ["-m", "seedcli", *argv],
        nproc=nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
    )


def record_failure(exc: BaseException) -> None:
    """Write `exc` to the elastic agent's error file so the launcher reports this rank's message."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE") or not isinstance(exc, Exception):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(exc)


def check_gpus(gpus: int | None) -> None:
    """`--gpus N` needs N visible CUDA devices on this node."""
    if gpus is None:
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < gpus:
        raise ConfigError(
            f"--gpus {gpus}: torch sees {visible} CUDA device(s) on this node; lower --gpus, check "
            f"CUDA_VISIBLE_DEVICES, or use --device cpu --nproc {gpus}."
        )


# --- progress from non-main ranks ------------------------------------------------------------------------


class _Silent:
    def advance(self, n: int = 1, **fields: Any) -> None:
        """Rank 0 renders progress."""


class RankReporter:
    """For ranks > 0: progress and logs are rank 0's job; warnings still show, prefixed with the rank."""

    def __init__(self, inner: Reporter, rank: int) -> None:
        self.inner, self.rank = inner, rank

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Task]:
        """A task that shows nothing."""
        yield _Silent()

    def log(self, fields: Mapping[str, Any]) -> None:
        """Drop the readout (rank 0 logs the global values)."""

    def info(self, message: str) -> None:
        """Drop the message."""

    def warn(self, message: str) -> None:
        """Forward the warning with this rank's prefix."""
        self.inner.warn(f"rank {self.rank}: {message}")


# --- generic helpers for sharded evaluation ------------------------------------------------------------------


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Contiguous slice `rank` of `world`: sizes differ by at most one, the first ranks get the extra."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def gather_records(records: Sequence[Any], collective: TorchCollective | None = None) -> list[Any]:
    """All-gather JSON-able records (each rank's `shard`), concatenated in rank order on every rank.

    Records travel as JSON bytes (no pickle); with contiguous shards the result is in the original
    order. Without a process group it returns the records unchanged.
    """
    if collective is None:
        if not (dist.is_available() and dist.is_initialized()):
            return list(records)
        backend = dist.get_backend()
        collective = TorchCollective(
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )
    payload = torch.frombuffer(bytearray(json.dumps(list(records)).encode("utf-8")), dtype=torch.uint8)
    merged: list[Any] = []
    for part in collective.gather_parts(payload):
        merged.extend(json.loads(part.numpy().tobytes().decode("utf-8")))
    return merged
