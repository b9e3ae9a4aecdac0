"""Unit tests for seedcli.core.purify: confidence, history, beta selection and purified logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from seedcli.core.losses import reverse_kl_sum
from seedcli.core.purify import (
    ConfidenceHistory,
    beta_from_quantiles,
    continuous_beta,
    purify,
    sample_confidence,
    token_confidence,
    token_entropy,
)

LN = math.log
# Softmaxes by construction: [1/4, 1/4, 1/2], [1/3, 1/3, 1/3], [3/5, 1/5, 1/5].
HAND_LOGITS = torch.tensor([[0.0, 0.0, LN(2.0)], [5.0, 5.0, 5.0], [LN(3.0), 0.0, 0.0]])
QUARTILES = (0.25, 0.5, 0.75)
BETAS = (1.1, 0.8, 0.6, 0.4)


def test_sample_confidence_by_hand() -> None:
    sample_index = torch.tensor([0, 1, 0])
    conf = sample_confidence(HAND_LOGITS, sample_index, num_samples=2)
    expected = torch.tensor([(LN(0.5) + LN(0.6)) / 2, LN(1 / 3)])
    assert conf.dtype == torch.float32
    torch.testing.assert_close(conf, expected, rtol=0, atol=1e-6)


def test_sample_confidence_bf16_input_gives_float32() -> None:
    conf = sample_confidence(HAND_LOGITS.to(torch.bfloat16), torch.tensor([0, 0, 0]), num_samples=1)
    assert conf.dtype == torch.float32
    assert float(conf[0]) == pytest.approx((LN(0.5) + LN(1 / 3) + LN(0.6)) / 3, abs=2e-2)


def test_sample_confidence_empty_sample_raises() -> None:
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        sample_confidence(HAND_LOGITS, torch.tensor([0, 0, 2]), num_samples=3)
    with pytest.raises(ValueError, match="no supervised tokens"):
        sample_confidence(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), num_samples=1)


def test_sample_confidence_index_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="sample_index"):
        sample_confidence(HAND_LOGITS, torch.tensor([0, 1, 2]), num_samples=2)


def test_token_confidence_maxprob_and_entropy_by_hand() -> None:
    torch.testing.assert_close(token_confidence(HAND_LOGITS), torch.tensor([0.5, 1 / 3, 0.6]))
    entropies = torch.tensor(
        [
            -(2 * 0.25 * LN(0.25) + 0.5 * LN(0.5)),
            LN(3.0),
            -(0.6 * LN(0.6) + 2 * 0.2 * LN(0.2)),
        ]
    )
    torch.testing.assert_close(token_entropy(HAND_LOGITS), entropies)
    # Sign convention: the "entropy" confidence is -H, so higher still means more confident.
    torch.testing.assert_close(token_confidence(HAND_LOGITS, kind="entropy"), -entropies)
    with pytest.raises(ValueError, match="kind"):
        token_confidence(HAND_LOGITS, kind="margin")


def test_history_keeps_last_size_values_and_round_trips() -> None:
    history = ConfidenceHistory(size=5)
    history.update(torch.arange(3.0))
    history.update(torch.arange(3.0, 10.0))
    assert len(history) == 5
    assert history.state() == [5.0, 6.0, 7.0, 8.0, 9.0]
    restored = ConfidenceHistory.from_state(json.loads(json.dumps(history.state())), size=5)
    assert restored.state() == history.state()
    torch.testing.assert_close(restored.quantiles(QUARTILES), history.quantiles(QUARTILES))
    assert ConfidenceHistory.from_state(history.state(), size=2).state() == [8.0, 9.0]
    assert len(ConfidenceHistory.from_state([], size=3)) == 0


def test_history_rejects_empty_quantiles_and_nan() -> None:
    history = ConfidenceHistory()
    with pytest.raises(ValueError, match="empty"):
        history.quantiles(QUARTILES)
    with pytest.raises(ValueError, match="finite"):
        history.update(torch.tensor([0.1, float("nan")]))


def test_beta_buckets_on_history_0_to_99() -> None:
    history = ConfidenceHistory(size=1000)
    history.update(torch.arange(100.0))
    thresholds = history.quantiles(QUARTILES)
    # Linear interpolation at q * (n - 1): 24.75, 49.5, 74.25.
    torch.testing.assert_close(thresholds, torch.tensor([24.75, 49.5, 74.25]))
    conf = torch.tensor([-1e6, 24.7, 24.75, 49.49, 49.5, 74.2, 74.25, 99.0, 1e6])
    expected = torch.tensor([1.1, 1.1, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4, 0.4])
    torch.testing.assert_close(beta_from_quantiles(conf, thresholds, BETAS), expected)


def test_beta_from_quantiles_validates() -> None:
    with pytest.raises(ValueError, match="len"):
        beta_from_quantiles(torch.zeros(2), torch.tensor([0.0, 1.0, 2.0]), (1.0, 2.0))
    with pytest.raises(ValueError, match="non-decreasing"):
        beta_from_quantiles(torch.zeros(2), torch.tensor([2.0, 1.0]), (1.0, 2.0, 3.0))


def test_continuous_beta_linear_and_clamped() -> None:
    conf = torch.tensor([-5.0, 0.0, 5.0, 10.0, 20.0])
    beta = continuous_beta(conf, history_min=0.0, history_max=10.0, beta_min=0.4, beta_max=1.1)
    torch.testing.assert_close(beta, torch.tensor([1.1, 1.1, 0.75, 0.4, 0.4]))
    flat = continuous_beta(conf, history_min=3.0, history_max=3.0, beta_min=0.4, beta_max=1.1)
    torch.testing.assert_close(flat, torch.full((5,), 0.75))


def test_purify_logits_by_hand() -> None:
    clean = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    noisy = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    # Row 0, beta 0.5: 1.5 * [1, 2, 3] - 0.5 * [3, 2, 1]; row 1, beta 1: 2 * [0, -1, 4] - 0.
    per_token = purify(clean, noisy, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(per_token, torch.tensor([[0.0, 2.0, 4.0], [0.0, -2.0, 8.0]]))
    scalar = purify(clean, noisy, 0.5)
    torch.testing.assert_close(scalar, torch.tensor([[0.0, 2.0, 4.0], [0.0, -1.5, 6.0]]))
    bf16 = purify(clean.to(torch.bfloat16), noisy.to(torch.bfloat16), torch.tensor(0.5))
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, scalar)


def test_purify_logprob_space_by_hand() -> None:
    clean = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
    noisy = [[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]]
    betas = [0.5, 1.0]

    def log_softmax(row: list[float]) -> list[float]:
        norm = math.log(sum(math.exp(x) for x in row))
        return [x - norm for x in row]

    expected = [
        [(1 + b) * c - b * n for c, n in zip(log_softmax(cr), log_softmax(nr), strict=True)]
        for cr, nr, b in zip(clean, noisy, betas, strict=True)
    ]
    got = purify(torch.tensor(clean), torch.tensor(noisy), torch.tensor(betas), space="logprobs")
    torch.testing.assert_close(got, torch.tensor(expected))
    # It differs from logit space by a per-row constant only, so the softmax is the same.
    logit_space = purify(torch.tensor(clean), torch.tensor(noisy), torch.tensor(betas))
    assert not torch.allclose(got, logit_space)
    torch.testing.assert_close(got.softmax(-1), logit_space.softmax(-1))


def test_plausibility_penalty_finite_and_only_outside_head() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.21, 0.29, 0.4]])
    clean = probs.log()
    noisy = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 1.0]])
    plain = purify(clean, noisy, 0.8)
    gated = purify(clean, noisy, 0.8, plausibility_gamma=0.5, penalty=1e4)
    # gamma = 0.5: row 0 head = {p >= 0.25} = {0, 1}; row 1 head = {p >= 0.2} = {1, 2, 3} (no exact ties: float log
    # rounding decides those).
    outside = torch.tensor([[False, False, True, True], [True, False, False, False]])
    assert bool(torch.isfinite(gated).all())
    torch.testing.assert_close(gated[~outside], plain[~outside])
    torch.testing.assert_close(gated[outside], plain[outside] - 1e4)
    # A student with mass everywhere keeps a finite reverse KL and gradient against the gated target.
    student = torch.zeros(2, 4, requires_grad=True)
    loss = reverse_kl_sum(student, gated, temperature=2.0)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert bool(torch.isfinite(student.grad).all())


def test_purify_validates() -> None:
    with pytest.raises(ValueError, match="match"):
        purify(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="space"):
        purify(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, space="probs")
    with pytest.raises(ValueError, match="gamma"):
        purify(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, plausibility_gamma=0.0)
    with pytest.raises(ValueError, match="beta"):
        purify(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))
