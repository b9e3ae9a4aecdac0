"""`seed demo`: the base model and the SEED model answer the same question about the same images.

Each answer's COCO object mentions are found with the CHAIR extractor (seedcli.evals.chair) and
marked against the image's ground truth, looked up by file name in the data directory:

- chair/images.jsonl gives the complete object list of an image: a mention of any other category
  is hallucinated;
- the POPE files give partial truth: "yes" questions name present objects, "no" questions absent
  ones; other mentions stay unknown.

Statuses: "present", "hallucinated", "unknown" (no ground truth says either way).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.config.demo import MAX_NEW_TOKENS, TINY_MAX_NEW_TOKENS, DemoConfig
from seedcli.errors import ConfigError, DataError, StorageError
from seedcli.reporting import Reporter

DEFAULT_RUN_ROOTS = (Path("runs"), Path("seed-quickstart/runs"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
POPE_QUESTION = re.compile(r"^is there an? (.+?) in the image\?", re.IGNORECASE)
HTML_MAX_SIDE = 512  # larger images are downscaled before embedding, to keep the page small


@dataclass(frozen=True)
class Truth:
    """What the data directory knows about one image's objects (COCO categories)."""

    present: frozenset[str]
    absent: frozenset[str]
    complete: bool  # True: every category not in `present` is absent (CHAIR ground truth)
    source: str  # "chair" | "pope" | "chair+pope"

    def status(self, category: str) -> str:
        """present | hallucinated | unknown for a mentioned category."""
        if category in self.present:
            return "present"
        if category in self.absent or self.complete:
            return "hallucinated"
        return "unknown"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "present": sorted(self.present),
            "absent": sorted(self.absent),
            "complete": self.complete,
            "source": self.source,
        }


def ground_truth_index(data: Any) -> dict[str, Truth]:
    """{image file name: Truth} from a data directory's CHAIR list and POPE files (whichever exist)."""
    from seedcli.data.datadir import CHAIR_FILE, POPE_SPLITS, pope_file

    present: dict[str, set[str]] = {}
    absent: dict[str, set[str]] = {}
    sources: dict[str, set[str]] = {}
    complete: set[str] = set()
    if (data.root / CHAIR_FILE).is_file():
        for row in data.chair_images():
            name = Path(row["image"]).name
            present.setdefault(name, set()).update(row["objects"])
            complete.add(name)
            sources.setdefault(name, set()).add("chair")
    for split in POPE_SPLITS:
        path = data.root / pope_file(split)
        if not path.is_file():
            continue
        for row in atomic.read_jsonl(path):
            match = POPE_QUESTION.match(str(row.get("text", "")).strip())
            if not match or row.get("label") not in ("yes", "no"):
                continue
            name = Path(row["image"]).name
            (present if row["label"] == "yes" else absent).setdefault(name, set()).add(match.group(1).lower())
            sources.setdefault(name, set()).add("pope")
    return {
        name: Truth(
            present=frozenset(present.get(name, ())),
            absent=frozenset(absent.get(name, ())),
            complete=name in complete,
            source="+".join(sorted(kinds)),
        )
        for name, kinds in sources.items()
    }


def mention_spans(text: str, mentions: Sequence[tuple[str, str]]) -> list[tuple[int, int] | None]:
    """Character span of each CHAIR mention in `text`, in order (None if it cannot be located)."""
    from seedcli.evals.chair import singularize

    words = [(m.start(), m.end(), singularize(m.group().lower())) for m in re.finditer(r"[A-Za-z]+", text)]
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for surface, _ in mentions:
        target = [singularize(w) for w in surface.split()]
        size = len(target)
        found = next(
            (i for i in range(cursor, len(words) - size + 1) if [w[2] for w in words[i : i + size]] == target), None
        )
        if found is None:
            spans.append(None)
            continue
        spans.append((words[found][0], words[found + size - 1][1]))
        cursor = found + size
    return spans


def mark_answer(text: str, truth: Truth | None) -> list[dict[str, Any]]:
    """The objects an answer names: [{"surface", "category", "status", "span"}] in text order."""
    from seedcli.evals.chair import caption_objects

    mentions = caption_objects(text)
    return [
        {
            "surface": surface,
            "category": category,
            "status": truth.status(category) if truth else "unknown",
            "span": list(span) if span else None,
        }
        for (surface, category), span in zip(mentions, mention_spans(text, mentions))
    ]


def segments(text: str, objects: Sequence[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """`text` cut into (piece, status) runs; status is None between marked objects."""
    out: list[tuple[str, str | None]] = []
    cursor = 0
    for obj in objects:
        if not obj.get("span"):
            continue
        start, end = obj["span"]
        if start < cursor:
            continue
        if start > cursor:
            out.append((text[cursor:start], None))
        out.append((text[start:end], obj["status"]))
        cursor = end
    if cursor < len(text):
        out.append((text[cursor:], None))
    return out


def hallucinated(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct hallucinated categories, in order of first mention."""
    return list(dict.fromkeys(o["category"] for o in objects if o["status"] == "hallucinated"))


# --- resolving what to show -------------------------------------------------------------------


def default_run(roots: Sequence[Path] = DEFAULT_RUN_ROOTS) -> Path:
    """The newest finished run under ./runs, else under ./seed-quickstart/runs."""
    from seedcli.rundir import newest_run

    for root in roots:
        with contextlib.suppress(DataError):
            return newest_run(root)
    where = " or ".join(f"./{root}" for root in roots)
    raise DataError(f"no finished run under {where}; pass --adapter RUN_DIR (or run `seed quickstart` first).")


def list_images(path: Path) -> list[Path]:
    """An image file, or the image files of a directory in name order."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"--image {path}: the directory holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
        return found
    raise DataError(f"--image {path}: no such file or directory.")


def held_out_images(data: Any, count: int) -> list[Path]:
    """The first `count` CHAIR images of a data directory (else POPE images): never trained on."""
    from seedcli.data.datadir import CHAIR_FILE, POPE_SPLITS, pope_file

    if (data.root / CHAIR_FILE).is_file():
        rows = data.chair_images()[:count]
        return [data.resolve_image("chair", row["image"]) for row in rows]
    for split in POPE_SPLITS:
        if (data.root / pope_file(split)).is_file():
            names = list(dict.fromkeys(row["image"] for row in atomic.read_jsonl(data.root / pope_file(split))))[:count]
            return [data.resolve_image("pope", name) for name in names]
    raise DataError(f"--data {data.root} has no CHAIR or POPE images to show; pass --image PATH.")


@dataclass(frozen=True)
class Plan:
    """Resolved inputs: which run, which models, which data directory."""

    run: Any | None  # seedcli.rundir.Run
    seed_model: str | None  # a model to load as the SEED column (None: base + the run's adapters)
    baseline: str
    data_dir: Path | None
    data_flag: str


def _merged_source_run(model: str) -> tuple[Any | None, str | None]:
    """(run, base model) recorded in a `seed merge` output's marker, when there is one."""
    from seedcli.merge import merged_marker
    from seedcli.rundir import open_run

    path = Path(model).expanduser()
    marker = merged_marker(path) if path.is_dir() else None
    if not marker:
        return None, None
    source = marker.get("source")
    run = None
    if source and marker.get("kind") == "run" and Path(source).is_dir():
        with contextlib.suppress(DataError):
            run = open_run(source)
    return run, marker.get("base_model")


def plan(cfg: DemoConfig) -> Plan:
    """Decide the run, the two models and the data directory from the flags and the run's config."""
    from seedcli.rundir import open_run

    run, recorded_base = None, None
    if cfg.adapter is not None:
        run = open_run(cfg.adapter)
    elif cfg.model is not None:
        run, recorded_base = _merged_source_run(cfg.model)
    else:
        run = open_run(default_run())
    baseline = cfg.baseline or recorded_base or (run.base_model if run is not None else None)
    if baseline is None:
        raise ConfigError(f"--baseline is required with --model {cfg.model}: name the base model to compare against.")
    if cfg.data is not None:
        return Plan(run=run, seed_model=cfg.model, baseline=baseline, data_dir=cfg.data, data_flag="--data")
    recorded = run.settings.get("data") if run is not None else None
    where = f"the data directory of run {run.root}" if run is not None else "--data"
    return Plan(
        run=run, seed_model=cfg.model, baseline=baseline, data_dir=Path(recorded) if recorded else None, data_flag=where
    )


def _open_data(plan_: Plan, cfg: DemoConfig, reporter: Reporter) -> Any | None:
    """The data directory, or None when only --image is needed and none is available."""
    from seedcli.data.datadir import open_data_dir

    if plan_.data_dir is None:
        if cfg.image is None:
            raise ConfigError(
                "--image is required: the run records no data directory to take held-out images from (or pass --data)."
            )
        reporter.warn(
            "no data directory known: objects are highlighted but none can be marked as hallucinated (pass --data)."
        )
        return None
    if cfg.data is None and cfg.image is not None and not plan_.data_dir.is_dir():
        reporter.warn(f"{plan_.data_flag}: {plan_.data_dir} not found; no ground truth (pass --data).")
        return None
    return open_data_dir(plan_.data_dir, flag=plan_.data_flag)


# --- models and answering ---------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of answers: a label, the model that answers, how it decodes."""

    label: str
    model_name: str
    loaded: Any  # seedcli.models.loading.Loaded
    decoding: Any  # seedcli.evals.generation.Decoding
    adapter_off: bool = False  # answer with the attached adapter disabled (base shares the SEED model)


def _is_tiny(name: str) -> bool:
    from seedcli.models.families import TINY_MODELS

    return name in TINY_MODELS


def check_adapters(run: Any, chain: list[Path], *, trust: bool) -> None:
    """Before any weights load: the adapters are readable and were trained on the run's base architecture."""
    from seedcli.models.adapters import check_base, check_readable
    from seedcli.models.families import resolve
    from seedcli.models.loading import model_config

    check_readable(chain)
    config = model_config(resolve(run.base_model).source, trust_remote_code=trust)
    check_base(chain, model=run.base_model, config=config, run=run)


def columns(cfg: DemoConfig, plan_: Plan, reporter: Reporter) -> list[Column]:
    """Load the models: base, SEED (base + adapters, or --model) and, with --vcd, base with VCD."""
    from seedcli.evals.generation import Decoding
    from seedcli.models.adapters import check_fits
    from seedcli.models.loading import load
    from seedcli.rundir import apply_adapters

    def load_model(name: str) -> Any:
        trust = cfg.trust_remote_code or bool(
            plan_.run is not None and plan_.run.settings.get("trust_remote_code", False)
        )
        return load(name, dtype=cfg.dtype, device=cfg.device, trust_remote_code=trust)

    names = [plan_.baseline, plan_.seed_model or plan_.run.base_model]
    tokens = cfg.max_new_tokens or (TINY_MAX_NEW_TOKENS if any(_is_tiny(n) for n in names) else MAX_NEW_TOKENS)
    greedy = Decoding(mode="greedy", max_new_tokens=tokens)
    if plan_.seed_model is not None:
        reporter.info(f"loading SEED model {plan_.seed_model} and baseline {plan_.baseline}")
        seed = load_model(plan_.seed_model)
        base = load_model(plan_.baseline)
        seed_column = Column("SEED", plan_.seed_model, seed, greedy)
        base_column = Column("base", plan_.baseline, base, greedy)
    else:
        run = plan_.run
        chain = run.adapter_chain()
        check_adapters(run, chain, trust=cfg.trust_remote_code or bool(run.settings.get("trust_remote_code", False)))
        reporter.info(f"loading {run.base_model} with {len(chain)} adapter(s) from {run.root}")
        loaded = load_model(run.base_model)
        check_fits(loaded.model, chain, base=run.base_model, run=run.root)
        seed = dataclasses.replace(loaded, model=apply_adapters(loaded.model, chain))
        seed_column = Column("SEED", f"{run.base_model} + {run.root.name}", seed, greedy)
        if plan_.baseline == run.base_model and len(chain) == 1:
            base_column = Column("base", plan_.baseline, seed, greedy, adapter_off=True)
        else:
            base_column = Column("base", plan_.baseline, load_model(plan_.baseline), greedy)
    out = [base_column, seed_column]
    if cfg.vcd:
        vcd = Decoding(mode="vcd", max_new_tokens=tokens, seed=cfg.seed)
        out.append(dataclasses.replace(base_column, label="base + VCD", decoding=vcd))
    return out


@contextlib.contextmanager
def _adapter_disabled(column: Column) -> Iterator[None]:
    if column.adapter_off:
        with column.loaded.model.disable_adapter():
            yield
    else:
        yield


def answer(column: Column, question: str, images: list[Any], batch_size: int) -> list[str]:
    """One answer per image from `column`'s model."""
    from seedcli.evals import generation

    loaded = column.loaded
    with _adapter_disabled(column):
        return generation.generate(
            loaded.model,
            loaded.processor,
            loaded.family,
            [question] * len(images),
            images,
            column.decoding,
            batch_size=batch_size,
        )


def check_html_target(path: Path) -> None:
    """Fail before any model loads when --html cannot be written: a directory, under a file, read-only."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--html {path} is a directory; give a file name ending in .html.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StorageError(f"--html {path}: {ancestor} is a file, not a directory; choose another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StorageError(f"--html {path}: {ancestor} is not writable (read-only?); choose another path.")


def demo(cfg: DemoConfig, reporter: Reporter) -> list[dict[str, Any]]:
    """Answer the question on every image with each column; mark objects; write --html if asked."""
    from seedcli.evals.generation import as_image

    if cfg.html is not None:
        check_html_target(cfg.html)
    plan_ = plan(cfg)
    given = list_images(cfg.image) if cfg.image is not None else None
    data = _open_data(plan_, cfg, reporter)
    paths = given if given is not None else held_out_images(data, cfg.num_images)
    truth = ground_truth_index(data) if data is not None else {}
    cols = columns(cfg, plan_, reporter)
    results: list[dict[str, Any]] = []
    with reporter.task("demo", total=len(paths), unit="img") as task:
        for start in range(0, len(paths), cfg.batch_size):
            chunk = paths[start : start + cfg.batch_size]
            images = [as_image(p) for p in chunk]
            texts = {col.label: answer(col, cfg.question, images, cfg.batch_size) for col in cols}
            for i, path in enumerate(chunk):
                known = truth.get(path.name)
                answers = []
                for col in cols:
                    objects = mark_answer(texts[col.label][i], known)
                    answers.append(
                        {
                            "label": col.label,
                            "model": col.model_name,
                            "decoding": col.decoding.mode,
                            "text": texts[col.label][i],
                            "objects": objects,
                            "hallucinated": hallucinated(objects),
                        }
                    )
                results.append(
                    {
                        "image": str(path),
                        "name": path.name,
                        "truth": known.to_dict() if known else None,
                        "answers": answers,
                    }
                )
            task.advance(len(chunk))
    if cfg.html is not None:
        atomic.write_text(cfg.html, render_html(results, question=cfg.question))
        reporter.info(f"wrote {cfg.html}")
    return results


# --- HTML ---------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .question{color:#444;margin:0 0 12px}
.legend>span{margin-right:16px}
section.item{display:grid;grid-template-columns:minmax(180px,260px) repeat(var(--cols),1fr);gap:14px;
  background:#fff;border:1px solid #ddd;border-radius:8px;padding:14px;margin:14px 0}
figure{margin:0} figure img{width:100%;image-rendering:pixelated;border-radius:4px;border:1px solid #ccc}
figcaption{font-size:12px;color:#555;margin-top:6px;word-break:break-all}
.answer h2{font-size:15px;margin:0 0 6px} .answer h2 small{font-weight:normal;color:#777}
.answer p.text{line-height:1.5;margin:0 0 8px;white-space:pre-wrap}
mark,.swatch{border-radius:3px;padding:0 2px}
.present{background:#c8f0cf;color:#0b5d1e}
.unknown{background:#dde8fb;color:#173e7a}
.hallucinated{background:#ffd0cc;color:#8a0f05;text-decoration:line-through wavy #c0180c}
.hallucinated::after{content:" \\2717";text-decoration:none;font-weight:bold}
.verdict{font-size:13px} .verdict.bad{color:#a3140a} .verdict.good{color:#0b5d1e}
"""


def image_data_uri(path: Path | str) -> str:
    """The image as a base64 PNG data URI (downscaled to HTML_MAX_SIDE on its longer side)."""
    from seedcli.evals.generation import as_image

    image = as_image(path)
    if max(image.size) > HTML_MAX_SIDE:
        image = image.copy()
        image.thumbnail((HTML_MAX_SIDE, HTML_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _answer_html(answer_: dict[str, Any], truth_known: bool) -> str:
    pieces = []
    for piece, status in segments(answer_["text"], answer_["objects"]):
        if status is None:
            pieces.append(html.escape(piece))
        else:
            tip = {
                "present": "in the ground truth",
                "hallucinated": "hallucinated: not in the image",
                "unknown": "no ground truth for this object",
            }[status]
            pieces.append(f'<mark class="{status}" title="{tip}">{html.escape(piece)}</mark>')
    text = "".join(pieces) or "<em>(empty answer)</em>"
    if not truth_known:
        verdict = '<p class="verdict">no ground truth for this image</p>'
    elif answer_["hallucinated"]:
        verdict = f'<p class="verdict bad">hallucinated: {html.escape(", ".join(answer_["hallucinated"]))}</p>'
    else:
        verdict = '<p class="verdict good">no hallucinated object</p>'
    small = f"{html.escape(answer_['model'])} · {html.escape(answer_['decoding'])}"
    title = f"{html.escape(answer_['label'])} <small>{small}</small>"
    return f'<div class="answer"><h2>{title}</h2><p class="text">{text}</p>{verdict}</div>'


def render_html(results: Sequence[dict[str, Any]], *, question: str, title: str = "seed demo") -> str:
    """One self-contained page: images as data URIs, answers side by side, objects marked; no external resources."""
    items = []
    for result in results:
        truth = result["truth"]
        if truth:
            known = (
                f"ground truth ({html.escape(truth['source'])}): {html.escape(', '.join(truth['present']) or 'none')}"
            )
            if truth["absent"]:
                known += f"; absent: {html.escape(', '.join(truth['absent']))}"
        else:
            known = "no ground truth"
        name = html.escape(result["name"])
        image = (
            f'<figure><img src="{image_data_uri(result["image"])}" alt="{name}">'
            f"<figcaption>{name}<br>{known}</figcaption></figure>"
        )
        answers = "".join(_answer_html(a, truth is not None) for a in result["answers"])
        cols = len(result["answers"])
        items.append(f'<section class="item" style="--cols:{cols}">{image}{answers}</section>')
    legend = (
        '<p class="legend"><span><span class="swatch present">object</span> in the image</span>'
        '<span><span class="swatch hallucinated">object</span> hallucinated</span>'
        '<span><span class="swatch unknown">object</span> no ground truth</span></p>'
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f'<body><h1>{html.escape(title)}</h1><p class="question">Question: {html.escape(question)}</p>{legend}\n'
        + "\n".join(items)
        + "\n</body></html>\n"
    )
