"""Detection losses against closed forms and identities."""

from __future__ import annotations

import math

import torch

from seedcli.detect import losses
from seedcli.detect.metrics import prf, ranking_auc, track1


def test_kd_is_zero_for_identical_distributions_and_matches_the_closed_form() -> None:
    s = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    assert losses.kd_kl(s, s.clone(), 2.0).item() == 0.0
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    temp = 3.0
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps = torch.softmax(torch.tensor(srow) / temp, 0).tolist()
        pt = torch.softmax(torch.tensor(trow) / temp, 0).tolist()
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    assert math.isclose(losses.kd_kl(s, t, temp).item(), temp**2 * expected / 2, rel_tol=1e-5)


def test_kd_gradient_vanishes_at_the_teacher() -> None:
    t = torch.tensor([[0.7, -0.4]])
    s = t.clone().requires_grad_(True)
    losses.kd_kl(s, t, 2.0).backward()
    assert torch.allclose(s.grad, torch.zeros_like(s), atol=1e-7)


def test_hybrid_without_teachers_is_cross_entropy_and_weights_add() -> None:
    s = torch.tensor([[0.2, 0.9], [1.5, -0.5]])
    y = torch.tensor([1, 0])
    ce = -(torch.log_softmax(s, -1)[0, 1] + torch.log_softmax(s, -1)[1, 0]) / 2
    total, parts = losses.hybrid(s, y, [], label_weight=1.0, temperature=2.0)
    assert torch.isclose(total, ce) and math.isclose(parts["ce"], ce.item(), rel_tol=1e-6)
    t1, t2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.5, 0.5]])
    total, _ = losses.hybrid(s, y, [(t1, 0.3), (t2, 0.2)], label_weight=0.5, temperature=2.0)
    expected = 0.5 * ce + 0.3 * losses.kd_kl(s, t1, 2.0) + 0.2 * losses.kd_kl(s, t2, 2.0)
    assert torch.isclose(total, expected)


def test_empty_batches_give_zero() -> None:
    empty = torch.zeros(0, 2)
    assert losses.label_ce(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert losses.kd_kl(empty, empty, 2.0).item() == 0.0


def test_metrics() -> None:
    scores = prf([(True, True), (True, False), (False, True), (False, False)])
    assert scores["precision"] == 50.0 and scores["recall"] == 50.0 and scores["f1"] == 50.0
    result = track1([("object", True, True), ("attribute", True, False), ("attribute", False, False)])
    assert result["kinds"]["object"]["f1"] == 100.0 and result["kinds"]["attribute"]["f1"] == 0.0
    assert result["macro_f1"] == 50.0  # relation absent: not averaged in
    assert math.isclose(result["options"]["f1"], 2 * 100 * 50 / 150)


def test_ranking_auc_counts_ordered_pairs_with_ties_as_half() -> None:
    assert ranking_auc([(0.9, True), (0.1, False), (0.2, False)]) == 100.0
    assert ranking_auc([(0.1, True), (0.9, False)]) == 0.0
    assert ranking_auc([(0.5, True), (0.5, False)]) == 50.0
    assert ranking_auc([(0.3, True), (0.2, False), (0.7, False)]) == 50.0  # 1 of the 2 pairs ordered right
    # A brute-force count over every (positive, negative) pair agrees on tied and untied scores alike.
    scored = [(0.2, True), (0.2, False), (0.4, True), (0.1, False), (0.4, False), (0.9, True), (0.4, True)]
    pos = [p for p, g in scored if g]
    neg = [p for p, g in scored if not g]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
    assert math.isclose(ranking_auc(scored), 100 * brute)
    assert ranking_auc([(0.4, True), (0.6, True)]) is None and ranking_auc([]) is None  # one class only


def test_best_threshold_maximises_f1_and_prefers_one_half_on_ties() -> None:
    from seedcli.detect.infer import best_threshold

    pairs = [(0.1, False), (0.2, False), (0.3, True), (0.35, True), (0.6, False)]
    t = best_threshold(pairs)
    assert t == 0.29  # [0.2, 0.3) flags both positives and 0.6 (F1 0.8, the best); 0.29 is nearest 0.5
    assert best_threshold([(0.9, False), (0.1, False)]) == 0.5  # no positives: the default
    separable = [(0.7, True), (0.2, False)]
    assert best_threshold(separable) == 0.5  # every t in [0.2, 0.7) is perfect; 0.5 is closest to 0.5


def test_calibration_gives_each_option_kind_its_own_threshold_and_scoring_uses_it() -> None:
    from pathlib import Path

    from seedcli.detect.infer import calibrate, flagged, score, uniform
    from seedcli.detect.items import Item, Option

    # Objects sit low (hallucinated at 0.3, supported at 0.1), attributes high (0.8 vs 0.6): no single
    # threshold separates both kinds, one per kind does. Relations have no hallucinated option.
    options = (
        Option("A", "cat", "object"),
        Option("B", "big cat", "attribute"),
        Option("C", "cat is left", "relation"),
    )
    items = [
        Item("0", Path("x.png"), 1, "cat", options=options, labels=("A", "B")),
        Item("1", Path("x.png"), 1, "cat", options=options, labels=()),
        Item("2", Path("x.png"), 2, "claim", labels=("not_factual",)),
    ]
    probs = [[0.3, 0.8, 0.55], [0.1, 0.6, 0.2], [0.7]]
    thresholds = calibrate(items, probs)
    assert 0.1 <= thresholds["object"] < 0.3 and 0.6 <= thresholds["attribute"] < 0.8
    assert "relation" not in thresholds  # no positive: the Track 1 threshold applies
    scores, correct = score(items, probs, thresholds)
    kinds = scores["track1"]["kinds"]
    assert kinds["object"]["auc"] == 100.0 and kinds["attribute"]["auc"] == 100.0
    assert kinds["relation"]["auc"] is None  # no hallucinated relation: no ranking to score
    assert scores["track1"]["macro_auc"] == 100.0  # the mean over the kinds that have an AUC
    assert scores["track1"]["options"]["auc"] == 75.0  # pooled: 6 of 8 pairs, 0.3 below 0.55 and 0.6
    assert scores["track2"]["auc"] is None  # one claim, one class
    assert scores["track1"]["kinds"]["object"]["f1"] == 100.0 and scores["track1"]["kinds"]["attribute"]["f1"] == 100.0
    relation_flag = 0.55 > thresholds["track1"]
    assert correct[:3] == [True, True, not relation_flag] and correct[-1] is True
    records = flagged(items, probs, thresholds)
    assert records[0]["hallucinated"] == ["A", "B"] + (["C"] if relation_flag else [])
    assert records[1]["hallucinated"] == []
    # One threshold for everything (--threshold) overrides the kinds.
    assert flagged(items, probs, uniform(0.5))[0]["hallucinated"] == ["B", "C"]


def test_unlabelled_rows_add_no_cross_entropy_but_keep_their_kl() -> None:
    s = torch.tensor([[0.2, 0.9], [1.5, -0.5], [-0.3, 0.4]], requires_grad=True)
    y = torch.tensor([1, -1, 0])  # the middle question is from the transfer set
    labelled = torch.tensor([0, 2])
    assert torch.isclose(losses.label_ce(s, y), losses.label_ce(s[labelled], y[labelled]) * 2 / 3)
    # A batch split into shares, each weighted by its size, sums to the whole batch's loss.
    shares = [(slice(0, 1), 1 / 3), (slice(1, 3), 2 / 3)]
    assert torch.isclose(sum(w * losses.label_ce(s[part], y[part]) for part, w in shares), losses.label_ce(s, y))
    losses.label_ce(s, y).backward()
    assert s.grad is not None and s.grad[1].abs().sum().item() == 0.0 and s.grad[0].abs().sum().item() > 0.0
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    total, parts = losses.hybrid(s, torch.full((3,), -1), [(t, 1.0)], label_weight=1.0, temperature=2.0)
    assert parts["ce"] == 0.0 and torch.isclose(total, losses.kd_kl(s, t, 2.0))


def test_the_evaluate_table_shows_threshold_free_auc_and_a_dash_where_there_is_none() -> None:
    from seedcli.detect.runner import summary_rows

    kinds = {k: {"f1": 50.0, "n": 4, "auc": 75.0} for k in ("object", "attribute")}
    kinds["relation"] = {"f1": 0.0, "n": 0, "auc": None}
    entry = {
        "label": "run",
        "track1": {"options": {"f1": 60.0, "auc": 70.0}, "macro_f1": 50.0, "macro_auc": 75.0, "kinds": kinds},
        "track2": {"accuracy": 80.0, "f1": 66.7, "auc": None},
    }
    columns, rows = summary_rows({"models": [entry]})
    row = dict(zip(columns, rows[0]))
    assert row["T1 AUC"] == "75.0" and row["T2 AUC"] == "-" and row["relation"] == "-" and row["T2 acc"] == "80.0"
