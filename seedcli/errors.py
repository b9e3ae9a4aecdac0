"""Errors with actionable one-line messages; the CLI maps each class to an exit code."""

from __future__ import annotations

import errno
import os


class SeedError(Exception):
    """Base class: a failure the user can act on. The message is one line and says what to do."""

    exit_code: int = 1


class ConfigError(SeedError):
    """A flag or config value is invalid; the message names the flag."""

    exit_code = 2


class DataError(SeedError):
    """Input data is missing, malformed, corrupt or inconsistent; the message names the file or flag."""

    exit_code = 3


class ModelError(SeedError):
    """A model cannot be resolved, loaded or used as asked (including an adapter of another base model)."""

    exit_code = 4


class StorageError(SeedError):
    """The file system refused a read or write: disk full, read-only, a path under a file, no such directory."""

    exit_code = 5


class Interrupted(SeedError):
    """The run was stopped by SIGINT/SIGTERM after saving what it could."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "success",
    SeedError.exit_code: "other error",
    ConfigError.exit_code: "usage or config",
    DataError.exit_code: "data",
    ModelError.exit_code: "model",
    StorageError.exit_code: "file system (disk full, read-only, path under a file)",
    Interrupted.exit_code: "interrupted (a checkpoint was saved)",
}
"""The documented exit codes; `seed --help`, docs/cli.md and the README list them from here."""


def exit_code_line() -> str:
    """The exit-code table as one sentence: '0 success, 1 other error, ...'."""
    return ", ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())


# What to do, per errno, when the file system refuses.
_HINTS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device (disk full); free space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free space or write elsewhere",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.ENOTDIR: "a parent of this path is a file, not a directory; choose another path",
    errno.EEXIST: "a file is in the way where a directory is needed; choose another path",
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "operation not permitted; choose a location you can write to",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    errno.EISDIR: "a directory is in the way where a file is needed; choose another path",
}
# Libraries written in Rust (safetensors, tokenizers) report I/O failures as text, not OSError.
_TEXT_ERRNOS = (
    ("StorageFull", errno.ENOSPC),
    ("No space left on device", errno.ENOSPC),
    ("ReadOnlyFilesystem", errno.EROFS),
    ("Read-only file system", errno.EROFS),
)


def storage_error(exc: BaseException) -> StorageError | None:
    """A one-line StorageError for a file-system failure anywhere in `exc`'s chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _HINTS:
            where = current.filename or current.filename2
            prefix = f"{os.fsdecode(where)}: " if where is not None else ""
            return StorageError(f"{prefix}{_HINTS[current.errno]}.")
        text = str(current)
        for marker, code in _TEXT_ERRNOS:
            if marker in text:
                return StorageError(f"{_HINTS[code]} ({type(current).__name__} while writing).")
        current = current.__cause__ or current.__context__
    return None
