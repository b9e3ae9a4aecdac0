"""`--gpus N` / `--nproc N`: a command started outside a launcher relaunches itself in N workers.

Shared by `seed distill` and `seed detect train`; the workers run the same command with the same
explicit flags under torch's elastic launcher (seedcli.distributed), and find their rank there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from seedcli.cli.options import config_argv


def relaunch(
    words: tuple[str, ...], cfg: Any, *, as_json: bool, given: frozenset[str], default_out: Callable[[], str]
) -> bool:
    """Start the workers when `cfg` asks for several processes and no launcher started this one; True if it did.

    `words` is the command (`("distill",)`, `("detect", "train")`); `default_out` names the run directory
    when none was given, fixed here because a timestamp per worker would split the run.
    """
    from seedcli import distributed

    processes = cfg.gpus or cfg.nproc or 1
    nnodes = getattr(cfg, "nnodes", 1)
    if (processes == 1 and nnodes == 1) or distributed.under_launcher():
        return False
    distributed.check_gpus(cfg.gpus)
    fixed = cfg if cfg.out or cfg.resume else dataclasses.replace(cfg, out=default_out())
    *prefix, command = words
    argv = [*prefix, *config_argv(command, fixed, as_json=as_json, given=given)]  # workers see the same flags
    distributed.relaunch_cli(
        argv,
        nproc=processes,
        nnodes=nnodes,
        node_rank=getattr(cfg, "node_rank", 0),
        master_addr=getattr(cfg, "master_addr", None),
        master_port=getattr(cfg, "master_port", None),
    )
    return True
