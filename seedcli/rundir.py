"""The run directory written by `seed distill` and read by `merge`, `evaluate` and `demo`.

    RUN/
      config.json        {"seedcli_version", "command": "distill", "config": {...DistillConfig...},
                          "resolved": {"model_source", "family", "dtype", "chat_template", ...}}
      env.json           versions and devices (seedcli.environment)
      metrics.jsonl      one line per logged step
      adapter/           adapter_model.safetensors + adapter_config.json (PEFT), the last round's
      rounds/round-K/adapter/   with --rounds N > 1: every round's adapter, applied in order
      checkpoints/step-N/       resumable state
      summary.json       written last: a run without it is incomplete

With N rounds, round K's adapter was trained on the base with rounds 1..K-1 merged in, so the
evolved model is: base, merge rounds 1..N-1, then the last adapter (merged or attached).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedcli.errors import DataError

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
ROUNDS = "rounds"
CHECKPOINTS = "checkpoints"
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
                raise DataError(f"{self.root}: adapter missing at {path} (was the run interrupted? resume it with `seed distill --resume --out {self.root}`).")
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
        raise DataError(f"{flag} {root}: the run is incomplete (no {SUMMARY}); finish it with `seed distill --resume --out {root}`.")
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

    for path in chain[:-1]:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(chain[-1]))
    model.eval()
    return model.merge_and_unload() if merge_last else model
