"""HTML reports: inline SVG charts, the run page, the evaluation page with disagreements."""

from __future__ import annotations

import json
import re

from seedcli import html_report
from tests.unit.test_cards import make_run, pope_block


def test_ticks_cover_the_data():
    for low, high in [(0.0, 0.745), (0.11, 0.155), (-0.00415, -0.00395), (3.0, 3.0), (0.0, 125.0)]:
        ticks = html_report._nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2


def test_line_chart_draws_every_point_inside_the_plot():
    svg = html_report.line_chart("loss", [(1, 0.5), (2, 0.25), (3, float("nan")), (4, 0.125)])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    circles = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)
    assert len(circles) == 3  # the NaN is left out
    assert all(0 <= float(y) <= 230 for _, y in circles)
    assert "no values logged" in html_report.line_chart("kl", [])


def test_bar_chart_has_one_bar_per_model_and_group():
    svg = html_report.bar_chart("F1", ["random", "popular"], {"base": [0.8, 0.7], "seed": [0.85, None]})
    assert svg.count("<rect") == 3 + 2  # three bars, two legend swatches
    assert "seed random: 85.0" in svg


def test_run_report_has_the_curves_and_the_summary(tmp_path):
    run = make_run(tmp_path, "tiny-llava")
    rows = [
        {"round": 1, "step": s, "loss": 1 / s, "kl": 0.5 / s, "ce": 0.1, "beta": 0.7, "lr": 1e-3} for s in (1, 2, 3, 4)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = html_report.write_run_report(run).read_text(encoding="utf-8")
    for title in (
        "loss (total)",
        "KL (distillation term)",
        "cross-entropy",
        "beta (mean purge strength)",
        "learning rate",
    ):
        assert f'aria-label="{title}"' in page
    assert "final loss" in page and "finished" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_evaluation_report_shows_tables_charts_tests_and_disagreements(tmp_path):
    from PIL import Image

    from seedcli.data.datadir import write_manifest

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(data / "img" / "a.png")
    write_manifest(data, source={"kind": "test"}, seed=0, counts={}, dropped={}, image_roots={"pope": "img"})
    samples = []
    for model, outputs in (("base", ["yes", "no"]), ("seed", ["no", "no"])):
        for qid, (output, label) in enumerate(zip(outputs, ["no", "no"], strict=True), start=1):
            samples.append(
                {
                    "model": model,
                    "benchmark": "pope",
                    "split": "random",
                    "seed": 0,
                    "id": qid,
                    "image": "a.png",
                    "input": f"Is there a cat {qid}?\nAnswer.",
                    "output": output,
                    "parsed": {"official": output},
                    "label": label,
                    "correct": output == label,
                }
            )
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    mcnemar = {"official": [{"seed": 0, "b": 0, "c": 1, "n": 2, "p_value": 1.0}]}
    block = {**pope_block(0.5), "spread": {"official": pope_block(0)["official"], "robust": pope_block(0)["robust"]}}
    block["n_unreadable"] = 0
    results = {
        "out": str(tmp_path),
        "samples": str(tmp_path / "samples.jsonl"),
        "protocol": {"label": "greedy"},
        "data": {"path": str(data)},
        "pope": {"base": {"random": block}, "seed": {"random": block}},
        "chair": {},
        "comparisons": {
            "seed": {"baseline": "base", "pope": {"random": {"delta": {}, "mcnemar": mcnemar}}, "chair": None}
        },
    }
    page = html_report.write_evaluation_report(results, tmp_path / "page.html").read_text(encoding="utf-8")
    assert "POPE (greedy), %" in page and 'aria-label="POPE F1 (%)"' in page
    assert "<h2>McNemar tests</h2>" in page
    assert "Questions where the models disagree (1 of 1)" in page
    assert "Is there a cat 1?" in page and "Is there a cat 2?" not in page
    assert 'src="data:image/png;base64,' in page
