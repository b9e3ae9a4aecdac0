"""Errors with actionable one-line messages; the CLI maps each class to an exit code."""

from __future__ import annotations


class SeedError(Exception):
    """Base class: a failure the user can act on. The message is one line and says what to do."""

    exit_code: int = 1


class ConfigError(SeedError):
    """A flag or config value is invalid; the message names the flag."""

    exit_code = 2


class DataError(SeedError):
    """Input data is missing, malformed or inconsistent; the message names the file or flag."""

    exit_code = 3


class ModelError(SeedError):
    """A model cannot be resolved, loaded or used as asked."""

    exit_code = 4


class NotImplementedYet(SeedError):
    """A command whose implementation has not landed yet."""

    exit_code = 1


class Interrupted(SeedError):
    """The run was stopped by SIGINT/SIGTERM after saving what it could."""

    exit_code = 130


EXIT_CODES: dict[str, int] = {
    "success": 0,
    "other": SeedError.exit_code,
    "usage/config": ConfigError.exit_code,
    "data": DataError.exit_code,
    "model": ModelError.exit_code,
    "interrupted": Interrupted.exit_code,
}
