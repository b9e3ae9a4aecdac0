"""`seed demo`: base and SEED answers side by side, objects highlighted, hallucinations marked."""

from __future__ import annotations

import json
from typing import Any

from seedcli.cli.app import app
from seedcli.cli.options import config_command, json_option
from seedcli.config.demo import DemoConfig

HELP = (
    "Ask the base model and the SEED model the same question about images and show the answers side "
    "by side, with the objects they name highlighted and hallucinated ones marked (when the data "
    "directory knows the image). With no flags it runs on the newest run and its held-out images."
)
STYLES = {"present": "bold green", "hallucinated": "bold white on red", "unknown": "bold cyan"}


def _panel(answer: dict[str, Any], truth_known: bool) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    from seedcli.demo import segments

    text = Text()
    for piece, status in segments(answer["text"], answer["objects"]):
        text.append(piece, style=STYLES[status] if status else None)
        if status == "hallucinated":
            text.append("✗", style="bold red")
    if not answer["text"]:
        text.append("(empty answer)", style="dim")
    if not truth_known:
        verdict = "[dim]no ground truth[/]"
    elif answer["hallucinated"]:
        verdict = f"[bold red]hallucinated: {', '.join(answer['hallucinated'])}[/]"
    else:
        verdict = "[green]no hallucinated object[/]"
    return Panel(
        Group(text, Text(), Text.from_markup(verdict)),
        title=f"[bold]{answer['label']}[/] [dim]{answer['model']}[/]",
        expand=True,
    )


def render(results: list[dict[str, Any]]) -> None:
    """Print one row of side-by-side panels per image on stderr, where every command's tables go."""
    from rich.console import Console
    from rich.rule import Rule
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True, highlight=False)
    legend = (
        Text("legend: ")
        + Text("in the image", STYLES["present"])
        + Text("  ")
        + Text("hallucinated✗", STYLES["hallucinated"])
        + Text("  ")
        + Text("no ground truth", STYLES["unknown"])
    )
    console.print(legend)
    for result in results:
        console.print(Rule(result["name"]))
        truth = result["truth"]
        known = (
            f"ground truth ({truth['source']}): {', '.join(truth['present']) or 'none'}"
            if truth
            else "no ground truth for this image"
        )
        console.print(Text(known, style="dim"))
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in result["answers"]:
            grid.add_column(ratio=1)
        grid.add_row(*(_panel(a, truth is not None) for a in result["answers"]))
        console.print(grid)


@config_command(app, DemoConfig, name="demo", help=HELP, extra=(json_option(),))
def demo(cfg: DemoConfig, as_json: bool) -> None:
    """Run the demo and render it."""
    from seedcli.cli.render import make_reporter
    from seedcli.demo import demo as run_demo

    results = run_demo(cfg, make_reporter(as_json))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    render(results)
    if cfg.html is not None:
        print(cfg.html)
