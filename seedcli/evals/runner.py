"""The evaluation runner behind `seed evaluate`: POPE and CHAIR for a base model and its adapters.

Flow: resolve the models (base + each run directory's adapter chain) and the benchmark items, check
every input before loading a model, generate what is not in samples.jsonl yet (appended per batch,
so an interrupted run resumes), then score everything from samples.jsonl and write results.json
atomically. Scoring uses `pope_scoring`, `chair` and `stats`; nothing is re-implemented here.

The output directory (--out, default results/<UTC timestamp>) holds:
    settings.json   the settings that change outputs; a rerun with other settings is refused
    samples.jsonl   one line per (model, benchmark, split, seed, question or image)
    results.json    metrics, comparisons, config, prompts, template, identities, versions
The results schema (SCHEMA_VERSION) is documented in docs/evaluate.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli import __version__, atomic, rundir
from seedcli.config.base import to_dict
from seedcli.config.evaluate import EvaluateConfig
from seedcli.errors import ConfigError, DataError, storage_error
from seedcli.evals.prompts import PROTOCOLS, chat_template, pope_prompt, render_prompt
from seedcli.reporting import Reporter

SCHEMA_VERSION = 1
SETTINGS = "settings.json"
SAMPLES = "samples.jsonl"
SHARD_NAME = "samples.rank-{rank}.jsonl"
SHARD_GLOB = "samples.rank-*.jsonl"
RESULTS = "results.json"
DEFAULT_RESULTS_ROOT = Path("results")
BASE_LABEL = "base"
PARSERS = ("official", "robust")
POPE_RATES = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CHAIR_RATES = ("chair_s_pct", "chair_i_pct", "recall_pct", "mean_length_words")
# A question/caption is identified by these sample fields (the resume key).
KEY_FIELDS = ("model", "benchmark", "split", "seed", "id")


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: the base, or the base with a run directory's adapter chain."""

    label: str
    model: str
    adapters: tuple[Path, ...] = ()
    run: Path | None = None


@dataclass(frozen=True)
class Items:
    """The benchmark items of this invocation (after --limit)."""

    pope: dict[str, list[dict[str, Any]]]  # split -> questions in file order
    chair: list[dict[str, Any]]  # {"image_id", "image", "objects"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_out(root: Path = DEFAULT_RESULTS_ROOT) -> Path:
    """results/<UTC timestamp>, with a numeric suffix if that directory exists already."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(field)) for field in KEY_FIELDS)


# ----------------------------------------------------------------------------- models and data


def _unique_label(name: str, taken: set[str]) -> str:
    label, n = name, 1
    while label in taken:
        n += 1
        label = f"{name}-{n}"
    return label


def resolve_models(cfg: EvaluateConfig, reporter: Reporter) -> list[ModelSpec]:
    """The base model and one spec per adapter run (newest run under --runs-root when none is named)."""
    from seedcli.rundir import newest_run, open_run

    adapters: tuple[Path | str, ...] = cfg.adapter
    if not cfg.model and not adapters:
        adapters = (newest_run(cfg.runs_root),)
        reporter.info(f"no --model or --adapter given: evaluating the newest run {adapters[0]} against its base model")
    runs = [open_run(path) for path in adapters]
    base = cfg.model
    if base is None:
        bases = sorted({run.base_model for run in runs})
        if len(bases) > 1:
            raise ConfigError(
                f"--adapter runs were trained on different base models ({', '.join(bases)}); "
                "evaluate them separately or pass --model."
            )
        base = bases[0]
    specs = [ModelSpec(label=BASE_LABEL, model=base)]
    taken = {BASE_LABEL}
    for run in runs:
        if run.base_model != base:
            reporter.warn(f"--adapter {run.root} was trained on {run.base_model!r} but is applied to --model {base!r}.")
        label = _unique_label(run.root.resolve().name, taken)
        taken.add(label)
        specs.append(
            ModelSpec(
                label=label,
                model=base,
                adapters=tuple(p.resolve() for p in run.adapter_chain()),
                run=run.root.resolve(),
            )
        )
    return specs


def check_adapters(specs: Sequence[ModelSpec], cfg: EvaluateConfig) -> None:
    """Before anything loads: adapter files are readable and were trained on the architecture of the base (exit 3/4)."""
    from seedcli.models.adapters import check_base, check_readable
    from seedcli.models.families import resolve
    from seedcli.models.loading import model_config
    from seedcli.rundir import open_run

    configs: dict[str, Any] = {}
    for spec in specs:
        if not spec.adapters:
            continue
        check_readable(spec.adapters)
        if spec.model not in configs:
            configs[spec.model] = model_config(resolve(spec.model).source, trust_remote_code=cfg.trust_remote_code)
        run = open_run(spec.run) if spec.run is not None else None
        check_base(spec.adapters, model=spec.model, config=configs[spec.model], run=run)


def _check_images(data: Any, part: str, names: Iterable[str]) -> None:
    missing = [name for name in dict.fromkeys(names) if not data.resolve_image(part, name).is_file()]
    if missing:
        raise DataError(
            f"--data {data.root}: {len(missing)} {part} image(s) missing under {data.image_root(part)} "
            f"(first: {missing[0]}); fix the image root or re-run `seed prepare`."
        )


def load_items(cfg: EvaluateConfig, reporter: Reporter) -> tuple[Any, Items]:
    """Open the data directory and read every question and CHAIR image this run needs, checked."""
    from seedcli.data.datadir import open_data_dir
    from seedcli.evals.pope_scoring import load_questions

    data = open_data_dir(cfg.data)
    pope = {split: load_questions(data.pope_path(split), reporter=reporter)[: cfg.limit] for split in cfg.pope_splits}
    for questions in pope.values():
        _check_images(data, "pope", (q["image"] for q in questions))
    chair = data.chair_images()[: cfg.limit] if cfg.chair else []
    if chair:
        _check_images(data, "chair", (row["image"] for row in chair))
    return data, Items(pope=pope, chair=chair)


def decodings(cfg: EvaluateConfig, max_new_tokens: int) -> list[Any]:
    """One Decoding per run: `--seeds` runs (seed, seed+1, ...) when the protocol samples, else one."""
    from seedcli.evals.generation import Decoding

    sampling = PROTOCOLS[cfg.protocol].sampling
    mode = "vcd" if cfg.decode == "vcd" else ("sample" if sampling else "greedy")
    runs = cfg.seeds if sampling else 1
    return [
        Decoding(
            mode=mode,
            max_new_tokens=max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed + k,
            vcd_alpha=cfg.vcd_alpha,
            vcd_beta=cfg.vcd_beta,
            vcd_noise_step=cfg.vcd_noise_step,
            vcd_sample=sampling,
        )
        for k in range(runs)
    ]


def pope_suffix(cfg: EvaluateConfig) -> str:
    """The POPE prompt suffix in force (--pope-suffix, else the protocol's)."""
    return cfg.pope_suffix if cfg.pope_suffix is not None else PROTOCOLS[cfg.protocol].pope_suffix


def protocol_label(cfg: EvaluateConfig) -> str:
    """How results name their protocol: greedy, vcd, +vcd-decoding, or logits (<prompt protocol> prompt)."""
    if cfg.pope_scoring == "logits":
        return f"logits ({cfg.protocol} prompt)"
    return cfg.protocol + ("+vcd-decoding" if cfg.decode == "vcd" else "")


def _seeds(cfg: EvaluateConfig) -> list[int]:
    return [d.seed for d in decodings(cfg, 1)]


def _settings(cfg: EvaluateConfig, specs: Sequence[ModelSpec]) -> dict[str, Any]:
    """What makes an output what it is; a resumed run must match it exactly."""
    return {
        "mode": "generate",
        "models": [{"label": s.label, "model": s.model, "adapters": [str(p) for p in s.adapters]} for s in specs],
        "data": str(Path(cfg.data).resolve()),
        "protocol": cfg.protocol,
        "decode": cfg.decode,
        "pope_scoring": cfg.pope_scoring,
        "pope_suffix": pope_suffix(cfg),
        "chair_prompt": cfg.chair_prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "max_new_tokens_chair": cfg.max_new_tokens_chair,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
        "vcd_alpha": cfg.vcd_alpha,
        "vcd_beta": cfg.vcd_beta,
        "vcd_noise_step": cfg.vcd_noise_step,
        "dtype": cfg.dtype,
        "quantization": cfg.quantization,
    }


def _open_out(out: Path, settings: dict[str, Any]) -> None:
    """Create --out, or check that an existing one was made with the same settings (resume)."""
    path = out / SETTINGS
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"--out {out} holds results made with different settings ({', '.join(changed)}); "
                "rerun with the same settings to resume, or choose another --out."
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not a seed evaluate results directory; choose another path.")
    atomic.write_json(path, {"schema_version": SCHEMA_VERSION, "settings": settings})


def _read_samples(path: Path, reporter: Reporter) -> list[dict[str, Any]]:
    """Rows of samples.jsonl; a torn last line (crash mid-write) is dropped and the file repaired."""
    if not path.is_file():
        return []
    rows = atomic.read_jsonl(path)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        reporter.warn(f"{path}: dropping a torn last line from an interrupted run.")
        atomic.write_jsonl(path, rows)
    return rows


# ----------------------------------------------------------------------------- generation


def _load_base(model: str, cfg: EvaluateConfig) -> Any:
    from seedcli.models.loading import load

    return load(
        model,
        dtype=cfg.dtype,
        device=cfg.device,
        quantization=cfg.quantization,
        trust_remote_code=cfg.trust_remote_code,
    )


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pope_rows(
    spec: ModelSpec,
    split: str,
    seed: int,
    questions: Sequence[dict[str, Any]],
    prompts: Sequence[str],
    outputs: Sequence[Any],
) -> list[dict[str, Any]]:
    from seedcli.evals.pope_scoring import parse_official, parse_robust

    rows = []
    for question, prompt, output in zip(questions, prompts, outputs):
        extra = {}
        if isinstance(output, dict):  # logits scoring
            extra = {"yes_score": output["yes_score"], "no_score": output["no_score"]}
            output = output["answer"]
        official, robust = parse_official(output), parse_robust(output)
        rows.append(
            {
                "model": spec.label,
                "benchmark": "pope",
                "split": split,
                "seed": seed,
                "id": question["question_id"],
                "image": question["image"],
                "input": prompt,
                "output": output,
                "parsed": {"official": official, "robust": robust},
                "label": question["label"],
                "correct": official == question["label"],
                "correct_robust": robust == question["label"],
                **extra,
            }
        )
    return rows


def _chair_rows(
    spec: ModelSpec, seed: int, images: Sequence[dict[str, Any]], prompt: str, captions: Sequence[str]
) -> list[dict[str, Any]]:
    from seedcli.evals.chair import caption_objects

    rows = []
    for image, caption in zip(images, captions):
        mentions = caption_objects(caption)
        hallucinated = [m for m in mentions if m[1] not in set(image["objects"])]
        rows.append(
            {
                "model": spec.label,
                "benchmark": "chair",
                "split": None,
                "seed": seed,
                "id": image["image_id"],
                "image": image["image"],
                "input": prompt,
                "output": caption,
                "parsed": {"mentions": mentions, "hallucinated": hallucinated},
                "label": list(image["objects"]),
                "correct": not hallucinated,
            }
        )
    return rows


@dataclass(frozen=True)
class _Part:
    """One unit of generation: a benchmark split under one decoding run."""

    benchmark: str
    split: str | None
    decoding: Any
    items: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.benchmark}" + (f" {self.split}" if self.split else "")


def _parts(cfg: EvaluateConfig, items: Items) -> list[_Part]:
    parts: list[_Part] = []
    pope_runs = decodings(cfg, cfg.max_new_tokens)
    if cfg.pope_scoring == "logits":
        pope_runs = pope_runs[:1]
    for split, questions in items.pope.items():
        parts.extend(_Part("pope", split, d, questions) for d in pope_runs)
    if items.chair:
        parts.extend(_Part("chair", None, d, items.chair) for d in decodings(cfg, cfg.max_new_tokens_chair))
    return parts


def _item_id(part: _Part, item: dict[str, Any]) -> Any:
    return item["question_id"] if part.benchmark == "pope" else item["image_id"]


def _run_pope(
    loaded: Any,
    spec: ModelSpec,
    entries: Sequence[tuple[_Part, list[dict[str, Any]]]],
    cfg: EvaluateConfig,
    data: Any,
    samples: Path,
    reporter: Reporter,
) -> None:
    """Answer the pending POPE questions of every split under one decoding run, appending each batch.

    A question asked in several splits (same image, same prompt) is answered once and recorded under
    every (split, question id) that asked it; batches hold few images with many questions each, and
    each image's common prompt prefix is prefilled once (`share_prefix`).
    """
    from seedcli.evals import generation
    from seedcli.evals.pope_logits import answer_tokens, score_logits

    if not cfg.share_prefix:
        _run_pope_unshared(loaded, spec, entries, cfg, data, samples, reporter)
        return
    suffix = pope_suffix(cfg)
    decoding = entries[0][0].decoding
    tokens = answer_tokens(loaded.processor.tokenizer) if cfg.pope_scoring == "logits" else None
    askers: dict[tuple[str, str], list[tuple[_Part, dict[str, Any]]]] = {}
    for part, pending in entries:
        for question in pending:
            askers.setdefault((question["image"], pope_prompt(question["text"], suffix)), []).append((part, question))
    keys = list(askers)
    prompts = [prompt for _, prompt in keys]
    images = [data.resolve_image("pope", image) for image, _ in keys]
    batches, _ = generation.plan(prompts, images, cfg.batch_size, share_prefix=True)
    model, processor, family = loaded.model, loaded.processor, loaded.family
    memo = generation.PrefixMemo()  # an image with more questions than a batch: its prefix serves every batch
    seed_note = f" seed {decoding.seed}" if len(_seeds(cfg)) > 1 else ""
    splits = "+".join(part.split or "" for part, _ in entries)
    total = sum(len(pending) for _, pending in entries)
    with reporter.task(f"{spec.label} pope {splits}{seed_note}", total=total, unit="q") as task:
        for batch in batches:
            asked = [prompts[i] for i in batch], [images[i] for i in batch]
            shared = {"batch_size": len(batch), "share_prefix": True, "prefix_memo": memo}
            if tokens is not None:
                outputs: list[Any] = score_logits(model, processor, family, *asked, tokens, **shared)
            else:
                outputs = generation.generate(model, processor, family, *asked, decoding, **shared)
            rows = []
            for i, output in zip(batch, outputs):
                for part, question in askers[keys[i]]:
                    rows += _pope_rows(spec, part.split or "", decoding.seed, [question], [prompts[i]], [output])
            atomic.append_jsonl_rows(samples, rows)
            task.advance(len(rows))


def _run_pope_unshared(
    loaded: Any,
    spec: ModelSpec,
    entries: Sequence[tuple[_Part, list[dict[str, Any]]]],
    cfg: EvaluateConfig,
    data: Any,
    samples: Path,
    reporter: Reporter,
) -> None:
    """`--no-share-prefix`: each split's pending questions in plain batches, every question computed in full."""
    from seedcli.evals import generation
    from seedcli.evals.pope_logits import answer_tokens, score_logits

    suffix = pope_suffix(cfg)
    tokens = answer_tokens(loaded.processor.tokenizer) if cfg.pope_scoring == "logits" else None
    model, processor, family = loaded.model, loaded.processor, loaded.family
    for part, pending in entries:
        seed_note = f" seed {part.decoding.seed}" if len(_seeds(cfg)) > 1 else ""
        with reporter.task(f"{spec.label} {part.name}{seed_note}", total=len(pending), unit="q") as task:
            for start in range(0, len(pending), cfg.batch_size):
                chunk = pending[start : start + cfg.batch_size]
                prompts = [pope_prompt(question["text"], suffix) for question in chunk]
                asked = prompts, [data.resolve_image("pope", question["image"]) for question in chunk]
                if tokens is not None:
                    outputs: list[Any] = score_logits(model, processor, family, *asked, tokens, batch_size=len(chunk))
                else:
                    outputs = generation.generate(
                        model, processor, family, *asked, part.decoding, batch_size=len(chunk)
                    )
                rows = _pope_rows(spec, part.split or "", part.decoding.seed, chunk, prompts, outputs)
                atomic.append_jsonl_rows(samples, rows)
                task.advance(len(chunk))


def _run_chair(
    loaded: Any,
    spec: ModelSpec,
    part: _Part,
    pending: list[dict[str, Any]],
    cfg: EvaluateConfig,
    data: Any,
    samples: Path,
    reporter: Reporter,
) -> None:
    """Caption the pending CHAIR images of one decoding run (batched decoding), appending each batch."""
    from seedcli.evals import generation

    seed_note = f" seed {part.decoding.seed}" if len(_seeds(cfg)) > 1 else ""
    with reporter.task(f"{spec.label} {part.name}{seed_note}", total=len(pending), unit="img") as task:
        for start in range(0, len(pending), cfg.batch_size):
            chunk = pending[start : start + cfg.batch_size]
            prompts = [cfg.chair_prompt] * len(chunk)
            images = [data.resolve_image("chair", row["image"]) for row in chunk]
            captions = generation.generate(
                loaded.model, loaded.processor, loaded.family, prompts, images, part.decoding, batch_size=cfg.batch_size
            )
            atomic.append_jsonl_rows(samples, _chair_rows(spec, part.decoding.seed, chunk, cfg.chair_prompt, captions))
            task.advance(len(chunk))


def _jobs(todo: Sequence[tuple[_Part, list[dict[str, Any]]]]) -> list[list[tuple[_Part, list[dict[str, Any]]]]]:
    """Units of generation: all POPE splits under one decoding run together, each CHAIR run alone."""
    pope: dict[int, list[tuple[_Part, list[dict[str, Any]]]]] = {}
    jobs: list[list[tuple[_Part, list[dict[str, Any]]]]] = []
    for part, pending in todo:
        if part.benchmark == "pope":
            if part.decoding.seed not in pope:
                pope[part.decoding.seed] = []
                jobs.append(pope[part.decoding.seed])
            pope[part.decoding.seed].append((part, pending))
        else:
            jobs.append([(part, pending)])
    return jobs


def _sample_files(out: Path) -> list[Path]:
    """samples.jsonl and the per-process shards of a sharded run (merged into it at the end)."""
    return [p for p in [out / SAMPLES, *sorted(out.glob(SHARD_GLOB))] if p.is_file()]


def _generate_all(
    cfg: EvaluateConfig,
    specs: Sequence[ModelSpec],
    data: Any,
    items: Items,
    samples: Path,
    reporter: Reporter,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
) -> list[dict[str, str]]:
    """Run every pending part for every model; failures are recorded and the rest goes on.

    With `world` processes, each takes a contiguous shard of every part's pending items and appends
    to its own shard file; every process reads what is done before any of them writes.
    """
    from seedcli.distributed import shard

    if rank == 0:
        for path in _sample_files(samples.parent):
            _read_samples(path, reporter)  # repairs a torn last line before anyone reads
    if barrier is not None:
        barrier()
    done = {_key(row) for path in _sample_files(samples.parent) for row in atomic.read_jsonl(path)}
    if barrier is not None:
        barrier()
    if world > 1:
        samples = samples.parent / SHARD_NAME.format(rank=rank)
    parts = _parts(cfg, items)
    errors: list[dict[str, str]] = []
    loaded, pristine = None, False
    for spec in specs:
        todo = []
        for part in parts:
            pending = [
                item
                for item in part.items
                if _key(
                    {
                        "model": spec.label,
                        "benchmark": part.benchmark,
                        "split": part.split,
                        "seed": part.decoding.seed,
                        "id": _item_id(part, item),
                    }
                )
                not in done
            ]
            skipped = len(part.items) - len(pending)
            pending = shard(pending, rank, world)
            if skipped:
                reporter.info(
                    f"{spec.label} {part.name} seed {part.decoding.seed}: "
                    f"{skipped} finished item(s) in {samples.name} skipped"
                )
            if pending:
                todo.append((part, pending))
        if not todo:
            continue
        try:
            if loaded is None or not pristine:
                loaded = None
                _release()
                loaded = _load_base(spec.model, cfg)
            if spec.adapters:
                from seedcli.models.adapters import check_fits
                from seedcli.rundir import apply_adapters

                check_fits(loaded.model, spec.adapters, base=spec.model, run=spec.run or spec.adapters[0])
                loaded = dataclasses.replace(loaded, model=apply_adapters(loaded.model, list(spec.adapters)))
            pristine = not spec.adapters
        except Exception as exc:  # noqa: BLE001 - one model failing must not stop the others
            loaded, pristine = None, False
            for part, _ in todo:
                errors.append(
                    {
                        "model": spec.label,
                        "part": part.name,
                        "seed": str(part.decoding.seed),
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
            reporter.warn(f"{spec.label}: cannot load the model ({type(exc).__name__}: {exc}); its parts are skipped.")
            continue
        for job in _jobs(todo):
            try:
                if job[0][0].benchmark == "pope":
                    _run_pope(loaded, spec, job, cfg, data, samples, reporter)
                else:
                    _run_chair(loaded, spec, *job[0], cfg, data, samples, reporter)
            except Exception as exc:  # noqa: BLE001 - record, go on, exit non-zero at the end
                if storage_error(exc) is not None:
                    raise  # disk full or read-only: every later part would fail the same way (exit 5)
                failure = f"{type(exc).__name__}: {exc}"
                for part, _ in job:
                    seed = str(part.decoding.seed)
                    errors.append({"model": spec.label, "part": part.name, "seed": seed, "error": failure})
                    reporter.warn(f"{spec.label} {part.name}: failed ({failure}).")
    return errors


# ----------------------------------------------------------------------------- scoring


def _merge_shards(out: Path, specs: Sequence[ModelSpec], parts: list[_Part]) -> None:
    """Fold any shard files into samples.jsonl, every row in canonical order (model, part, item)."""
    order: dict[tuple[str, ...], int] = {}
    for spec in specs:
        for part in parts:
            for item in part.items:
                key = _key(
                    {
                        "model": spec.label,
                        "benchmark": part.benchmark,
                        "split": part.split,
                        "seed": part.decoding.seed,
                        "id": _item_id(part, item),
                    }
                )
                order.setdefault(key, len(order))
    shards = sorted(out.glob(SHARD_GLOB))
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for path in [out / SAMPLES, *shards]:
        if path.is_file():
            for row in atomic.read_jsonl(path):
                rows.setdefault(_key(row), row)
    ranked = sorted(rows.items(), key=lambda kv: order.get(kv[0], len(order)))
    atomic.write_jsonl(out / SAMPLES, [row for _, row in ranked])
    for path in shards:
        path.unlink()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pope_block(per_seed: list[dict[str, Any]], n_questions: int) -> dict[str, Any]:
    """Seed-averaged POPE metrics with their spread; per-seed results kept."""
    block: dict[str, Any] = {"n_questions": n_questions, "seeds": [s["seed"] for s in per_seed]}
    spread: dict[str, Any] = {}
    for parser in PARSERS:
        keys = per_seed[0][parser].keys()
        block[parser] = {k: statistics.fmean(s[parser][k] for s in per_seed) for k in keys}
        spread[parser] = {k: _mean_std([s[parser][k] for s in per_seed])[1] for k in POPE_RATES}
    block["spread"] = spread
    block["n_unreadable"] = statistics.fmean(s["n_unreadable"] for s in per_seed)
    block["per_seed"] = per_seed
    return block


def score_pope_rows(
    questions: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], seed: Any, reporter: Reporter | None = None
) -> dict[str, Any]:
    """POPE metrics of one model, split and seed from its sample rows (joined by question_id)."""
    from seedcli.evals.pope_scoring import score_pope

    answers = [{"question_id": r["id"], "text": r["output"]} for r in rows]
    scored = score_pope(questions, answers, reporter=reporter)
    return {
        "seed": seed,
        "official": scored["official"],
        "robust": scored["robust"],
        "n_unreadable": scored["n_unreadable"],
        "unreadable_ids": scored["unreadable_ids"],
    }


def _chair_block(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    block: dict[str, Any] = {"n_images": per_seed[0]["n_captions"], "seeds": [s["seed"] for s in per_seed]}
    for key in CHAIR_RATES:
        block[key], _ = _mean_std([s[key] for s in per_seed])
    block["spread"] = {key: _mean_std([s[key] for s in per_seed])[1] for key in CHAIR_RATES}
    block["per_seed"] = per_seed
    return block


def score_chair_rows(
    rows: Sequence[dict[str, Any]], gt: dict[str, list[str]], seed: Any, bootstrap: int, bootstrap_seed: int
) -> dict[str, Any]:
    """CHAIR metrics of one model and seed from its caption rows (ground truth by image_id)."""
    from seedcli.evals.chair import chair_metrics

    items = [{"image_id": r["id"], "caption": r["output"], "gt_objects": gt[str(r["id"])]} for r in rows]
    metrics = chair_metrics(items, bootstrap=bootstrap, seed=bootstrap_seed)
    metrics.pop("per_image")
    return {"seed": seed, **metrics}


def _rows_by(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, dict[str, Any]]]:
    """(model, benchmark, split, seed) -> {id: row}; a later row for the same key wins."""
    grouped: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        group = (str(row["model"]), str(row["benchmark"]), str(row["split"]), str(row["seed"]))
        grouped.setdefault(group, {})[str(row["id"])] = row
    return grouped


def _score_all(
    cfg: EvaluateConfig,
    specs: Sequence[ModelSpec],
    items: Items,
    rows: list[dict[str, Any]],
    errors: list[dict[str, str]],
    reporter: Reporter,
) -> dict[str, Any]:
    grouped = _rows_by(rows)
    parts = _parts(cfg, items)
    pope: dict[str, Any] = {}
    chair: dict[str, Any] = {}
    gt = {str(r["image_id"]): list(r["objects"]) for r in items.chair}
    for spec in specs:
        for split, questions in items.pope.items():
            ids = [str(q["question_id"]) for q in questions]
            per_seed = []
            for part in (p for p in parts if p.benchmark == "pope" and p.split == split):
                got = grouped.get((spec.label, "pope", split, str(part.decoding.seed)), {})
                if any(i not in got for i in ids):
                    continue  # a failed part: recorded in errors, not scored
                per_seed.append(score_pope_rows(questions, [got[i] for i in ids], part.decoding.seed, reporter))
            if per_seed:
                pope.setdefault(spec.label, {})[split] = _pope_block(per_seed, len(questions))
        if spec.label in pope and len(pope[spec.label]) > 1:
            splits = [pope[spec.label][s] for s in items.pope if s in pope[spec.label]]
            pope[spec.label]["average"] = {
                parser: {k: statistics.fmean(b[parser][k] for b in splits) for k in POPE_RATES} for parser in PARSERS
            }
        if items.chair:
            ids = [str(r["image_id"]) for r in items.chair]
            per_seed = []
            for part in (p for p in parts if p.benchmark == "chair"):
                got = grouped.get((spec.label, "chair", "None", str(part.decoding.seed)), {})
                if any(i not in got for i in ids):
                    continue
                per_seed.append(
                    score_chair_rows([got[i] for i in ids], gt, part.decoding.seed, cfg.bootstrap, cfg.seed)
                )
            if per_seed:
                chair[spec.label] = _chair_block(per_seed)
    expected = {(s.label, p.name, str(p.decoding.seed)) for s in specs for p in parts}
    recorded = {(e["model"], e["part"], e["seed"]) for e in errors}
    for label, part_name, seed in sorted(expected - recorded):
        benchmark, _, split = part_name.partition(" ")
        scored = pope.get(label, {}).get(split) if benchmark == "pope" else chair.get(label)
        if scored is None or int(seed) not in scored["seeds"]:
            errors.append(
                {"model": label, "part": part_name, "seed": seed, "error": "no complete set of samples to score"}
            )
    return {"pope": pope, "chair": chair, "comparisons": _comparisons(specs, items, pope, chair, grouped, parts)}


def _delta(new: dict[str, float], old: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
    return {k: new[k] - old[k] for k in keys}


def _comparisons(
    specs: Sequence[ModelSpec],
    items: Items,
    pope: dict[str, Any],
    chair: dict[str, Any],
    grouped: dict[Any, Any],
    parts: list[_Part],
) -> dict[str, Any]:
    """Each adapter model against the base: metric deltas and exact McNemar per split and seed."""
    from seedcli.evals.stats import paired_mcnemar

    out: dict[str, Any] = {}
    for spec in specs[1:]:
        entry: dict[str, Any] = {"baseline": BASE_LABEL, "pope": {}, "chair": None}
        for split, questions in items.pope.items():
            new, old = pope.get(spec.label, {}).get(split), pope.get(BASE_LABEL, {}).get(split)
            if new is None or old is None:
                continue
            ids = [str(q["question_id"]) for q in questions]
            tests: dict[str, list[dict[str, Any]]] = {parser: [] for parser in PARSERS}
            for seed in sorted(set(new["seeds"]) & set(old["seeds"])):
                a = grouped[(BASE_LABEL, "pope", split, str(seed))]
                b = grouped[(spec.label, "pope", split, str(seed))]
                for parser, field in (("official", "correct"), ("robust", "correct_robust")):
                    result = paired_mcnemar([bool(a[i][field]) for i in ids], [bool(b[i][field]) for i in ids])
                    tests[parser].append({"seed": seed, **result})
            entry["pope"][split] = {
                "delta": {parser: _delta(new[parser], old[parser], POPE_RATES) for parser in PARSERS},
                "mcnemar": tests,
            }
        if "average" in pope.get(spec.label, {}) and "average" in pope.get(BASE_LABEL, {}):
            entry["pope"]["average"] = {
                "delta": {
                    parser: _delta(pope[spec.label]["average"][parser], pope[BASE_LABEL]["average"][parser], POPE_RATES)
                    for parser in PARSERS
                }
            }
        if spec.label in chair and BASE_LABEL in chair:
            entry["chair"] = {"delta": _delta(chair[spec.label], chair[BASE_LABEL], CHAIR_RATES)}
        out[spec.label] = entry
    return out


# ----------------------------------------------------------------------------- identities


def _sha256(path: Path) -> str | None:
    from seedcli.data.datadir import sha256_file

    return sha256_file(path) if path.is_file() else None


def _identities(
    cfg: EvaluateConfig, specs: Sequence[ModelSpec], items: Items
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Model/adapter identities, and the exact prompts and chat template (from the base processor)."""
    from seedcli.models.families import family_for, resolve
    from seedcli.models.loading import load_processor, model_config

    ref = resolve(specs[0].model)
    family = family_for(model_config(ref.source, trust_remote_code=cfg.trust_remote_code).model_type)
    processor = load_processor(ref.source, family, trust_remote_code=cfg.trust_remote_code)
    models = [
        {
            "label": s.label,
            "model": s.model,
            "source": ref.source,
            "kind": ref.kind,
            "family": family.name,
            "run": str(s.run) if s.run else None,
            "adapters": [{"path": str(p), "sha256": _sha256(p / "adapter_model.safetensors")} for p in s.adapters],
        }
        for s in specs
    ]
    suffix = pope_suffix(cfg)
    prompts: dict[str, Any] = {"chat_template": chat_template(processor)}
    if items.pope:
        first = next(iter(items.pope.values()))[0]["text"]
        prompts["pope"] = {
            "suffix": suffix,
            "example": pope_prompt(first, suffix),
            "rendered": render_prompt(processor, family, pope_prompt(first, suffix)),
        }
    if items.chair:
        prompts["chair"] = {"prompt": cfg.chair_prompt, "rendered": render_prompt(processor, family, cfg.chair_prompt)}
    if cfg.pope_scoring == "logits":
        from seedcli.evals.pope_logits import answer_tokens

        prompts["pope_logits_tokens"] = answer_tokens(processor.tokenizer).to_dict()
    return models, prompts


def _decoding_record(cfg: EvaluateConfig) -> dict[str, Any]:
    return {
        "pope": [dataclasses.asdict(d) for d in decodings(cfg, cfg.max_new_tokens)]
        if cfg.pope and cfg.pope_scoring == "generate"
        else None,
        "chair": [dataclasses.asdict(d) for d in decodings(cfg, cfg.max_new_tokens_chair)] if cfg.chair else None,
    }


def _envelope(cfg: EvaluateConfig, out: Path, mode: str) -> dict[str, Any]:
    from seedcli.environment import environment

    return {
        "schema_version": SCHEMA_VERSION,
        "seedcli_version": __version__,
        "created": _now(),
        "mode": mode,
        "ok": True,
        "errors": [],
        "out": str(out),
        "samples": str(out / SAMPLES),
        "config": to_dict(cfg),
        "environment": environment(check_hub=False),
    }


# ----------------------------------------------------------------------------- entry points


def evaluate(cfg: EvaluateConfig, reporter: Reporter) -> dict[str, Any]:
    """Run `seed evaluate`: generate (or resume) and score; returns the results written to results.json."""
    with contextlib.ExitStack() as held:  # the lock on --out, taken once it is known to be ours
        return _evaluate(cfg, reporter, held)


def _evaluate(cfg: EvaluateConfig, reporter: Reporter, held: contextlib.ExitStack) -> dict[str, Any]:
    out = Path(cfg.out) if cfg.out is not None else default_out()
    if cfg.score_only:
        return score_only(cfg, out, reporter)
    specs = resolve_models(cfg, reporter)
    check_adapters(specs, cfg)
    from seedcli.evals.detector import open_for

    detector = open_for(cfg)  # checked before anything is written; loaded after generation
    data, items = load_items(cfg, reporter)
    models, prompts = _identities(cfg, specs, items)
    settings = _settings(cfg, specs)
    from seedcli import distributed

    collective = distributed.join(
        device=cfg.device, processes=cfg.processes, timeout_s=cfg.timeout_s, master_port=cfg.master_port
    )
    rank, world = (collective.rank, collective.world) if collective is not None else (0, 1)
    barrier = (lambda: collective.any_flag(False)) if collective is not None else None
    if rank == 0:
        _open_out(out, settings)
        held.enter_context(rundir.Lock(out))  # a second process on the same --out is refused, naming this one
        reporter.log(
            {
                "protocol": protocol_label(cfg),
                "models": ",".join(s.label for s in specs),
                "pope": ",".join(items.pope) or "-",
                "chair_images": len(items.chair),
                "out": str(out),
                "processes": world,
            }
        )
    else:
        reporter = distributed.RankReporter(reporter, rank)
    samples = out / SAMPLES
    errors = _generate_all(cfg, specs, data, items, samples, reporter, rank=rank, world=world, barrier=barrier)
    if collective is not None:
        errors = distributed.gather_records(errors, collective)
        barrier()  # every shard file is complete
        if rank == 0:
            _merge_shards(out, specs, _parts(cfg, items))
        barrier()
        distributed.shutdown()
        if rank != 0:
            return {"worker": True, "rank": rank}
    else:
        _merge_shards(out, specs, _parts(cfg, items))  # POPE batches append image by image: restore the order
    scores = _score_all(cfg, specs, items, _read_samples(samples, reporter), errors, reporter)
    scores["detector"] = None
    if detector is not None:
        from seedcli.evals.detector import add_comparisons, screen_captions

        labels = [s.label for s in specs]
        _release()  # the captioning model is gone by now; hand its memory back before the detector loads
        scores["detector"] = screen_captions(detector, cfg, labels, items.chair, data, samples, reporter)
        add_comparisons(scores["comparisons"], scores["detector"], BASE_LABEL)
    results = _envelope(cfg, out, "generate")
    results.update(
        {
            "ok": not errors,
            "errors": errors,
            "protocol": {
                "label": protocol_label(cfg),
                "name": cfg.protocol,
                "decode": cfg.decode,
                "pope_scoring": cfg.pope_scoring,
                "decoding": _decoding_record(cfg),
            },
            "settings": settings,
            "prompts": prompts,
            "models": models,
            "data": {
                "path": str(Path(cfg.data).resolve()),
                "pope": {s: len(q) for s, q in items.pope.items()},
                "chair_images": len(items.chair),
            },
            **scores,
        }
    )
    atomic.write_json(out / RESULTS, results)
    return results


def _read_captions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"--captions {path}: no such file.")
    rows = atomic.read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if "image_id" not in row or not isinstance(row.get("caption"), str):
            raise DataError(f'--captions {path}: caption {number} needs "image_id" and a string "caption".')
    if not rows:
        raise DataError(f"--captions {path}: contains no captions.")
    return rows


def _chair_ground_truth(cfg: EvaluateConfig) -> dict[str, list[str]]:
    """image_id -> ground-truth categories, from --coco-annotations or the data directory."""
    if cfg.coco_annotations is not None:
        from seedcli.data import coco
        from seedcli.data.chair_gt import ground_truth_objects

        instances = coco.load_instances(Path(cfg.coco_annotations) / "instances_val2014.json")
        captions = coco.load_captions(Path(cfg.coco_annotations) / "captions_val2014.json")
        return {
            str(i): ground_truth_objects(instances.objects.get(i, ()), captions.get(i, ())) for i in instances.images
        }
    from seedcli.data.datadir import open_data_dir

    return {str(r["image_id"]): list(r["objects"]) for r in open_data_dir(cfg.data).chair_images()}


def score_only(cfg: EvaluateConfig, out: Path, reporter: Reporter) -> dict[str, Any]:
    """Score answers or captions produced elsewhere; ids are matched, mismatches refused (DataError)."""
    from seedcli.evals.lmms_eval_logs import load_any_answers
    from seedcli.evals.pope_scoring import load_questions, score_pope

    pope: dict[str, Any] = {}
    chair: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if cfg.pope_file is not None and cfg.answers is not None:
        questions = load_questions(cfg.pope_file, reporter=reporter)
        answers = load_any_answers(cfg.answers, cfg.pope_file)  # also lmms-eval sample logs
        label, split = Path(cfg.answers).name, Path(cfg.pope_file).name
        scored = score_pope(questions, answers, reporter=reporter)
        records = scored["records"]
        per_seed = {
            "seed": None,
            "official": scored["official"],
            "robust": scored["robust"],
            "n_unreadable": scored["n_unreadable"],
            "unreadable_ids": scored["unreadable_ids"],
        }
        pope[label] = {split: _pope_block([per_seed], len(questions))}
        rows += [
            {
                "model": label,
                "benchmark": "pope",
                "split": split,
                "seed": None,
                "id": r["question_id"],
                "input": None,
                "output": r["answer"],
                "parsed": {"official": r["official"], "robust": r["robust"]},
                "label": r["label"],
                "correct": r["official_correct"],
                "correct_robust": r["robust_correct"],
            }
            for r in records
        ]
    if cfg.captions is not None:
        captions = _read_captions(Path(cfg.captions))
        gt = _chair_ground_truth(cfg)
        unknown = [c["image_id"] for c in captions if str(c["image_id"]) not in gt]
        if unknown:
            source = f"--coco-annotations {cfg.coco_annotations}" if cfg.coco_annotations else f"--data {cfg.data}"
            raise DataError(
                f"--captions {cfg.captions}: {len(unknown)} image_id(s) have no ground truth in {source} "
                f"(e.g. {unknown[0]!r})."
            )
        label = Path(cfg.captions).name
        caption_rows = [{"id": c["image_id"], "output": c["caption"]} for c in captions]
        chair[label] = _chair_block([score_chair_rows(caption_rows, gt, None, cfg.bootstrap, cfg.seed)])
        rows += [
            {
                "model": label,
                "benchmark": "chair",
                "split": None,
                "seed": None,
                "id": c["image_id"],
                "input": None,
                "output": c["caption"],
                "label": gt[str(c["image_id"])],
            }
            for c in captions
        ]
    settings = {
        "mode": "score-only",
        "pope_file": str(cfg.pope_file),
        "answers": str(cfg.answers),
        "captions": str(cfg.captions),
        "coco_annotations": str(cfg.coco_annotations),
        "data": str(cfg.data),
    }
    _open_out(out, settings)
    atomic.write_jsonl(out / SAMPLES, rows)
    results = _envelope(cfg, out, "score-only")
    results.update(
        {
            "protocol": None,
            "settings": settings,
            "prompts": None,
            "models": [],
            "pope": pope,
            "chair": chair,
            "detector": None,
            "comparisons": {},
        }
    )
    atomic.write_json(out / RESULTS, results)
    return results


# ----------------------------------------------------------------------------- summary


def _pct(value: float, spread: float | None = None) -> str:
    text = f"{100 * value:.2f}"
    return text + (f" ±{100 * spread:.2f}" if spread else "")


POPE_ROWS = (
    ("accuracy", "official", "acc"),
    ("precision", "official", "prec"),
    ("recall", "official", "rec"),
    ("f1", "official", "F1"),
    ("yes_ratio", "official", "yes"),
    ("f1", "robust", "F1 robust"),
)
CHAIR_ROWS = (
    ("chair_s_pct", "CHAIR_s"),
    ("chair_i_pct", "CHAIR_i"),
    ("recall_pct", "recall"),
    ("mean_length_words", "words"),
)


def summary_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) tables for the CLI: models side by side, then each adapter's delta (percent)."""
    tables = []
    comparisons = results.get("comparisons") or {}
    protocol = (results.get("protocol") or {}).get("label", "score-only")
    pope = results.get("pope") or {}
    labels = list(pope)
    adapters = [label for label in labels if label in comparisons]
    splits = list(dict.fromkeys(split for label in labels for split in pope[label] if split != "average"))
    rows: list[list[str]] = []
    for split in splits:
        present = [pope[label].get(split) for label in labels]
        for key, parser, name in POPE_ROWS:
            cells = [_pct(b[parser][key], b["spread"][parser][key]) if b else "" for b in present]
            deltas = [comparisons[a]["pope"].get(split, {}).get("delta", {}).get(parser, {}).get(key) for a in adapters]
            rows.append([split, name, *cells, *(f"{100 * d:+.2f}" if d is not None else "" for d in deltas)])
        rows.append(
            [split, "unreadable", *(f"{b['n_unreadable']:g}" if b else "" for b in present), *([""] * len(adapters))]
        )
        tests = [comparisons[a]["pope"].get(split, {}).get("mcnemar", {}).get("official") for a in adapters]
        if adapters:
            rows.append(
                [
                    split,
                    "McNemar p",
                    *([""] * len(labels)),
                    *(", ".join(f"{t['p_value']:.3g}" for t in ts) if ts else "" for ts in tests),
                ]
            )
    if rows:
        tables.append((f"POPE ({protocol}), %", ["split", "metric", *labels, *(f"Δ {a}" for a in adapters)], rows))
    chair = results.get("chair") or {}
    labels = list(chair)
    adapters = [label for label in labels if (comparisons.get(label) or {}).get("chair")]
    rows = []
    for key, name in CHAIR_ROWS:
        cells = [
            f"{chair[label][key]:.2f}" + (f" ±{chair[label]['spread'][key]:.2f}" if chair[label]["spread"][key] else "")
            for label in labels
        ]
        rows.append([name, *cells, *(f"{comparisons[a]['chair']['delta'][key]:+.2f}" for a in adapters)])
    if labels:
        tables.append((f"CHAIR ({protocol})", ["metric", *labels, *(f"Δ {a}" for a in adapters)], rows))
    from seedcli.evals.detector import summary_table

    return tables + summary_table(results)
