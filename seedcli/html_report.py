"""Self-contained HTML reports: a run's training curves (RUN/report.html) and an evaluation page.

Charts are inline SVG drawn here: no plotting library, no script, no external resource, so a page
is one file that opens anywhere (and renders the same in a headless browser). Images are embedded
as data URIs. The numbers come from metrics.jsonl / summary.json and results.json / samples.jsonl.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seedcli import atomic, rundir

REPORT = "report.html"
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
RUN_CURVES = (
    ("loss", "loss (total)"),
    ("kl", "KL (distillation term)"),
    ("ce", "cross-entropy"),
    ("beta", "beta (mean purge strength)"),
    ("lr", "learning rate"),
    ("confidence", "confidence (mean log max-prob)"),
    ("grad_norm", "gradient norm"),
    ("samples_per_s", "throughput (samples/s)"),
)
MAX_DISAGREEMENTS = 40
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 10px} p.sub{color:#666;margin:0 0 14px}
.charts{display:flex;flex-wrap:wrap;gap:14px}
.chart{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f0f0f0}
td:first-child,th:first-child,td.l{text-align:left}
.q{display:grid;grid-template-columns:140px 1fr;gap:12px;background:#fff;border:1px solid #ddd;
border-radius:8px;padding:10px;margin:10px 0}
.q img{width:140px;image-rendering:pixelated;border-radius:4px;border:1px solid #ccc}
.ok{color:#0b5d1e} .bad{color:#a3140a;font-weight:600} .muted{color:#777;font-size:12px}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}
"""


# ----------------------------------------------------------------------------- SVG charts


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high == low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, max(last, first + 1) + 1)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def line_chart(
    title: str,
    points: Sequence[tuple[float, float]],
    *,
    width: int = 440,
    height: int = 230,
    color: str = PALETTE[0],
    marks: Sequence[float] = (),
) -> str:
    """An SVG line chart of (x, y) points; `marks` draw dashed vertical lines (round boundaries)."""
    left, right, top, bottom = 58, 12, 26, 34
    inner_w, inner_h = width - left - right, height - top - bottom
    head = _svg_open(width, height, title)
    parts = [head, f'<text x="{left}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>']
    points = [(x, y) for x, y in points if math.isfinite(y)]
    if not points:
        parts.append(
            f'<text x="{left}" y="{top + inner_h / 2}" font-size="12" fill="#777">no values logged</text></svg>'
        )
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks, y_ticks = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    # The x axis ends at the last step (a round tick past it would leave an empty band); y ends on ticks.
    x0, x1, y0, y1 = min(x_ticks[0], min(xs)), max(xs), y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * inner_w

    def sy(y: float) -> float:
        return top + inner_h - (y - y0) / ((y1 - y0) or 1) * inner_h

    for tick in y_ticks:
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" stroke="#eee"/>')
        parts.append(_text(left - 6, sy(tick) + 4, _fmt(tick), anchor="end"))
    for tick in x_ticks:
        if x0 <= tick <= x1:
            label = _fmt(tick)
            parts.append(_text(sx(tick), top + inner_h + 16, label, anchor="middle"))
    for mark in marks:
        parts.append(
            f'<line x1="{sx(mark):.1f}" x2="{sx(mark):.1f}" y1="{top}" y2="{top + inner_h}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    axes = f"M{left},{top} V{top + inner_h} H{left + inner_w}"
    parts.append(f'<path d="{axes}" fill="none" stroke="#888"/>')
    parts.append(
        f'<text x="{left + inner_w / 2}" y="{height - 4}" font-size="11" text-anchor="middle" fill="#555">step</text>'
    )
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
    if len(points) <= 60:
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in points]
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    width: int = 440,
    height: int = 240,
    percent: bool = True,
) -> str:
    """Grouped SVG bars: one group per entry of `groups`, one bar per series (model), same colour per series."""
    left, right, top, bottom = 48, 12, 26, 52
    inner_w, inner_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None]
    high = max(values, default=1.0)
    ticks = _nice_ticks(0.0, high if high > 0 else 1.0)
    y1 = ticks[-1] or 1.0
    head = _svg_open(width, height, title)
    parts = [head, f'<text x="{left}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>']

    def sy(y: float) -> float:
        return top + inner_h - y / y1 * inner_h

    for tick in ticks:
        label = _fmt(100 * tick) if percent else _fmt(tick)
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" font-size="11" text-anchor="end" fill="#555">{label}</text>'
        )
    names = list(series)
    slot = inner_w / max(len(groups), 1)
    bar = slot * 0.8 / max(len(names), 1)
    for g, group in enumerate(groups):
        start = left + g * slot + slot * 0.1
        for s, name in enumerate(names):
            value = series[name][g]
            if value is None:
                continue
            x, y = start + s * bar, sy(value)
            shown = f"{100 * value:.1f}" if percent else _fmt(value)
            color = PALETTE[s % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" height="{top + inner_h - y:.1f}" '
                f'fill="{color}">'
                f"<title>{html.escape(name)} {html.escape(group)}: {shown}</title></rect>"
            )
        parts.append(_text(start + slot * 0.4, top + inner_h + 15, html.escape(group), anchor="middle", fill="#222"))
    legend_y = height - 12
    x = left
    for s, name in enumerate(names):
        parts.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{legend_y}" font-size="11">{html.escape(name)}</text>')
        x += 24 + 7 * len(name)
    parts.append(f'<path d="M{left},{top} V{top + inner_h} H{left + inner_w}" fill="none" stroke="#888"/></svg>')
    return "".join(parts)


def _svg_open(width: int, height: int, title: str) -> str:
    label = html.escape(title)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{label}">'


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = "#555") -> str:
    """An 11px SVG label; `text` must already be escaped."""
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="11" text-anchor="{anchor}" fill="{fill}">{text}</text>'


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------- the run report


def run_report(run_dir: Path) -> str:
    """The training page of a run: curves from metrics.jsonl (x = global step) and the summary."""
    run = rundir.open_run(run_dir, flag="RUN", require_complete=False)
    rows = atomic.read_jsonl(Path(run_dir) / rundir.METRICS) if (Path(run_dir) / rundir.METRICS).is_file() else []
    per_round = int(run.config.get("resolved", {}).get("total_steps_per_round") or 0)

    def step(row: Mapping[str, Any]) -> float:
        return (int(row.get("round", 1)) - 1) * per_round + int(row.get("step", 0))

    rounds = sorted({int(r.get("round", 1)) for r in rows})
    marks = [(r - 1) * per_round for r in rounds[1:]]
    charts = []
    for index, (key, title) in enumerate(RUN_CURVES):
        points = [(step(r), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        if points or key in ("loss", "lr"):
            charts.append(
                '<div class="chart">'
                + line_chart(title, points, color=PALETTE[index % len(PALETTE)], marks=marks)
                + "</div>"
            )
    settings = run.settings
    summary = run.summary
    facts = [
        ("model", settings.get("model")),
        ("method", settings.get("method")),
        ("data", settings.get("data")),
        ("rounds", settings.get("rounds")),
        ("steps per round", per_round or "?"),
        ("global batch", run.config.get("resolved", {}).get("global_batch")),
        ("learning rate (peak)", settings.get("lr")),
        ("metrics lines", len(rows)),
    ]
    if summary is not None:
        final = (summary.get("final") or {}).get("last") or {}
        facts += [
            (f"final {k}", _fmt(float(final[k])))
            for k in ("loss", "kl", "ce", "beta")
            if isinstance(final.get(k), (int, float))
        ]
        mean_kl = (summary.get("final") or {}).get("mean_kl")
        if isinstance(mean_kl, (int, float)):
            facts.append(("mean KL over the last round", _fmt(float(mean_kl))))
        facts.append(("skipped steps", (summary.get("final") or {}).get("skipped_steps", 0)))
        status = "finished"
    else:
        status = "not finished (no summary.json yet)"
    sections = [
        '<h2>Training curves</h2><div class="charts">' + "".join(charts) + "</div>",
        "<h2>Summary</h2>" + _table(("", "value"), [(k, "" if v is None else v) for k, v in facts]),
        "<h2>Config</h2><pre>" + html.escape(json.dumps(settings, indent=1)) + "</pre>",
    ]
    subtitle = f"{Path(run_dir).resolve()}: {status}; values from metrics.jsonl (one point per logged step)."
    return _page(f"seed distill: {Path(run_dir).name}", subtitle, sections)


def write_run_report(run_dir: Path) -> Path:
    """Write RUN/report.html atomically and return its path."""
    path = Path(run_dir) / REPORT
    atomic.write_text(path, run_report(run_dir))
    return path


# ----------------------------------------------------------------------------- the evaluation report


def _open_data(path: Path | None) -> Any:
    """The data directory whose POPE images the page shows, or None when it cannot be opened."""
    if path is None:
        return None
    from seedcli.data.datadir import open_data_dir
    from seedcli.errors import SeedError

    try:
        return open_data_dir(path)
    except SeedError:
        return None


def _image_uri(data: Any, name: str, cache: dict[str, str]) -> str | None:
    """A POPE image as a data URI (cached per name), None when it is not found."""
    if data is None or name in cache:
        return cache.get(name) or None
    from seedcli.demo import image_data_uri
    from seedcli.errors import SeedError

    try:
        path = data.resolve_image("pope", name)
        cache[name] = image_data_uri(path) if path.is_file() else ""
    except (SeedError, OSError):
        cache[name] = ""
    return cache[name] or None


def disagreements(samples: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """POPE questions (per split and seed) on which the models' parsed answers differ, in sample order."""
    grouped: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = {}
    for row in samples:
        if row.get("benchmark") == "pope" and row.get("model") in labels:
            grouped.setdefault((str(row["split"]), str(row["seed"]), str(row["id"])), {})[row["model"]] = row
    found = []
    for (split, seed, qid), rows in grouped.items():
        answers = {label: (rows[label].get("parsed") or {}).get("official") for label in labels if label in rows}
        if len(answers) > 1 and len(set(answers.values())) > 1:
            first = next(iter(rows.values()))
            found.append(
                {
                    "split": split,
                    "seed": seed,
                    "id": qid,
                    "image": first.get("image"),
                    "question": first.get("input"),
                    "label": first.get("label"),
                    "rows": {label: rows[label] for label in labels if label in rows},
                }
            )
    return found


def evaluation_report(results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str:
    """The evaluation page: summary tables, bar charts per split, McNemar tests, disagreeing questions."""
    from seedcli.evals.runner import summary_tables

    sections = []
    for title, columns, rows in summary_tables(dict(results)):
        sections.append(f"<h2>{html.escape(title)}</h2>" + _table(columns, rows))
    pope = results.get("pope") or {}
    labels = list(pope)
    if pope:
        splits = list(dict.fromkeys(s for label in labels for s in pope[label]))
        charts = []
        for key, name in (("f1", "F1"), ("accuracy", "accuracy"), ("yes_ratio", "yes ratio")):
            series = {label: [pope[label].get(s, {}).get("official", {}).get(key) for s in splits] for label in labels}
            charts.append(f'<div class="chart">{bar_chart(f"POPE {name} (%)", splits, series)}</div>')
        sections.append('<h2>POPE by split</h2><div class="charts">' + "".join(charts) + "</div>")
    chair = results.get("chair") or {}
    if chair:
        keys = (("chair_s_pct", "CHAIR_s"), ("chair_i_pct", "CHAIR_i"), ("recall_pct", "recall"))
        series = {label: [chair[label].get(k) for k, _ in keys] for label in chair}
        chart = bar_chart(
            "CHAIR (%; CHAIR_s and CHAIR_i: lower is better)", [n for _, n in keys], series, percent=False
        )
        sections.append(f'<h2>CHAIR</h2><div class="charts"><div class="chart">{chart}</div></div>')
    flagged = (results.get("detector") or {}).get("models") or {}
    if flagged:
        from seedcli.evals.detector import TABLE_ROWS

        series = {label: [flagged[label].get(k) for k, _ in TABLE_ROWS] for label in flagged}
        chart = bar_chart(
            f"Detector {results['detector']['label']} (lower is better)",
            [n for _, n in TABLE_ROWS],
            series,
            percent=False,
        )
        sections.append(f'<h2>Detector</h2><div class="charts"><div class="chart">{chart}</div></div>')
    tests = []
    for label, comparison in (results.get("comparisons") or {}).items():
        for split, entry in (comparison.get("pope") or {}).items():
            for test in (entry.get("mcnemar") or {}).get("official", []):
                tests.append(
                    (
                        label,
                        comparison.get("baseline", "base"),
                        split,
                        test["seed"],
                        test["b"],
                        test["c"],
                        test["n"],
                        f"{test['p_value']:.3g}",
                    )
                )
    if tests:
        note = (
            '<p class="muted">Exact McNemar test on the questions: b = right only for the baseline, c = right only for '
            "the adapter; p is two-sided (official parser).</p>"
        )
        sections.append(
            "<h2>McNemar tests</h2>" + note + _table(("model", "against", "split", "seed", "b", "c", "n", "p"), tests)
        )
    data_path = (results.get("data") or {}).get("path")
    data_dir = _open_data(Path(data_path) if data_path else None)
    found = disagreements(samples, labels)
    if labels and len(labels) > 1:
        items, cache = [], {}
        for item in found[:MAX_DISAGREEMENTS]:
            uri = _image_uri(data_dir, str(item["image"]), cache)
            image = (
                f'<img src="{uri}" alt="{html.escape(str(item["image"]))}">'
                if uri
                else '<span class="muted">(image not found)</span>'
            )
            answers = []
            for label, row in item["rows"].items():
                ok = row.get("correct")
                mark = '<span class="ok">right</span>' if ok else '<span class="bad">wrong</span>'
                answers.append(
                    f"<div><b>{html.escape(label)}</b>: {html.escape(str(row.get('output', '')))} {mark}</div>"
                )
            question = str(item["question"] or "").split("\n")[0]
            items.append(
                f'<section class="q"><div>{image}<div class="muted">{html.escape(str(item["image"]))}</div></div><div>'
                f'<div class="muted">{html.escape(item["split"])} · seed {html.escape(item["seed"])} · '
                f"question {html.escape(item['id'])}</div>"
                f"<div><b>Q:</b> {html.escape(question)} "
                f'<span class="muted">(truth: {html.escape(str(item["label"]))})</span></div>'
                + "".join(answers)
                + "</div></section>"
            )
        shown = f"{min(len(found), MAX_DISAGREEMENTS)} of {len(found)}"
        sections.append(f"<h2>Questions where the models disagree ({shown})</h2>" + ("".join(items) or "<p>None.</p>"))
    protocol = (results.get("protocol") or {}).get("label", "score-only")
    created, version = results.get("created", ""), results.get("seedcli_version", "")
    subtitle = f"{results.get('out', '')}: {protocol}, {created}, seedcli {version}."
    return _page("seed evaluate", subtitle, sections)


def write_evaluation_report(results: Mapping[str, Any], path: Path) -> Path:
    """Write the evaluation page for `results` (samples read from its samples.jsonl) to `path`."""
    samples_path = Path(results.get("samples") or Path(results["out"]) / "samples.jsonl")
    samples = atomic.read_jsonl(samples_path) if samples_path.is_file() else []
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(path), evaluation_report(results, samples))
    return Path(path)
