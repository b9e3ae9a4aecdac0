"""Mapping-shift inference: P(hallucinated) of every option under K shifted mappings, averaged.

Shift k lists the options rotated by k, names them with identifier set k mod 2 and answers with
label-word pair k mod 3 (`prompts.shifted`); every answer belongs to the option it asked about, so
mapping back is by original option index, and the K probabilities of an option are averaged.
"""

from __future__ import annotations

from typing import Any

from seedcli.detect.items import OPTION_KINDS, Item
from seedcli.detect.questions import shifted_questions
from seedcli.detect.scoring import Images, answer_logits, encode_batch
from seedcli.reporting import NullReporter, Reporter


def predict(
    loaded: Any, model: Any, items: list[Item], *, shifts: int, batch_size: int, reporter: Reporter | None = None
) -> list[list[float]]:
    """Per item, per option (one value for a claim): P(hallucinated / not factual) averaged over `shifts`."""
    import torch

    from seedcli.detect.losses import p_hallucinated

    reporter = reporter or NullReporter()
    images = Images([item.image for item in items])
    sums = [[0.0] * max(1, len(item.options)) for item in items]
    was_training = model.training
    model.eval()
    all_questions = [shifted_questions(items, k) for k in range(shifts)]
    total = sum(len(q) for q in all_questions)
    with torch.no_grad(), reporter.task("detecting", total=total, unit="q") as task:
        for questions in all_questions:
            for start in range(0, len(questions), batch_size):
                batch = questions[start : start + batch_size]
                probs = p_hallucinated(
                    answer_logits(loaded, model, encode_batch(loaded, batch, images), batch)
                ).tolist()
                for question, p in zip(batch, probs):
                    sums[question.item][max(question.option, 0)] += p
                task.advance(len(batch))
    model.train(was_training)
    return [[value / shifts for value in row] for row in sums]


DEFAULT_THRESHOLD = 0.5


def best_threshold(pairs: list[tuple[float, bool]]) -> float:
    """The threshold on P(hallucinated) (grid 0.01..0.99) with the best F1 on (p, gold) pairs; ties: closest to 0.5."""
    from seedcli.detect.metrics import prf

    if not any(gold for _, gold in pairs):
        return DEFAULT_THRESHOLD
    grid = [i / 100 for i in range(1, 100)]
    return max(grid, key=lambda t: (prf((g, p > t) for p, g in pairs)["f1"], -abs(t - DEFAULT_THRESHOLD)))


def calibrate(items: list[Item], probs: list[list[float]]) -> dict[str, float]:
    """Thresholds that maximise F1 on labelled (dev) items: per track, and per option kind within Track 1.

    Option kinds differ in base rate and in how sure a model is of them, so one Track 1 threshold can sit
    above every object option of a model while it suits attributes; each kind gets its own. A kind with no
    hallucinated dev option keeps the Track 1 threshold.
    """
    t1 = [
        (o.kind, p, item.hallucinated()[o.id])
        for item, row in zip(items, probs)
        if item.track == 1
        for o, p in zip(item.options, row)
    ]
    t2 = [(row[0], not item.factual()) for item, row in zip(items, probs) if item.track == 2]
    overall = best_threshold([(p, gold) for _, p, gold in t1]) if t1 else DEFAULT_THRESHOLD
    out = {"track1": overall, "track2": best_threshold(t2) if t2 else DEFAULT_THRESHOLD}
    for kind in OPTION_KINDS:
        pairs = [(p, gold) for k, p, gold in t1 if k == kind]
        if any(gold for _, gold in pairs):
            out[kind] = best_threshold(pairs)
    return out


def threshold_for(thresholds: dict[str, float], track: int, kind: str | None = None) -> float:
    """The threshold of a claim (track 2) or of an option of `kind` (its own, else the Track 1 one)."""
    if track == 2:
        return thresholds["track2"]
    return thresholds.get(kind or "", thresholds["track1"])


def uniform(threshold: float) -> dict[str, float]:
    """The same threshold for both tracks and every option kind."""
    return {"track1": threshold, "track2": threshold}


def flagged(items: list[Item], probs: list[list[float]], thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """Output records for pipelines: options with their probability and flag; claims with theirs."""
    out = []
    for item, row in zip(items, probs):
        if item.track == 1:
            options = [
                {
                    "id": o.id,
                    "text": o.text,
                    "kind": o.kind,
                    "p_hallucinated": round(p, 6),
                    "hallucinated": p > threshold_for(thresholds, 1, o.kind),
                }
                for o, p in zip(item.options, row)
            ]
            hallucinated = [o["id"] for o in options if o["hallucinated"]]
            out.append({"id": item.id, "track": 1, "options": options, "hallucinated": hallucinated})
        else:
            out.append(
                {
                    "id": item.id,
                    "track": 2,
                    "claim": item.text,
                    "p_not_factual": round(row[0], 6),
                    "factual": row[0] <= threshold_for(thresholds, 2),
                }
            )
    return out


def score(
    items: list[Item], probs: list[list[float]], thresholds: dict[str, float]
) -> tuple[dict[str, Any], list[bool]]:
    """Track 1 and Track 2 metrics of labelled items, and the per-question correctness vector (for McNemar).

    Besides the thresholded metrics, every option kind, all options and the claims get the ranking AUC of
    P(hallucinated) (`auc`, in %, None where one class is absent): what the scores rank, whatever the
    thresholds; `macro_auc` is its mean over the option kinds that have one.
    """
    from seedcli.detect import metrics

    t1: list[tuple[str, bool, bool]] = []
    t1_scores: list[tuple[str, float, bool]] = []
    t2: list[tuple[bool, bool]] = []
    t2_scores: list[tuple[float, bool]] = []
    correct: list[bool] = []
    for item, row in zip(items, probs):
        if item.track == 1:
            gold = item.hallucinated()
            for option, p in zip(item.options, row):
                flag = p > threshold_for(thresholds, 1, option.kind)
                t1.append((option.kind, gold[option.id], flag))
                t1_scores.append((option.kind, p, gold[option.id]))
                correct.append(gold[option.id] == flag)
        else:
            t2.append((not item.factual(), row[0] > threshold_for(thresholds, 2)))
            t2_scores.append((row[0], not item.factual()))
            correct.append(t2[-1][0] == t2[-1][1])
    result: dict[str, Any] = {}
    if t1:
        result["track1"] = metrics.track1(t1)
        for kind, entry in result["track1"]["kinds"].items():
            entry["auc"] = metrics.ranking_auc((p, g) for k, p, g in t1_scores if k == kind)
        result["track1"]["options"]["auc"] = metrics.ranking_auc((p, g) for _, p, g in t1_scores)
        kind_aucs = [e["auc"] for e in result["track1"]["kinds"].values() if e["auc"] is not None]
        result["track1"]["macro_auc"] = sum(kind_aucs) / len(kind_aucs) if kind_aucs else None
    if t2:
        result["track2"] = metrics.track2(t2)
        result["track2"]["auc"] = metrics.ranking_auc(t2_scores)
    return result, correct
