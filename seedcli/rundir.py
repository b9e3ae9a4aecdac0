"""The run directory written by `seed distill` and read by `merge`, `evaluate` and `demo`.

    RUN/
      config.json        {"seedcli_version", "command": "distill", "config": {...DistillConfig...},
                          "resolved": {"model_source", "family", "dtype", "chat_template", ...}}
      env.json           versions and devices (seedcli.environment)
      metrics.jsonl      one line per logged step
      adapter/           adapter_model.safetensors + adapter_config.json (PEFT), the last round's
      rounds/round-K/adapter/   with --rounds N > 1: every round's adapter, applied in order
      checkpoints/step-N/       resumable state (step-R-N with several rounds; seedcli.core.checkpoint)
      teacher-cache/     with --teacher-cache: top-k teacher logits kept across epochs
      .lock              held (fcntl) by the process that writes the run; names its PID
      summary.json       written last: a run without it is incomplete

With N rounds, round K's adapter was trained on the base with rounds 1..K-1 merged in, so the
evolved model is: base, merge rounds 1..N-1, then the last adapter (merged or attached).

This module also owns a run's life cycle: the default path, which settings a resumed run takes, the
creation of the directory (and its removal when a new run fails before its first checkpoint), the
lock that keeps a second process out, metrics truncation on resume and the summary.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seedcli import atomic
from seedcli.errors import ConfigError, DataError

if TYPE_CHECKING:
    from seedcli.config.distill import DistillConfig
    from seedcli.reporting import Reporter

# errno of flock on a file system without locks (some network mounts): callers then run unguarded.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
ROUNDS = "rounds"
CHECKPOINTS = "checkpoints"
TEACHER_CACHE = "teacher-cache"
LOCK = ".lock"
DEFAULT_RUNS_ROOT = Path("runs")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}.") from None


@dataclass(frozen=True)
class Run:
    """A run directory opened for reading."""

    root: Path
    config: dict[str, Any] = field(repr=False)
    summary: dict[str, Any] | None = field(repr=False)

    @property
    def complete(self) -> bool:
        """Whether the run finished (summary.json exists)."""
        return self.summary is not None

    @property
    def base_model(self) -> str:
        """The model the run trained on, as the user named it (alias, hub id, dir, tiny name)."""
        return str(self.config["config"]["model"])

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved DistillConfig fields."""
        return dict(self.config["config"])

    def adapter_chain(self) -> list[Path]:
        """Adapter directories in the order they apply to the base model."""
        rounds = sorted((self.root / ROUNDS).glob("round-*/adapter"), key=lambda p: int(p.parent.name.split("-")[1]))
        chain = rounds or [self.root / ADAPTER]
        for path in chain:
            if not (path / "adapter_config.json").is_file():
                raise DataError(
                    f"{self.root}: adapter missing at {path} (was the run interrupted? "
                    f"resume it with `seed distill --resume --out {self.root}`)."
                )
        return chain


def open_run(path: Path | str, *, flag: str = "--adapter", require_complete: bool = True) -> Run:
    """Open and check a run directory; errors name the flag and what to do."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{flag} {root}: no such run directory.")
    if not (root / CONFIG).is_file():
        raise DataError(f"{flag} {root}: not a seedcli run directory (no {CONFIG}).")
    config = _read_json(root / CONFIG)
    summary = _read_json(root / SUMMARY) if (root / SUMMARY).is_file() else None
    if require_complete and summary is None:
        raise DataError(
            f"{flag} {root}: the run is incomplete (no {SUMMARY}); finish it with `seed distill --resume --out {root}`."
        )
    return Run(root=root, config=config, summary=summary)


def newest_run(runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """The most recently finished run under `runs_root` (by summary.json time)."""
    done = [p.parent for p in Path(runs_root).glob(f"*/{SUMMARY}")]
    if not done:
        raise DataError(f"no finished run under {runs_root}/; run `seed distill` first or pass --adapter RUN_DIR.")
    return max(done, key=lambda p: (p / SUMMARY).stat().st_mtime)


def apply_adapters(model: Any, chain: list[Path], *, merge_last: bool = False) -> Any:
    """Apply an adapter chain: merge all but the last; attach the last (or merge it too)."""
    from peft import PeftModel

    for path in chain:
        check_adapter(path)
    for path in chain[:-1]:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(chain[-1]))
    model.eval()
    return model.merge_and_unload() if merge_last else model


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (missing, empty, truncated, bad header), or None if it looks whole."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size < 8:
        return "empty" if size == 0 else f"{size} bytes, shorter than a header"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if 8 + length > size:
            return "truncated header"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable header"
    ends = [
        entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict)
    ]
    expected = 8 + length + max(ends, default=0)
    return None if size == expected else f"{size} bytes where the header needs {expected} (truncated?)"


def check_adapter(path: Path) -> None:
    """A one-line DataError naming the file when an adapter's weights are damaged."""
    weights = Path(path) / "adapter_model.safetensors"
    problem = safetensors_problem(weights)
    if problem:
        raise DataError(f"adapter file {weights} is corrupt ({problem}); retrain or restore it.")


# --- life cycle of a run directory (seed distill) ----------------------------------------------------------


def default_out(model: str, method: str, root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """runs/<model>-<method>-<timestamp>."""
    local = "/" not in model or Path(model).exists()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if local else model.replace("/", "_"))
    return root / f"{slug}-{method}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


class Lock:
    """An exclusive fcntl lock on `<directory>/.lock`, held until `release` or the process ends."""

    def __init__(self, directory: Path, flag: str = "--out") -> None:
        import fcntl

        self.path = Path(directory) / LOCK
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in NO_LOCKS:
                return  # a file system without locks (some network mounts): run unguarded, as before locks
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ConfigError(
                f"{flag} {directory} is in use by another seed process (pid {holder}); wait for it to end or stop it."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Let another process take the directory (the lock file stays: removing it would race)."""
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_free(directory: Path, flag: str = "--out") -> None:
    """Refuse (naming the PID) when another process holds `directory`; takes nothing."""
    if (Path(directory) / LOCK).is_file():
        Lock(directory, flag).release()


def check_out(cfg: DistillConfig, out: Path) -> None:
    """Check --out/--resume/--overwrite before any work; nothing is created here."""
    if cfg.resume:
        if not (out / CONFIG).is_file():
            raise ConfigError(
                f"--resume: {out} is not a run directory (no {CONFIG}); drop --resume to start a new run."
            )
        if (out / SUMMARY).is_file():
            raise ConfigError(f"--resume: {out} already finished (summary.json exists); start a new run instead.")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another path.")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(
                f"--out {out} already exists and is not empty; pass --overwrite to replace it, "
                "--resume to continue it, or choose another path."
            )
        check_free(out)


def create(out: Path, *, overwrite: bool) -> Lock:
    """Make (or, with --overwrite, empty) the run directory and lock it; returns the held lock."""
    out.mkdir(parents=True, exist_ok=True)
    lock = Lock(out)
    if overwrite:
        for entry in out.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return lock


def has_progress(out: Path) -> bool:
    """Whether a run has something to show: a metrics line or a complete checkpoint."""
    metrics = out / METRICS
    return (metrics.is_file() and metrics.stat().st_size > 0) or any((out / CHECKPOINTS).glob("step-*/state.json"))


def discard(out: Path, lock: Lock) -> None:
    """Remove a new run directory whose start failed (before any metrics line or checkpoint)."""
    shutil.rmtree(out, ignore_errors=True)
    lock.release()


def resumed_config(
    cfg: DistillConfig, out: Path, given: frozenset[str] | None, world: int, reporter: Reporter
) -> DistillConfig:
    """The settings of a resumed run: config.json's, except fields given explicitly that do not change results.

    A given field that changes results must agree with config.json. `given=None` (a library call)
    counts fields that differ from their defaults as given. The global batch (batch-size x
    grad-accum x processes) is kept: on another number of processes --grad-accum is chosen to keep
    it unless the flags say otherwise.
    """
    from seedcli.config.base import affects_result, from_dict
    from seedcli.config.distill import DistillConfig

    saved_doc = open_run(out, flag="--out", require_complete=False).config
    saved = from_dict(DistillConfig, saved_doc["config"])
    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    if given is None:
        given = frozenset(n for n, f in fields.items() if getattr(cfg, n) != f.default)
    conflicts = [n for n in sorted(given) if affects_result(fields[n]) and getattr(cfg, n) != getattr(saved, n)]
    if conflicts:
        flags = ", ".join("--" + c.replace("_", "-") for c in conflicts)
        raise ConfigError(f"--resume: {flags} differ from the run's config.json; drop them or start a new run.")
    taken = {n: getattr(cfg, n) for n in given if not affects_result(fields[n])}
    resumed = dataclasses.replace(saved, **{**taken, "out": str(out), "resume": True, "overwrite": False})
    resolved = saved_doc.get("resolved", {})
    world_before = int(resolved.get("world_size", 1))
    global_batch = int(resolved.get("global_batch", saved.batch_size * saved.grad_accum * world_before))
    if resumed.batch_size * resumed.grad_accum * world == global_batch:
        return resumed
    per_micro = resumed.batch_size * world
    if "grad_accum" not in given and global_batch % per_micro == 0:
        accum = global_batch // per_micro
        reporter.info(
            f"resuming on {world} process(es): --grad-accum {accum} keeps the run's global batch of {global_batch}"
        )
        return dataclasses.replace(resumed, grad_accum=accum)
    now = resumed.batch_size * resumed.grad_accum * world
    raise ConfigError(
        f"--resume: the run's global batch is {global_batch} (batch-size x grad-accum x processes) but "
        f"{resumed.batch_size} x {resumed.grad_accum} x {world} = {now}; "
        f"choose --batch-size and --grad-accum whose product is {global_batch}/{world}."
    )


def truncate_metrics(out: Path, round_index: int, step: int) -> None:
    """Drop metric lines after (round, step), where a resumed run restarts: they will be logged again."""
    path = out / METRICS
    if not path.is_file():
        return
    rows = atomic.read_jsonl(path)
    keep = [r for r in rows if (r.get("round", 1), r.get("step", 0)) <= (round_index, step)]
    if len(keep) != len(rows) or path.read_bytes()[-1:] not in (b"", b"\n"):
        atomic.write_jsonl(path, keep)


def round_adapter(out: Path, round_index: int) -> Path:
    """Where round K's adapter of a multi-round run is saved."""
    return out / ROUNDS / f"round-{round_index}" / ADAPTER


def summary(cfg: DistillConfig, out: Path, **facts: Any) -> dict[str, Any]:
    """summary.json's content: the run's identity, where its adapters are, and `facts` from training."""
    from seedcli import __version__

    chain = [round_adapter(out, r) for r in range(1, cfg.rounds + 1)] if cfg.rounds > 1 else [out / ADAPTER]
    head = {
        "seedcli_version": __version__,
        "run_dir": str(out),
        "model": cfg.model,
        "method": cfg.method,
        "rounds": cfg.rounds,
    }
    return {**head, **facts, "adapter": str(out / ADAPTER), "adapter_chain": [str(p) for p in chain]}
