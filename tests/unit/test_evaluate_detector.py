"""The detector rate of `seed evaluate`: seed averaging, deltas, the table, the model card and the web page."""

from __future__ import annotations

import json
from pathlib import Path

from seedcli import cards, html_report
from seedcli.evals.detector import add_comparisons, block, summary_table
from seedcli.evals.runner import summary_tables
from tests.unit.test_cards import make_run, results


def _seed(seed: int, flagged: float | None, relation: float | None) -> dict:
    kinds = {
        "object": {"n": 4, "flagged": 1, "flagged_pct": flagged},
        "attribute": {"n": 0, "flagged": 0, "flagged_pct": None},
        "relation": {"n": 1, "flagged": 0, "flagged_pct": relation},
    }
    return {
        "seed": seed,
        "n_captions": 3,
        "n_no_options": 1,
        "n_truncated_options": 0,
        "n_options": 5,
        "n_flagged": 1,
        "flagged_pct": flagged,
        "kinds": kinds,
        "n_flagged_captions": 1,
        "captions_flagged_pct": 50.0,
    }


def _detector() -> dict:
    models = {"base": block([_seed(0, 20.0, 0.0), _seed(1, 40.0, None)]), "run": block([_seed(0, 10.0, 0.0)])}
    return {"run": "runs/hkd", "label": "hkd", "path": "runs/hkd/stages/refine/rung-2", "shifts": 3, "threshold": 0.4,
            "thresholds": {}, "models": models}  # fmt: skip


def test_seeds_average_the_known_rates_and_adapters_get_deltas() -> None:
    detector = _detector()
    base = detector["models"]["base"]
    assert base["flagged_pct"] == 30.0 and base["seeds"] == [0, 1] and round(base["spread"]["flagged_pct"], 3) == 14.142
    assert base["relation_pct"] == 0.0 and base["attribute_pct"] is None and base["spread"]["attribute_pct"] is None
    comparisons = {"run": {"baseline": "base"}}
    add_comparisons(comparisons, detector, "base")
    delta = comparisons["run"]["detector"]["delta"]
    assert delta["flagged_pct"] == -20.0 and delta["attribute_pct"] is None and delta["captions_flagged_pct"] == 0.0
    ((title, columns, rows),) = summary_table({"detector": detector, "comparisons": comparisons})
    assert title == "Detector hkd (3 shift(s))" and columns == ["metric", "base", "run", "Δ run"]
    assert rows[0] == ["options flagged %", "30.00 ±14.14", "10.00", "-20.00"]
    assert rows[2] == ["attributes flagged %", "-", "-", "-"]
    assert rows[-1] == ["captions without options", "1", "1", ""]
    assert summary_table({"detector": None}) == []
    assert summary_tables({"pope": {}, "chair": {}, "detector": detector})[-1][0] == title


def test_card_and_page_show_the_detector(tmp_path: Path) -> None:
    run = make_run(tmp_path, "qwen2-vl-2b")
    data = results(tmp_path / "eval", run)
    data["detector"] = _detector()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(data), encoding="utf-8")
    (written,) = cards.record_evaluation(data)
    text = written.read_text(encoding="utf-8")
    assert "| detector `hkd` | flagged_pct |" in text and "| this adapter | 10.00 | 10.00 | - | 0.00 | 50.00 |" in text
    (tmp_path / "eval" / "samples.jsonl").write_text("", encoding="utf-8")
    page_data = {**data, "pope": {}, "chair": {}}  # the card's results lack the blocks' spreads
    page = html_report.write_evaluation_report(page_data, tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<h2>Detector</h2>" in page and "Detector hkd (lower is better)" in page
