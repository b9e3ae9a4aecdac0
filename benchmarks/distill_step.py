"""SEED step vs SFT step of the real `seed distill` loop, side by side in one run.

Each configuration runs `seedcli.core.distill.distill` (the real loop, unchanged) on the same
model shape, batch and sequence; a reporter timestamps every optimizer step, the first --warmup
steps are dropped, and the median step time is reported with samples/s, tokens/s, model FLOP
utilisation against the matmul rate measured in this run (bf16 on GPU, fp32 on CPU), and peak
memory (torch.cuda.max_memory_allocated on GPU; peak RSS on CPU, reset through
/proc/self/clear_refs before each configuration). FLOPs are counted by benchmarks/shapes.py.

    python benchmarks/distill_step.py --shape tiny-llava --steps 6 --warmup 2
    python benchmarks/distill_step.py --shape llava-7b --steps 20 --warmup 5 \
        --also teacher_batching=separate --also gradient_checkpointing=true --also loss_chunk=64 --cache-epochs 3

Built shapes (small-llava, llava-7b) are created from a config by benchmarks/shapes.py; the loop's
model loader is pointed at that builder for the duration of the run (the step code is untouched).

Against the FLOP floor: "floor x" is the configuration's model FLOPs over the SFT row's, with the
frozen-base count (f = 2: forward + activation gradients, no weight gradients) plus what the
configuration recomputes (gradient checkpointing: the language model's forward again; a chunked loss:
the LM head again); "meas/floor" = measured "x SFT" / "floor x". 1.00 means the step costs exactly
its extra FLOPs; above it, time goes to something the FLOP count does not see.

The data pipeline: every configuration runs with --num-workers N (default: the engine's default) and,
when N > 0, SFT and SEED run again with 0 workers (encoding in the training process). "wait %" is the
loop's own data_wait_share (time blocked on the next batch over step time, as in metrics.jsonl),
summed over the timed steps. Compare the loader rows by "wall s" and "wait %", not by "step s": on a
CPU, "step s" is this process's CPU time, and with workers the encoding runs in other processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402  (benchmarks/ is not a package)

from seedcli.config.distill import DistillConfig  # noqa: E402
from seedcli.core import distill as engine  # noqa: E402
from seedcli.core import feed  # noqa: E402
from seedcli.models import loading  # noqa: E402


class _Clock:
    """Timestamps each `advance` (one optimizer step of the loop)."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.stamps: list[tuple[float, float]] = []

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.stamps.append((time.perf_counter(), time.process_time()))


class ClockReporter:
    """A Reporter that records step times and metrics lines and drops everything else."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.clock = _Clock(sync)
        self.start = (0.0, 0.0)
        self.lines: list[dict[str, Any]] = []

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[_Clock]:
        if self.sync:
            torch.cuda.synchronize()
        self.start = (time.perf_counter(), time.process_time())
        yield self.clock

    def log(self, fields: Mapping[str, Any]) -> None:
        self.lines.append(dict(fields))

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def step_times(self, clock: int) -> list[float]:
        """Seconds per step, in order: clock 0 = wall time, 1 = this process's CPU time."""
        stamps = [self.start, *self.clock.stamps]
        return [b[clock] - a[clock] for a, b in zip(stamps, stamps[1:])]


def data_wait_share(lines: Sequence[Mapping[str, Any]], samples_per_step: int) -> float:
    """Share of step time spent waiting for data over metrics lines of one step each (NaN without lines)."""
    # A line holds samples_per_s and data_wait_share of its step: its seconds are samples / samples_per_s.
    seconds = [samples_per_step / line["samples_per_s"] for line in lines]
    waited = sum(line["data_wait_share"] * s for line, s in zip(lines, seconds))
    return waited / sum(seconds) if seconds else float("nan")


def matmul_rate(device: str, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Measured FLOP/s of a square matmul (median of `repeats`)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock = time.perf_counter if device == "cuda" else time.process_time  # CPU: see run_config
    times = []
    for _ in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        started = clock()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - started)
    return 2 * size**3 / statistics.median(times[2:])


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak(device: str) -> int | None:
    """Reset the peak-memory counter; returns the current RSS (CPU) or allocated bytes (GPU)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    return _proc_status("VmRSS")


def peak(device: str) -> int | None:
    """Peak bytes since `reset_peak`."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _proc_status("VmHWM")


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    field_types = {f.name: f.type for f in dataclasses.fields(DistillConfig)}
    if key not in field_types:
        raise SystemExit(f"--also {text}: {key} is not a DistillConfig field")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, None if value == "none" else value


def run_config(label: str, cfg: DistillConfig, shape: shapes.Shape, attn: str, device: str) -> dict[str, Any]:
    """Run the loop once with `cfg`; step times, peak memory."""
    original = loading.load

    def build(name: str, **kwargs: Any) -> Any:
        return shapes.loaded(shape, kwargs.get("dtype", "auto"), kwargs.get("device", "auto"), attn)

    if shape.built:  # tiny models load through the real loader
        loading.load = build
    before = reset_peak(device)
    reporter = ClockReporter(sync=device == "cuda")
    try:
        engine.distill(cfg, reporter)
    finally:
        loading.load = original
    top = peak(device)
    # On a CPU shared with other jobs, wall time measures the neighbours too: the process's CPU
    # time is the comparable quantity there (with --threads 1 it is the compute actually done).
    times = reporter.step_times(0 if device == "cuda" else 1)
    result = {"label": label, "cfg": cfg, "times": times, "wall": reporter.step_times(0), "peak": top, "before": before}
    return {**result, "lines": reporter.lines}


def sequence_lengths(shape: shapes.Shape, data: Path) -> tuple[int, int, int]:
    """(tokens, supervised tokens, image tokens) of one benchmark record (all records have the same)."""
    from PIL import Image

    from seedcli.data.datadir import open_data_dir
    from seedcli.models.chat import encode
    from seedcli.models.families import family_for, resolve

    processor = (
        shapes.build_processor(shape)
        if shape.built
        else loading.load_processor(resolve(shape.name).source, family_for("llava"))
    )
    row = next(iter(open_data_dir(data).train()))
    with Image.open(data / "images" / "0.png") as handle:
        enc = encode(processor, family_for("llava"), list(row["messages"]), handle.convert("RGB"))
    image_id = processor.tokenizer.convert_tokens_to_ids(shapes.IMAGE_TOKEN)
    return len(enc.input_ids), enc.num_supervised, sum(1 for t in enc.input_ids if t == image_id)


def floor_flops(per_sample: shapes.Flops, method: str, cfg: DistillConfig) -> float:
    """Model FLOPs of one sample's step at f = 2 (frozen base), with what `cfg` recomputes in backward."""
    flops = per_sample.step(method, 2.0)
    if cfg.gradient_checkpointing:
        flops += per_sample.lm  # the student's decoder layers run forward again
    if cfg.loss_chunk:
        flops += per_sample.head  # each chunk's logits are recomputed for its backward
    return flops


def main() -> None:
    """Parse options, run every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default="tiny-llava")
    parser.add_argument("--steps", type=int, default=6, help="Timed optimizer steps per configuration.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--teacher-batching", choices=("joint", "separate"), default="joint")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--loss-chunk", type=int, default=None)
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="An extra SEED row with this DistillConfig override (repeatable).",
    )
    parser.add_argument(
        "--cache-epochs",
        type=int,
        default=0,
        help="Also run SEED with --teacher-cache both for this many epochs and report per-epoch step times.",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (CPU runs: 1 makes CPU time = compute)."
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="Data-loader workers of every row (default: the engine's); with N > 0, SFT and SEED also run with 0.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = loading.resolve_device(args.device)
    dtype = loading.resolve_dtype(args.dtype, device)
    shape = shapes.SHAPES[args.shape]
    rate_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rate = matmul_rate(device, rate_dtype, 8192 if device == "cuda" else 1024, 20 if device == "cuda" else 5)
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"device: {where} ({torch.get_num_threads()} threads), torch {torch.__version__}, weights {dtype}, "
        f"matmul {rate_dtype} {rate / 1e12:.3f} TFLOP/s measured"
    )

    steps_total = args.warmup + args.steps
    workers = args.num_workers if args.num_workers is not None else feed.default_workers(1)
    with tempfile.TemporaryDirectory(prefix="seed-step-bench-") as tmp:
        root = Path(tmp)
        processor = shapes.build_processor(shape) if shape.built else None
        data = shapes.write_data(root / "data", shape, processor, n=steps_total * args.batch_size)
        seq, sup, image_tokens = sequence_lengths(shape, data)
        common = dict(
            model=shape.name,
            data=str(data),
            device=device,
            dtype={torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, "auto"),
            batch_size=args.batch_size,
            grad_accum=1,
            lr=1e-5,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            log_every=1,  # one metrics line per step: its data-wait share
            save_every=10**6,
            warmup_ratio=0.0,
            max_length=max(seq, 8),
            attn_implementation=args.attn_implementation,
            teacher_batching=args.teacher_batching,
            gradient_checkpointing=args.gradient_checkpointing,
            loss_chunk=args.loss_chunk,
            num_workers=workers,
        )
        runs: list[tuple[str, DistillConfig]] = [
            ("sft", DistillConfig(**common, method="sft", max_steps=steps_total, out=str(root / "sft"))),
            ("seed", DistillConfig(**common, method="seed", max_steps=steps_total, out=str(root / "seed"))),
        ]
        for i, text in enumerate(args.also):
            key, value = _parse_override(text)
            runs.append(
                (
                    f"seed {key}={value}",
                    DistillConfig(
                        **{**common, key: value}, method="seed", max_steps=steps_total, out=str(root / f"also-{i}")
                    ),
                )
            )
        if workers > 0:  # the same rows without the loader, for the data-wait comparison
            for method in ("sft", "seed"):
                out = str(root / f"{method}-0")
                cfg = DistillConfig(**{**common, "num_workers": 0}, method=method, max_steps=steps_total, out=out)
                runs.append((f"{method} num_workers=0", cfg))
        fields = {f.name for f in dataclasses.fields(DistillConfig)}
        if args.cache_epochs:
            if "teacher_cache" not in fields:
                raise SystemExit("--cache-epochs: this seedcli has no --teacher-cache option yet")
            runs.append(
                (
                    "seed cache=both",
                    DistillConfig(
                        **common, method="seed", epochs=args.cache_epochs, teacher_cache="both", out=str(root / "cache")
                    ),
                )
            )

        results = []
        for label, cfg in runs:
            print(f"running {label} ...", file=sys.stderr, flush=True)
            results.append(run_config(label, cfg, shape, args.attn_implementation, device))
    model_counts = count_model(shape, image_tokens)

    per_sample = shapes.flops(model_counts, seq, sup)
    print(
        f"shape {shape.name}: {seq} tokens/sample ({image_tokens} image, {sup} supervised), batch {args.batch_size}, "
        f"forward {per_sample.forward / 1e9:.3f} GFLOP/sample (vision {per_sample.vision / 1e9:.3f}, "
        f"LM {per_sample.lm / 1e9:.3f}, head {per_sample.head / 1e9:.3f}); "
        f"{args.steps} timed steps after {args.warmup} warm-up; "
        f"data loader: {workers} worker{'s' if workers != 1 else ''}"
        + (" (the engine's default)" if args.num_workers is None else "")
    )
    sft: dict[str, Any] = {}  # the SFT row's step time and configuration FLOPs
    clock = "wall seconds (CUDA-synchronised)" if device == "cuda" else "CPU seconds of this process"
    print(
        f"step s: {clock}"
        + ("" if device == "cuda" else " (a shared CPU's wall time counts other jobs; wall s for reference)")
    )
    columns = [("config", 34), ("wall s", 8), ("wait %", 7), ("step s", 9), ("x SFT", 6), ("floor x", 7)]
    columns += [("meas/floor", 10)]
    columns += [
        ("samples/s", 10),
        ("tokens/s", 10),
        ("TFLOP/s", 8),
        ("MFU x3", 7),
        ("MFU x2", 7),
        ("peak GB", 8),
        ("+GB", 6),
    ]
    header = " ".join(f"{name:{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(columns))
    print(header)
    print("-" * len(header))
    report = []
    for res in results:
        method = "sft" if res["label"].startswith("sft") else "seed"
        times, walls, lines = res["times"], res["wall"], res["lines"]
        rows = []
        if res["label"] == "seed cache=both":
            # Epoch e holds steps [e * steps_total, (e + 1) * steps_total); epoch 1 drops the warm-up.
            spans = [
                (e * steps_total + (args.warmup if e == 0 else 0), (e + 1) * steps_total)
                for e in range(args.cache_epochs)
            ]
            for e, (lo, hi) in enumerate(spans, start=1):
                wait = data_wait_share(lines[lo:hi], args.batch_size)
                medians = statistics.median(times[lo:hi]), statistics.median(walls[lo:hi])
                rows.append((f"seed cache=both epoch {e}", *medians, wait))
            mean = (
                "seed cache=both mean of epochs",
                statistics.mean(r[1] for r in rows),
                statistics.mean(r[2] for r in rows),
                statistics.mean(r[3] for r in rows),
            )
            rows.append(mean)
        else:
            step_s, wall = statistics.median(times[args.warmup :]), statistics.median(walls[args.warmup :])
            rows.append((res["label"], step_s, wall, data_wait_share(lines[args.warmup :], args.batch_size)))
        for label, step_s, wall, wait in rows:
            # Cached epochs run no teacher: their model FLOPs are the SFT step's.
            teacher_free = label.startswith("seed cache=both epoch") and not label.endswith("epoch 1")
            kind = "sft" if teacher_free else method
            f3 = per_sample.step(kind, 3.0) * args.batch_size
            f2 = per_sample.step(kind, 2.0) * args.batch_size
            floor = floor_flops(per_sample, kind, res["cfg"])
            if label == "sft":
                sft = {"step_s": step_s, "floor": floor}
            achieved = f3 / step_s
            gb = (res["peak"] or 0) / 1e9
            extra = ((res["peak"] or 0) - (res["before"] or 0)) / 1e9
            ratio = step_s / sft["step_s"] if sft else float("nan")
            floor_ratio = floor / sft["floor"] if sft else float("nan")
            if label.endswith("mean of epochs"):
                floor_ratio = float("nan")  # a mean of epochs with different floors has none of its own
            cells = [f"{label:34}", f"{wall:8.3f}", f"{100 * wait:6.1f}%", f"{step_s:9.4f}", f"{ratio:6.2f}"]
            cells += [f"{floor_ratio:7.2f}"]
            cells += [
                f"{ratio / floor_ratio:10.3f}",
                f"{args.batch_size / step_s:10.2f}",
                f"{args.batch_size * seq / step_s:10.0f}",
            ]
            cells += [f"{achieved / 1e12:8.4f}", f"{100 * achieved / rate:6.1f}%", f"{100 * f2 / step_s / rate:6.1f}%"]
            cells += [f"{gb:8.2f}", f"{extra:6.2f}"]
            print(" ".join(cells))
            report.append(
                {
                    "config": label,
                    "step_s": step_s,
                    "wall_s": wall,
                    "data_wait_share": wait,
                    "num_workers": res["cfg"].num_workers,
                    "x_sft": ratio,
                    "floor_x_sft": floor_ratio,
                    "measured_over_floor": ratio / floor_ratio,
                    "samples_per_s": args.batch_size / step_s,
                    "tokens_per_s": args.batch_size * seq / step_s,
                    "mfu_x3": achieved / rate,
                    "mfu_x2": f2 / step_s / rate,
                    "peak_bytes": res["peak"],
                    "step_times": times if label == res["label"] else None,
                }
            )
    print(
        "floor x: model FLOPs (f = 2, recomputation included) over the SFT row's; meas/floor = x SFT / floor x. "
        "peak GB: CPU = peak RSS of the whole process (VmHWM); GPU = torch.cuda.max_memory_allocated. "
        "+GB = above the level before the configuration started. "
        "wait % = share of the loop's step time spent waiting for data (metrics.jsonl's data_wait_share)."
    )
    loader_comparison(report, workers, device)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": sys.argv,
                    "device": device,
                    "matmul_flops": rate,
                    "sequence": seq,
                    "supervised": sup,
                    "results": report,
                },
                indent=1,
            )
        )


def loader_comparison(report: list[dict[str, Any]], workers: int, device: str) -> None:
    """Print the data loader's effect: wall step time and data-wait share with `workers` and with 0."""
    if workers == 0:
        return
    rows = {row["config"]: row for row in report}
    note = "" if device == "cuda" else " (wall time: with workers the encoding leaves this process's CPU time)"
    print(f"data loader, {workers} worker{'s' if workers > 1 else ''} vs 0{note}:")
    for method in ("sft", "seed"):
        on, off = rows.get(method), rows.get(f"{method} num_workers=0")
        if on is None or off is None:
            continue
        print(
            f"  {method:4}: wall {on['wall_s']:.3f} s vs {off['wall_s']:.3f} s per step "
            f"(0 workers / {workers}: {off['wall_s'] / on['wall_s']:.2f}x); "
            f"data wait {100 * on['data_wait_share']:.1f}% vs {100 * off['data_wait_share']:.1f}% of the step"
        )


def count_model(shape: shapes.Shape, image_tokens: int) -> shapes.Counts:
    """Parameter counts: built shapes from a meta-device build (no memory), tiny models loaded on CPU."""
    if shape.built:
        model = shapes.build_model(shape, shapes.build_processor(shape), torch.bfloat16, "meta")
    else:
        model = loading.load(shape.name, dtype="fp32", device="cpu").model
    return shapes.counts(model, image_tokens)


if __name__ == "__main__":
    main()
