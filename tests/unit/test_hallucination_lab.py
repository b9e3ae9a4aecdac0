"""The hallucination lab's bookkeeping: the plan, shards, and the paired aggregation on made-up cells."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

LAB_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "hallucination_lab.py"


@pytest.fixture(scope="module")
def lab():
    spec = importlib.util.spec_from_file_location("hallucination_lab", LAB_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cell(world: str, seed: int, values: dict[str, float]) -> dict:
    return {"world": world, "seed": seed, "overrides": {}, "table": {"pope_adversarial_f1": dict(values)}}


def test_paired_interval_matches_a_hand_computation(lab) -> None:
    seed_f1 = [81.0, 83.0, 82.0, 86.0, 84.0]
    base_f1 = [80.0, 81.0, 80.0, 82.0, 79.0]
    diffs = [1.0, 2.0, 2.0, 4.0, 5.0]  # mean 2.8, sample sd sqrt(2.7)
    out = lab.paired_interval(seed_f1, base_f1)
    half = 2.776 * math.sqrt(2.7) / math.sqrt(5)  # t(0.975, 4 df) = 2.776
    assert out["mean"] == pytest.approx(sum(diffs) / 5)
    assert out["std"] == pytest.approx(math.sqrt(2.7))
    assert (out["low"], out["high"]) == pytest.approx((2.8 - half, 2.8 + half), abs=1e-3)
    assert out["n"] == 5


def test_pairing_removes_the_between_seed_spread(lab) -> None:
    # Seeds differ by 20 points but SEED is always exactly 1 above: the paired interval is [1, 1].
    cells = [_cell("w", s, {"base": 60.0 + 10 * s, "sft": 60.0 + 10 * s, "seed": 61.0 + 10 * s}) for s in (1, 2, 3)]
    entry = lab.aggregate(cells)["w"]["pope_adversarial_f1"]
    assert entry["seed"]["std"] == pytest.approx(10.0)
    assert (entry["seed-base"]["low"], entry["seed-base"]["high"]) == pytest.approx((1.0, 1.0))
    assert "seed-vcd" not in entry and "vcd" not in entry  # no VCD values: no contrast invented


def test_contrasts_use_only_seeds_where_both_methods_exist(lab) -> None:
    cells = [
        _cell("w", 1, {"base": 70.0, "seed": 72.0, "vcd": 71.0}),
        _cell("w", 2, {"base": 60.0, "seed": 64.0}),
        _cell("w", 3, {"base": 80.0, "seed": 80.0, "vcd": 78.0}),
    ]
    entry = lab.aggregate(cells)["w"]["pope_adversarial_f1"]
    assert entry["seed-base"]["n"] == 3 and entry["seed-base"]["mean"] == pytest.approx(2.0)
    assert entry["seed-vcd"]["n"] == 2 and entry["seed-vcd"]["mean"] == pytest.approx(1.5)
    assert entry["vcd"]["mean"] == pytest.approx(74.5)
    one = lab.aggregate([cells[0]])["w"]["pope_adversarial_f1"]["seed-base"]
    assert one["mean"] == 2.0 and math.isnan(one["low"])  # one pair: no interval


def test_markdown_shows_every_world_and_the_intervals(lab) -> None:
    cells = [
        _cell(w, s, {"base": 70.0 + s, "sft": 71.0, "seed": 73.0 + s, "vcd": 72.0}) for w in ("a", "b") for s in (1, 2)
    ]
    text = lab.markdown(lab.aggregate(cells), "cmd")
    assert "## a (seeds 1, 2)" in text and "## b (seeds 1, 2)" in text
    assert "| POPE adversarial F1 | 71.50 ± 0.71 | 71.00 ± 0.00 | 74.50 ± 0.71 | - | 72.00 ± 0.00 |" in text
    assert "| POPE adversarial F1 | +3.00 [+3.00, +3.00] | +3.50 [-2.85, +9.85] | +2.50 [-3.85, +8.85] |" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_plan_and_shards_partition_the_cells(lab) -> None:
    cells = lab.plan(["llava-like", "clean", "label-noise-0.4"], None)
    assert cells[:5] == [("llava-like", s) for s in (1, 2, 3, 4, 5)]
    assert len(cells) == 5 + 5 + 3
    shards = [lab.shard(cells, f"{i}/3") for i in range(3)]
    assert sorted(c for part in shards for c in part) == sorted(cells)
    assert sum(len(part) for part in shards) == len(cells)
    with pytest.raises(ValueError):
        lab.shard(cells, "3/3")


def _t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """Student t CDF by Simpson's rule on the density (independent of the lab's table)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / steps
    total = pdf(0.0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def test_t_quantiles(lab) -> None:
    for df in range(1, 31):
        assert _t_cdf(lab.t_quantile(df), df) == pytest.approx(0.975, abs=2e-4), df
    assert lab.t_quantile(200) == 1.96


def test_finished_cells_are_skipped_and_foreign_flags_refused(lab, tmp_path: Path) -> None:
    import json

    path = lab.cell_path(tmp_path, "clean", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_cell("clean", 1, {"base": 1.0}) | {"overrides": {"steps": 7}}))
    with pytest.raises(SystemExit, match="other quickstart flags"):
        lab.load_cells(tmp_path, {})
    assert lab.load_cells(tmp_path, {"steps": 7})[0]["seed"] == 1
    # A finished cell is not run again (run_cell would need a model; it must not be reached).
    lab.run_cell = lambda *a, **k: pytest.fail("a finished cell was run again")
    assert lab.main(["--out", str(tmp_path), "--worlds", "clean", "--seeds", "1", "--steps", "7"]) == 0
    assert (tmp_path / "lab.md").is_file() and json.loads((tmp_path / "lab.json").read_text())["cells"]


def test_targets_are_judged_on_means_and_the_paired_interval(lab) -> None:
    def cells(seed_adv: list[float], seed_chair: list[float]) -> list[dict]:
        out = []
        for i, (adv, chair) in enumerate(zip(seed_adv, seed_chair), start=1):
            table = {f"pope_{s}_f1": {"base": 70.0, "sft": 71.0, "seed": adv, "vcd": adv + 0.5} for s in
                     ("random", "popular", "adversarial")}  # fmt: skip
            table["chair_chair_i_pct"] = {"base": 12.0, "sft": 11.0, "seed": chair}
            out.append({"world": "w", "seed": i, "overrides": {}, "table": table})
        return out

    good = lab.targets(lab.aggregate(cells([74.0, 73.5, 74.5], [9.0, 9.5, 8.5]))["w"])
    assert all(good.values()), good
    # SEED - SFT = +1 on the mean but noisy: the interval reaches below 0, so that target fails alone.
    noisy = lab.targets(lab.aggregate(cells([77.0, 68.0, 71.0], [9.0, 9.5, 8.5]))["w"])
    assert noisy["POPE-adversarial F1 SEED - SFT >= +1"]
    assert not noisy["POPE-adversarial F1 SEED - SFT paired 95% interval above 0"]
    worse = lab.targets(lab.aggregate(cells([70.0, 70.5, 69.5], [11.5, 11.0, 12.0]))["w"])
    assert not worse["POPE-adversarial F1 SEED - base >= +3"] and not worse["CHAIR_i SEED below SFT"]
    assert worse["POPE adversarial F1 SEED >= VCD - 1"]  # VCD is 0.5 above SEED
