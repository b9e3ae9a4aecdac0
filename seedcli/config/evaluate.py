"""Config of `seed evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seedcli.config.base import check, option, require
from seedcli.core.choices import DEVICES, DTYPES, QUANTIZATION
from seedcli.evals.prompts import CHAIR_PROMPT, PROTOCOLS
from seedcli.rundir import DEFAULT_RUNS_ROOT

MODEL = "Model"
BENCH = "Benchmarks"
DECODE = "Decoding"
SCORE = "Score-only mode"
OUTPUT = "Output"
DIST = "Distributed"
DETECTOR = "Detector"

POPE_CHOICES = ("random", "popular", "adversarial", "all")
DECODE_CHOICES = ("plain", "vcd")
POPE_SCORING = ("generate", "logits")
DEFAULT_DATA = Path("seed-data")
DEFAULT_DETECTOR_SHIFTS = 3


@dataclass(frozen=True)
class EvaluateConfig:
    """What `seed evaluate` evaluates, how, and where it writes."""

    model: str | None = option(
        None,
        "Base model: alias, hub id, local or merged directory, or tiny-llava / tiny-qwen2-vl. Default: the base model "
        "of --adapter.",
        panel=MODEL,
    )
    adapter: tuple[str, ...] = option(
        (),
        "Run directory of `seed distill` (repeatable); each is evaluated next to the base model. Default with no "
        "--model: the newest finished run under --runs-root.",
        multiple=True,
        panel=MODEL,
    )
    runs_root: Path = option(
        DEFAULT_RUNS_ROOT, "Where to look for the newest run when neither --model nor --adapter is given.", panel=MODEL
    )
    dtype: str = option("auto", "Weight dtype (auto = bf16 on capable GPUs, else fp32).", choices=DTYPES, panel=MODEL)
    device: str = option("auto", "Device (auto = cuda when available).", choices=DEVICES, panel=MODEL)
    quantization: str = option(
        "none", "Load the base model in 4 or 8 bit (bitsandbytes).", choices=QUANTIZATION, panel=MODEL
    )
    trust_remote_code: bool = option(False, "Allow custom model code from the hub.", panel=MODEL)

    data: Path = option(DEFAULT_DATA, "Data directory from `seed prepare` (POPE splits and CHAIR images).", panel=BENCH)
    pope: str | None = option(None, "POPE split to evaluate (all = the three).", choices=POPE_CHOICES, panel=BENCH)
    chair: bool = option(False, "Evaluate CHAIR (caption hallucination).", panel=BENCH)
    limit: int | None = option(
        None,
        "Evaluate only the first N questions per POPE split and the first N CHAIR images (smoke runs).",
        min=1,
        panel=BENCH,
    )
    protocol: str = option(
        "greedy",
        "greedy: LLaVA suffix, greedy decoding; vcd: VCD suffix, sampling at --temperature over --seeds seeds.",
        choices=tuple(PROTOCOLS),
        panel=BENCH,
    )
    pope_scoring: str = option(
        "generate",
        "generate: parse generated answers; logits: compare yes/no next-token logits (one forward per question).",
        choices=POPE_SCORING,
        panel=BENCH,
    )
    pope_suffix: str | None = option(
        None, "Replace the protocol's POPE prompt suffix (default: the protocol's).", panel=BENCH
    )
    chair_prompt: str = option(CHAIR_PROMPT, "CHAIR captioning prompt.", panel=BENCH)
    max_new_tokens: int = option(8, "New-token limit for POPE answers.", min=1, panel=BENCH)
    max_new_tokens_chair: int = option(
        512, "New-token limit for CHAIR captions (shorter limits change CHAIR by tens of points).", min=1, panel=BENCH
    )
    bootstrap: int = option(1000, "Bootstrap resamples for CHAIR confidence intervals (0 = off).", min=0, panel=BENCH)

    decode: str = option(
        "plain",
        "plain: the protocol's decoding; vcd: Visual Contrastive Decoding on top of it.",
        choices=DECODE_CHOICES,
        panel=DECODE,
    )
    temperature: float = option(
        1.0, "Sampling temperature (sampling protocols only).", min=0.0, min_exclusive=True, panel=DECODE
    )
    top_p: float = option(
        1.0, "Nucleus sampling mass (sampling protocols only).", min=0.0, max=1.0, min_exclusive=True, panel=DECODE
    )
    seeds: int = option(
        3, "Sampling runs averaged, with their spread (sampling protocols only; greedy runs once).", min=1, panel=DECODE
    )
    seed: int = option(0, "Base seed; sampling run k uses seed + k.", panel=DECODE)
    vcd_alpha: float = option(1.0, "VCD contrast strength alpha.", min=0.0, panel=DECODE)
    vcd_beta: float = option(
        0.1, "VCD adaptive plausibility threshold beta.", min=0.0, max=1.0, min_exclusive=True, panel=DECODE
    )
    vcd_noise_step: int = option(500, "VCD noise step k of the 1000-step schedule.", min=0, max=999, panel=DECODE)
    batch_size: int = option(8, "Questions per batch.", min=1, panel=DECODE)
    share_prefix: bool = option(
        True,
        "POPE: answer all splits together, each distinct question once, with one prefilled prompt prefix and one "
        "processor call per image; --no-share-prefix answers each split in plain batches (same answers, slower).",
        panel=DECODE,
    )

    pope_file: Path | None = option(
        None, "Score-only: an official POPE question file (JSONL); needs --answers.", panel=SCORE
    )
    answers: Path | None = option(
        None,
        "Score-only: answers to --pope-file, one {\"question_id\", \"text\"} per line, matched by id; "
        "or an lmms-eval POPE sample log (samples_pope*.jsonl).",
        panel=SCORE,
    )
    captions: Path | None = option(
        None, 'Score-only: captions to score with CHAIR ({"image_id", "caption"} per line).', panel=SCORE
    )
    coco_annotations: Path | None = option(
        None,
        "CHAIR ground truth for --captions from this COCO annotation directory (instances_val2014.json, "
        "captions_val2014.json) instead of --data.",
        panel=SCORE,
    )

    out: Path | None = option(
        None,
        "Results directory (default: results/<UTC timestamp>); rerunning with the same --out resumes.",
        panel=OUTPUT,
    )
    html: Path | None = option(
        None,
        "Also write a self-contained web page: metrics, charts, McNemar tests, the questions where models disagree.",
        panel=OUTPUT,
    )

    detector: str | None = option(
        None,
        "Run directory of `seed detect train` (RUN or RUN@STAGE): also report the share of the CHAIR captions' "
        "objects, attributes and relations it flags (needs --chair; docs/detect.md).",
        panel=DETECTOR,
    )
    detector_shifts: int = option(
        DEFAULT_DETECTOR_SHIFTS,
        "Mapping shifts the detector averages (1 = a single plain pass).",
        min=1,
        panel=DETECTOR,
    )
    detector_threshold: float | None = option(
        None,
        "The detector flags an option when P(hallucinated) exceeds this (default: the run's thresholds calibrated "
        "on dev, one per option kind, else 0.5).",
        min=0.0,
        max=1.0,
        panel=DETECTOR,
    )

    gpus: int | None = option(
        None,
        "Shard the questions over N GPUs of this node (one process each, started through torch's elastic launcher); "
        "results equal a single-process run.",
        min=1,
        panel=DIST,
    )
    nproc: int | None = option(
        None, "Shard over N processes on --device (e.g. --device cpu --nproc 2).", min=1, panel=DIST
    )
    master_port: int | None = option(
        None, "Rendezvous port for the worker processes (default: a free port).", min=1, max=65535, panel=DIST
    )
    timeout_s: float = option(
        1800.0, "Seconds a process waits for the others before the run fails.", min=0.0, min_exclusive=True, panel=DIST
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", tuple(str(a) for a in self.adapter))
        check(self)
        require(
            (self.pope_file is None) == (self.answers is None),
            "--pope-file" if self.answers is None else "--answers",
            "needs --answers" if self.answers is None else "needs --pope-file",
        )
        require(
            self.coco_annotations is None or self.captions is not None,
            "--coco-annotations",
            "is only used with --captions.",
        )
        score_only = self.pope_file is not None or self.captions is not None
        require(
            not (score_only and (self.pope or self.chair)),
            "--pope-file/--captions",
            "score existing outputs; do not combine them with --pope/--chair.",
        )
        require(
            not (score_only and (self.model or self.adapter)),
            "--pope-file/--captions",
            "score existing outputs; --model/--adapter are not used.",
        )
        require(
            score_only or self.pope is not None or self.chair,
            "--pope",
            "or --chair is needed: choose what to evaluate (e.g. --pope all --chair).",
        )
        require(
            self.detector is not None
            or (self.detector_shifts == DEFAULT_DETECTOR_SHIFTS and self.detector_threshold is None),
            "--detector-shifts/--detector-threshold",
            "need --detector RUN.",
        )
        require(
            self.detector is None or self.chair,
            "--detector",
            "rates the CHAIR captions that this run generates; add --chair.",
        )
        require(
            self.gpus is None or self.nproc is None or self.gpus == self.nproc,
            "--gpus",
            "and --nproc disagree; give one of them.",
        )
        require(
            self.gpus is None or self.device != "cpu",
            "--gpus",
            "needs CUDA; use --device cpu --nproc N for CPU processes.",
        )
        require(
            not (score_only and (self.gpus or 1) * (self.nproc or 1) > 1),
            "--gpus/--nproc",
            "shard generation; score-only mode has nothing to shard.",
        )
        require(
            not (self.pope_scoring == "logits" and self.decode == "vcd"),
            "--pope-scoring logits",
            "scores the plain model's next-token logits; it cannot be combined with --decode vcd.",
        )

    @property
    def processes(self) -> int:
        """Worker processes asked for (1 = no sharding)."""
        return self.gpus or self.nproc or 1

    @property
    def score_only(self) -> bool:
        """Whether this run scores existing answers/captions instead of generating."""
        return self.pope_file is not None or self.captions is not None

    @property
    def pope_splits(self) -> tuple[str, ...]:
        """The POPE splits asked for."""
        if self.pope is None:
            return ()
        return POPE_CHOICES[:3] if self.pope == "all" else (self.pope,)
