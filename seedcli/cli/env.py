"""`seed env`: versions, devices and hub status, for bug reports (the table on stderr, --json on stdout)."""

from __future__ import annotations

import json

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.env import EnvConfig


@config_command(
    app,
    EnvConfig,
    name="env",
    help="Print versions, CUDA devices and hub status (paste this into bug reports).",
    extra=(json_option(),),
)
def env(cfg: EnvConfig, as_json: bool) -> None:
    """Print the environment report."""
    from seedcli.environment import environment

    report = environment(check_hub=cfg.check_hub, hub_timeout_s=cfg.hub_timeout_s)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="seedcli environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", report["python"])
    table.add_row("platform", report["platform"])
    for name, version in report["packages"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    dev = report["devices"]
    table.add_row("cuda", f"{dev['cuda_available']} (CUDA {dev['cuda_version']})")
    for gpu in dev["gpus"]:
        table.add_row(f"gpu {gpu['index']}", f"{gpu['name']}, {gpu['memory_gib']} GiB, sm {gpu['capability']}")
    table.add_row("cpu threads", str(dev["cpu_threads"]))
    table.add_row("hub", report["hub"])
    Console(stderr=True).print(table)
