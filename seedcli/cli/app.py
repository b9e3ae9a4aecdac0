"""The Typer app, the entry point, and the mapping of errors to exit codes.

Command modules are imported here, but each imports torch/transformers only inside its body, so
`seed --help` stays instant (a test checks that importing this module leaves them unloaded).
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass

import typer

from seedcli import __version__
from seedcli.errors import SeedError, exit_code_line, storage_error

app = typer.Typer(
    name="seed",
    help=(
        "SEED (Self-Evolving Distillation): make vision-language models hallucinate less.\n\n"
        "Typical pipeline: seed prepare -> seed distill -> seed evaluate -> seed merge. "
        "Start with `seed quickstart` (offline, CPU, a few minutes)."
    ),
    epilog=f"Exit codes: {exit_code_line()}.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class _State:
    debug: bool = False


STATE = _State()


def _version(value: bool) -> None:
    if value:
        print(f"seedcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (without local variables) on errors."),
) -> None:
    """Global options."""
    STATE.debug = debug
    # Library deprecation chatter (e.g. peft calling deprecated transformers helpers) is not for users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # bitsandbytes warns on import about optional CPU kernels that seedcli never uses.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _register() -> None:
    # Imported for their side effect of registering commands on `app`.
    from seedcli.cli import demo, detect, distill, env, evaluate, merge, prepare, quickstart  # noqa: F401


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # Messages carry paths and library text with brackets; they are data, never markup.
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")


def _is_click_error(exc: Exception) -> bool:
    # Typer >= 0.20 vendors click as typer._click; match the exception API, not the module.
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "show")


def _is_usage_error(exc: Exception) -> bool:
    return any(c.__name__ == "UsageError" for c in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; SeedError -> one red line on stderr and its exit code."""
    _register()
    try:
        result = app(args=argv, standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)
    except SeedError as exc:
        if STATE.debug:
            from rich.console import Console

            Console(stderr=True).print_exception(show_locals=False)
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _print_error("aborted.")
        sys.exit(130)
    except KeyboardInterrupt:
        _print_error("interrupted.")
        sys.exit(130)
    except Exception as exc:
        if _is_click_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2 if _is_usage_error(exc) else exc.exit_code)  # type: ignore[attr-defined]
        storage = storage_error(exc)
        if storage is not None:
            # Disk full, read-only, a path under a file: the file system's answer, not a bug.
            if STATE.debug:
                from rich.console import Console

                Console(stderr=True).print_exception(show_locals=False)
            _print_error(str(storage))
            sys.exit(storage.exit_code)
        if STATE.debug:
            from rich.console import Console

            Console(stderr=True).print_exception(show_locals=False)
        else:
            _print_error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(0)
