"""Detection metrics as pure functions over (gold, predicted) records; the positive class is "hallucinated"."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from seedcli.detect.items import OPTION_KINDS


def prf(pairs: Iterable[tuple[bool, bool]]) -> dict[str, float | int]:
    """Precision, recall, F1 (in %) and counts of (gold, predicted) pairs; 0 where undefined."""
    tp = fp = fn = n = 0
    for gold, pred in pairs:
        n += 1
        tp += gold and pred
        fp += pred and not gold
        fn += gold and not pred
    precision = 100.0 * tp / (tp + fp) if tp + fp else 0.0
    recall = 100.0 * tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "positives": tp + fn, "n": n}


def ranking_auc(scored: Iterable[tuple[float, bool]]) -> float | None:
    """Ranking AUC in % of (score, gold) pairs: P(a positive scores above a negative), ties counting half.

    Threshold-free (the Mann-Whitney statistic from average ranks); None when either class is absent.
    """
    pairs = sorted(scored, key=lambda pair: pair[0])
    positives = sum(1 for _, gold in pairs if gold)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    rank_sum = 0.0  # sum of the positives' ranks (1-based), tied scores sharing their average rank
    start = 0
    while start < len(pairs):
        end = start
        while end < len(pairs) and pairs[end][0] == pairs[start][0]:
            end += 1
        average_rank = (start + 1 + end) / 2
        rank_sum += average_rank * sum(1 for _, gold in pairs[start:end] if gold)
        start = end
    wins = rank_sum - positives * (positives + 1) / 2
    return 100.0 * wins / (positives * negatives)


def track1(records: list[tuple[str, bool, bool]]) -> dict[str, Any]:
    """Option-level metrics from (kind, gold, predicted): per kind, macro F1 over the kinds present, and all options."""
    kinds = {kind: prf((g, p) for k, g, p in records if k == kind) for kind in OPTION_KINDS}
    present = [kind for kind in OPTION_KINDS if kinds[kind]["n"]]
    macro = sum(float(kinds[k]["f1"]) for k in present) / len(present) if present else 0.0
    return {"kinds": kinds, "macro_f1": macro, "options": prf((g, p) for _, g, p in records)}


def track2(records: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Claim-level accuracy (in %) and F1 of "not factual" from (gold not factual, predicted not factual)."""
    scores = prf(records)
    correct = sum(g == p for g, p in records)
    return {"accuracy": 100.0 * correct / len(records) if records else 0.0, "f1": scores["f1"], "n": len(records)}
