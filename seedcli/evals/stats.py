"""Paired statistics for comparing two systems on the same items: exact McNemar and a percentile bootstrap.

Everything here is deterministic: the bootstrap takes an explicit seed, McNemar is exact arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from seedcli.errors import DataError

T = TypeVar("T")

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) test on the discordant pairs; 1.0 when b = c = 0.

    p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)). Integer arithmetic up to the final
    division keeps it exact for any n (Python divides big integers with correct rounding).
    """
    if isinstance(b, bool) or isinstance(c, bool) or not isinstance(b, int) or not isinstance(c, int):
        raise DataError(f"mcnemar_exact needs integer counts, got b={b!r}, c={c!r}.")
    if b < 0 or c < 0:
        raise DataError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}.")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar test on two aligned per-item correctness vectors.

    Returns {"b": A right and B wrong, "c": A wrong and B right, "both_correct", "both_wrong",
    "n": items, "p_value"}. The vectors must be aligned by item (join by id first, never by order
    of two unrelated files).
    """
    if len(correct_a) != len(correct_b):
        raise DataError(
            f"paired_mcnemar needs aligned vectors, got {len(correct_a)} and {len(correct_b)} items; join both by "
            "item id first."
        )
    b = c = both_correct = both_wrong = 0
    for a_ok, b_ok in zip(correct_a, correct_b, strict=True):
        if a_ok and b_ok:
            both_correct += 1
        elif a_ok:
            b += 1
        elif b_ok:
            c += 1
        else:
            both_wrong += 1
    return {
        "b": b,
        "c": c,
        "both_correct": both_correct,
        "both_wrong": both_wrong,
        "n": len(correct_a),
        "p_value": mcnemar_exact(b, c),
    }


def bootstrap_ci(
    values_or_records: Sequence[T],
    statistic: Callable[[list[T]], float],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over items resampled with replacement.

    `statistic` receives a list of items (numbers or records) of the original length and returns a
    float; ratio statistics (e.g. hallucinated mentions / mentions) should be computed from the
    resampled records, not averaged per item. The interval is the (1 - confidence) / 2 and
    (1 + confidence) / 2 quantiles (numpy's linear interpolation) of the resampled statistics,
    drawn with numpy's default_rng(seed): the same inputs and seed give the same interval.
    """
    items = list(values_or_records)
    if not items:
        raise DataError("bootstrap_ci needs at least one item.")
    if n_resamples < 1:
        raise DataError(f"bootstrap_ci needs n_resamples >= 1, got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"bootstrap_ci needs 0 < confidence < 1, got {confidence}.")
    rng = np.random.default_rng(seed)
    n = len(items)
    indices = rng.integers(0, n, size=(n_resamples, n))
    estimates = np.array([float(statistic([items[i] for i in row])) for row in indices])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return float(low), float(high)
