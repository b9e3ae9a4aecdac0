"""Atomic file and directory writes: a reader sees the old content or the complete new one."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from seedcli.errors import ConfigError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON with a trailing newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write rows as JSON Lines."""
    write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (used for logs that grow during a run)."""
    append_jsonl_rows(path, [row])


def append_jsonl_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append JSON lines in one write and flush them to disk once (a batch of results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, default=str) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON Lines, skipping blank lines; a torn last line (crash mid-append) is dropped."""
    rows: list[dict[str, Any]] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
    return rows


def prepare_output_dir(path: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to reuse a non-empty output directory unless `overwrite` is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory; choose another path.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(
            f"{flag} {path} already exists and is not empty; pass --overwrite to replace it "
            "or choose another path."
        )


@contextlib.contextmanager
def staged_dir(final: Path, *, overwrite: bool, flag: str = "--out") -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success it replaces `final` in one rename.

    On any error the temp directory is removed and `final` is left untouched, so a directory
    at the final path is always complete.
    """
    final = Path(final)
    prepare_output_dir(final, overwrite=overwrite, flag=flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    try:
        yield tmp
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, trash / "old")
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_stages(final: Path) -> list[Path]:
    """Remove what an interrupted `staged_dir(final)` left beside `final` (`.NAME.*.partial`, `.NAME.*.old`).

    Call it at the start of the command that owns `final`, before staging anew; returns what was removed.
    """
    final = Path(final).resolve()
    if not final.name or not final.parent.is_dir():
        return []  # "/" has no name: a pattern without one would match other outputs' stages
    stale = [p for suffix in ("partial", "old") for p in final.parent.glob(f".{glob.escape(final.name)}.*.{suffix}")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
