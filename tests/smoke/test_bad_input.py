"""Bad input, table-driven, across all commands: the documented exit code, one readable error and no
traceback, and nothing left behind where the command writes.

Each case runs the real CLI in-process in an empty working directory. Shared inputs (a synthetic data
directory, run directories with real tiny adapters, and broken copies of both) are built once per
module; their trees, and the case's directory, must be unchanged by the failed command. Cases that
the issue says must fail at the flag, or before a model loads, use inputs that make a late failure
slow or visible (a real model name, a real data directory).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


SHARED = (
    "data", "run", "a_file", "truncated_run", "empty_run", "header_run", "swapped_run",
    "garbled_data", "empty_data", "truncated_data",
)
"""Inputs built once per module, named in the cases as {name} (a data directory, good and broken runs)."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seedcli.cli.app import main
    from tests.smoke.test_merge import make_run

    root = tmp_path_factory.mktemp("bad-input")
    try:
        main(["prepare", "--synthetic", "--synthetic-images", "40", "--out", str(root / "data"), "--json"])
    except SystemExit as exc:
        assert not exc.code, "the synthetic data directory could not be built"
    arrow = next((root / "data" / "train").glob("*.arrow"))
    for name, damage in (("garbled-data", b"\0" * 64), ("empty-data", b"")):
        shutil.copytree(root / "data", root / name)
        (root / name / "train" / arrow.name).write_bytes(damage)
    shutil.copytree(root / "data", root / "truncated-data")
    cut = root / "truncated-data" / "train" / arrow.name
    cut.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])

    make_run(root / "run", "tiny-llava")
    make_run(root / "qwen-run", "tiny-qwen2-vl")
    weights = "adapter/adapter_model.safetensors"
    full = (root / "run" / weights).read_bytes()
    for name, content in (("truncated-run", full[: len(full) - 100]), ("empty-run", b""), ("header-run", full[:6])):
        shutil.copytree(root / "run", root / name)
        (root / name / weights).write_bytes(content)
    shutil.copytree(root / "run", root / "swapped-run")  # the tiny-llava run holding a tiny-qwen2-vl adapter
    shutil.copytree(root / "qwen-run" / "adapter", root / "swapped-run" / "adapter", dirs_exist_ok=True)
    (root / "a-file").write_text("not a directory\n")
    return root


def _raise(exc: BaseException) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new directory or temp directory fails as on a read-only mount."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "mkdtemp", _raise(OSError(errno.EROFS, os.strerror(errno.EROFS), "out")))
    monkeypatch.setattr(os, "mkdir", _raise(OSError(errno.EROFS, os.strerror(errno.EROFS), "out")))


def _not_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    """demo's write-access check answers as on a read-only mount (root may write anywhere else)."""
    import os
    import types

    from seedcli import demo

    shim = types.SimpleNamespace(access=lambda *args, **kwargs: False, W_OK=os.W_OK, X_OK=os.X_OK)
    monkeypatch.setattr(demo, "os", shim)


def _disk_full_arrow(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    error = OSError(errno.ENOSPC, "No space left on device", "data-00000-of-00001.arrow")
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", _raise(error))


def _disk_full_safetensors(monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError
    from transformers import modeling_utils

    # safetensors reports I/O failures from Rust as text, not as an OSError.
    text = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    monkeypatch.setattr(modeling_utils, "safe_save_file", _raise(SafetensorError(text)))


def _disk_full_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedcli import atomic

    monkeypatch.setattr(atomic, "write_json", _raise(OSError(errno.ENOSPC, "No space left on device", "settings.json")))


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments (with {name} for a shared path), the exit code, what the error names."""

    id: str
    args: str
    code: int
    says: str = ""
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


DISTILL = "distill --model tiny-llava --data {data} --device cpu --max-steps 1 --out out"
EVALUATE = "evaluate --data {data} --device cpu --limit 1 --out out"
MERGE = "merge {run} --out out --device cpu"
DEMO = "demo --data {data} --device cpu --num-images 1"
ENV = "env --no-check-hub"

CASES = [
    # NaN and infinity are refused for every float flag, at the flag.
    Case("distill-lr-inf", f"{DISTILL} --lr inf", 2, "--lr"),
    Case("distill-lr-nan", f"{DISTILL} --lr nan", 2, "--lr"),
    Case("distill-noise-alpha-nan", f"{DISTILL} --noise-alpha nan", 2, "--noise-alpha"),
    Case("distill-temperature-nan", f"{DISTILL} --temperature nan", 2, "--temperature"),
    Case("distill-plausibility-penalty-inf", f"{DISTILL} --plausibility-penalty inf", 2, "--plausibility-penalty"),
    Case("distill-beta-values-nan", f"{DISTILL} --beta-values 1.1,nan,0.6,0.4", 2, "--beta-values"),
    Case("distill-weight-decay-inf", f"{DISTILL} --weight-decay inf", 2, "--weight-decay"),
    Case("distill-nccl-timeout-inf", f"{DISTILL} --nccl-timeout-s inf", 2, "--nccl-timeout-s"),
    Case("env-hub-timeout-nan", "env --hub-timeout-s nan", 2, "--hub-timeout-s"),
    Case("evaluate-temperature-nan", f"{EVALUATE} --pope random --temperature nan", 2, "--temperature"),
    Case("evaluate-vcd-alpha-inf", f"{EVALUATE} --pope random --vcd-alpha inf", 2, "--vcd-alpha"),
    Case("evaluate-top-p-nan", f"{EVALUATE} --pope random --top-p nan", 2, "--top-p"),
    Case("quickstart-lr-nan", "quickstart --out out --lr nan", 2, "--lr"),
    Case("prepare-cooccurrence-inf", "prepare --synthetic --out out --cooccurrence inf", 2, "--cooccurrence"),
    # Bounds that match the maths, at the flag.
    Case("distill-jsd-beta-0", f"{DISTILL} --divergence jsd --jsd-beta 0", 2, "--jsd-beta"),
    Case("distill-jsd-beta-1", f"{DISTILL} --divergence jsd --jsd-beta 1", 2, "--jsd-beta"),
    Case("distill-plausibility-gamma-0", f"{DISTILL} --plausibility-gamma 0", 2, "--plausibility-gamma"),
    Case("distill-plausibility-gamma-above-1", f"{DISTILL} --plausibility-gamma 1.5", 2, "--plausibility-gamma"),
    Case("distill-noise-alpha-0", f"{DISTILL} --noise-alpha 0", 2, "--noise-alpha"),
    Case("distill-max-length-4", f"{DISTILL} --max-length 4", 2, "--max-length"),
    Case("evaluate-top-p-0", f"{EVALUATE} --pope random --top-p 0", 2, "--top-p"),
    Case("distill-dtype-fp64", f"{DISTILL} --dtype fp64", 2, "fp64"),
    Case("distill-resume-and-overwrite", f"{DISTILL} --resume --overwrite", 2, "--resume"),
    Case("unknown-flag", f"{ENV} --no-such-flag", 2, "no-such-flag"),
    # --max-shard-size is checked at the flag.
    Case("merge-shard-size-lots", f"{MERGE} --max-shard-size lots", 2, "--max-shard-size"),
    Case("merge-shard-size-no-unit", f"{MERGE} --max-shard-size 500", 2, "--max-shard-size"),
    Case("merge-shard-size-zero", f"{MERGE} --max-shard-size 0GB", 2, "--max-shard-size"),
    Case("merge-no-out", "merge {run}", 2, "--out"),
    Case("merge-out-is-run", "merge {run} --out {run}", 2, "--out"),
    Case("demo-html-not-html", f"{DEMO} --adapter {{run}} --html page.txt", 2, "--html"),
    Case("evaluate-nothing-to-do", "evaluate --model tiny-llava", 2, "--pope"),
    # Output locations the file system refuses: exit 5, no traceback.
    Case("prepare-out-under-a-file", "prepare --synthetic --out {a_file}/data", 5, "a-file"),
    Case("merge-out-under-a-file", "merge {run} --out {a_file}/merged --device cpu", 5, "a-file"),
    Case("demo-html-under-a-file", f"{DEMO} --adapter {{run}} --html {{a_file}}/page.html", 5, "a-file"),
    Case("quickstart-out-under-a-file", "quickstart --fast --out {a_file}/qs", 5, "a-file"),
    Case("distill-out-under-a-file", f"{DISTILL} --out {{a_file}}/run", 5, "a-file"),
    Case("prepare-impossible-path", "prepare --synthetic --out /proc/seedcli/data", 5, "no such file"),
    Case("merge-impossible-path", "merge {run} --out /proc/seedcli/merged --device cpu", 5, "no such file"),
    Case("prepare-read-only", "prepare --synthetic --out out", 5, "read-only", patch=_read_only),
    Case("merge-read-only", MERGE, 5, "read-only", patch=_read_only),
    Case("quickstart-read-only", "quickstart --fast --out out", 5, "read-only", patch=_read_only),
    Case("demo-html-read-only", f"{DEMO} --adapter {{run}} --html page.html", 5, "read-only", _not_writable),
    Case("prepare-disk-full", "prepare --synthetic --out out", 5, "disk full", patch=_disk_full_arrow),
    Case("merge-disk-full", MERGE, 5, "disk full", patch=_disk_full_safetensors),
    Case("evaluate-disk-full", f"{EVALUATE} --model tiny-llava --pope random", 5, "disk full", _disk_full_samples),
    # Corrupt files name the file and say so.
    Case("merge-truncated-adapter", "merge {truncated_run} --out out", 3, "corrupt"),
    Case("merge-empty-adapter", "merge {empty_run} --out out", 3, "corrupt"),
    Case("demo-header-only-adapter", f"{DEMO} --adapter {{header_run}}", 3, "corrupt"),
    Case("evaluate-truncated-adapter", f"{EVALUATE} --adapter {{truncated_run}} --pope random", 3, "corrupt"),
    Case("distill-garbled-arrow", "distill --model tiny-llava --data {garbled_data} --out out", 3, "corrupt"),
    Case("distill-empty-arrow", "distill --model tiny-llava --data {empty_data} --out out", 3, "corrupt"),
    Case("distill-truncated-arrow", "distill --model tiny-llava --data {truncated_data} --out out", 3, "corrupt"),
    # An adapter trained on another base model is refused (exit 4), before weights load.
    Case("merge-other-family", "merge {run} --out out --model tiny-qwen2-vl", 4, "tiny-qwen2-vl"),
    Case("merge-swapped-adapter", "merge {swapped_run} --out out", 4, "trained on"),
    Case("demo-swapped-adapter", f"{DEMO} --adapter {{swapped_run}}", 4, "trained on"),
    Case("evaluate-other-family", f"{EVALUATE} --model tiny-qwen2-vl --adapter {{run}} --pope random", 4, "qwen2-vl"),
    Case("evaluate-swapped-adapter", f"{EVALUATE} --adapter {{swapped_run}} --pope random", 4, "trained on"),
    # Missing inputs name what is missing.
    Case("distill-no-data", "distill --model tiny-llava --data missing --out out", 3, "missing"),
    Case("merge-no-run", "merge missing --out out", 3, "missing"),
    Case("demo-not-a-run", f"{DEMO} --adapter {{data}}", 3, "not a seedcli run"),
    Case("evaluate-no-data", "evaluate --model tiny-llava --pope random --data missing --out out", 3, "missing"),
]


def _tree(root: Path) -> dict[str, int]:
    """Every path under `root` with its size (-1 for directories)."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    names = {name: str(shared / name.replace("_", "-")) for name in SHARED}
    args = case.args.format(**names).split()
    monkeypatch.chdir(tmp_path)
    before_shared, before_here = _tree(shared), _tree(tmp_path)
    with monkeypatch.context() as patched:
        if case.patch is not None:
            case.patch(patched)
        code, out, err = run_cli(args, capsys)
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err and 'File "' not in out + err, err
    assert case.says.lower() in err.lower(), err
    if code != 2 or "error:" in err:  # click's usage errors are a framed panel; ours are one red line
        assert err.strip().splitlines()[-1].startswith("error:"), err
    assert _tree(tmp_path) == before_here, "the failed command left files in its working directory"
    assert _tree(shared) == before_shared, "the failed command changed its inputs or wrote beside them"


def test_evaluate_disk_full_mid_run_stops_with_exit_5_and_stays_resumable(shared: Path, tmp_path: Path, capsys) -> None:
    """A full disk while answers are appended stops the run (not one failed part after another)."""
    from seedcli.evals import runner

    out = tmp_path / "eval"
    args = ["evaluate", "--model", "tiny-llava", "--data", str(shared / "data"), "--device", "cpu"]
    args += ["--pope", "all", "--limit", "1", "--max-new-tokens", "2", "--out", str(out)]
    calls = []

    def full(path: Path, rows: object) -> None:
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(runner.atomic, "append_jsonl_rows", full)  # how the runner appends a batch of answers
        code, out_text, err = run_cli(args, capsys)
    assert code == 5, err
    assert "Traceback" not in out_text + err and "disk full" in err
    assert len(calls) == 1, "the run went on after the disk was full"
    assert not (out / runner.RESULTS).exists()  # what is there is the resumable state of an unfinished run
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (out / runner.RESULTS).is_file()
