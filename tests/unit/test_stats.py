"""Paired statistics: exact McNemar on hand-computed cases, paired counts, a seeded percentile bootstrap."""

from __future__ import annotations

import math

import pytest

from seedcli.errors import DataError
from seedcli.evals.stats import bootstrap_ci, mcnemar_exact, paired_mcnemar


def test_mcnemar_known_cases() -> None:
    # 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == 0.021484375
    assert mcnemar_exact(9, 1) == 0.021484375
    # 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    # 2 * C(5,0) / 2^5
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)


@pytest.mark.parametrize("b", [0, 1, 3, 50])
def test_mcnemar_equal_discordance_is_one(b: int) -> None:
    assert mcnemar_exact(b, b) == 1.0


def test_mcnemar_large_counts_near_normal_approximation() -> None:
    b, c = 400, 480
    z = (abs(b - c) - 1) / math.sqrt(b + c)  # continuity-corrected normal approximation
    approx = math.erfc(z / math.sqrt(2))
    assert mcnemar_exact(b, c) == pytest.approx(approx, rel=0.05)


@pytest.mark.parametrize(("b", "c"), [(-1, 2), (1.5, 2), (True, 2)])
def test_mcnemar_refuses_bad_counts(b: object, c: int) -> None:
    with pytest.raises(DataError):
        mcnemar_exact(b, c)  # type: ignore[arg-type]


def test_paired_mcnemar_counts() -> None:
    a = [True, True, True, False, False, True]
    b = [True, False, False, True, False, False]
    result = paired_mcnemar(a, b)
    assert (result["b"], result["c"], result["both_correct"], result["both_wrong"], result["n"]) == (3, 1, 1, 1, 6)
    assert result["p_value"] == pytest.approx(2 * (1 + 4) / 16)
    with pytest.raises(DataError):
        paired_mcnemar([True], [True, False])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_bootstrap_is_deterministic_and_contains_estimate() -> None:
    # square roots: resampled means do not fall on a lattice, so two seeds give different intervals
    values = [math.sqrt(v) for v in range(1, 11)]
    first = bootstrap_ci(values, _mean, n_resamples=500, seed=7)
    assert first == bootstrap_ci(values, _mean, n_resamples=500, seed=7)
    assert first != bootstrap_ci(values, _mean, n_resamples=500, seed=8)
    low, high = first
    assert low < _mean(values) < high
    assert 1.0 <= low and high <= math.sqrt(10)


def test_bootstrap_constant_values_give_a_point() -> None:
    assert bootstrap_ci([2.0] * 5, _mean, n_resamples=50) == (2.0, 2.0)


def test_bootstrap_width_for_a_proportion() -> None:
    # 400 coin flips at p = 0.5: standard error 0.025, 95% interval about +-0.049.
    values = [1.0, 0.0] * 200
    low, high = bootstrap_ci(values, _mean, n_resamples=1000, seed=0)
    assert 0.07 < high - low < 0.13
    assert low < 0.5 < high


def test_bootstrap_over_records_with_a_ratio_statistic() -> None:
    records = [{"hit": 1, "total": 2}, {"hit": 0, "total": 3}, {"hit": 2, "total": 2}, {"hit": 1, "total": 3}]

    def ratio(rs: list[dict]) -> float:
        return sum(r["hit"] for r in rs) / sum(r["total"] for r in rs)

    low, high = bootstrap_ci(records, ratio, n_resamples=300, seed=1)
    assert 0.0 <= low <= 4 / 10 <= high <= 1.0


@pytest.mark.parametrize("kwargs", [{"n_resamples": 0}, {"confidence": 1.0}, {"confidence": 0.0}])
def test_bootstrap_refuses_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError):
        bootstrap_ci([1.0, 2.0], _mean, **kwargs)
    with pytest.raises(DataError):
        bootstrap_ci([], _mean)
