"""Unit tests for seedcli.core.losses: divergences against a float64 reference, masking, chunking, seed_loss."""

from __future__ import annotations

import math

import pytest
import torch

from seedcli.core.losses import (
    LossParts,
    chunked,
    cross_entropy_sum,
    divergence_sum,
    forward_kl_sum,
    generalized_jsd_sum,
    reverse_kl_sum,
    seed_loss,
)
from seedcli.models.forward import supervised

KINDS = ("reverse_kl", "forward_kl", "jsd")


def _logits(n: int, v: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, v, generator=torch.Generator().manual_seed(seed))


# Independent float64 reference in plain Python: explicit softmax and explicit sums of p log(p / q).
def _softmax(row: list[float], temperature: float) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _reference(kind: str, student: torch.Tensor, target: torch.Tensor, temperature: float, beta: float = 0.5) -> float:
    total = 0.0
    for s_row, q_row in zip(student.double().tolist(), target.double().tolist(), strict=True):
        s, q = _softmax(s_row, temperature), _softmax(q_row, temperature)
        if kind == "reverse_kl":
            total += _kl(s, q)
        elif kind == "forward_kl":
            total += _kl(q, s)
        else:
            m = [beta * qi + (1 - beta) * si for qi, si in zip(q, s, strict=True)]
            total += beta * _kl(q, m) + (1 - beta) * _kl(s, m)
    return total * temperature**2


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_of_identical_distributions_is_zero(kind: str) -> None:
    z = _logits(6, 11, seed=0)
    assert abs(float(divergence_sum(kind, z, z.clone(), 2.0))) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_nonnegative_on_random_inputs(kind: str) -> None:
    for seed in range(5):
        value = float(divergence_sum(kind, _logits(8, 13, seed), _logits(8, 13, seed + 100), 1.5))
        assert value > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("kind", KINDS)
def test_divergence_matches_float64_reference(kind: str, temperature: float) -> None:
    student, target = _logits(5, 9, seed=1), _logits(5, 9, seed=2)
    got = divergence_sum(kind, student, target, temperature)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(_reference(kind, student, target, temperature), rel=1e-5)


def test_jsd_beta_matches_reference() -> None:
    student, target = _logits(5, 9, seed=3), _logits(5, 9, seed=4)
    got = generalized_jsd_sum(student, target, 2.0, beta=0.3)
    assert float(got) == pytest.approx(_reference("jsd", student, target, 2.0, beta=0.3), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_scaling(kind: str) -> None:
    student, target = _logits(4, 7, seed=5), _logits(4, 7, seed=6)
    at_one = float(divergence_sum(kind, student, target, 1.0))
    # softmax((T z) / T) = softmax(z): the only change is the T^2 factor.
    assert float(divergence_sum(kind, 3.0 * student, 3.0 * target, 3.0)) == pytest.approx(9.0 * at_one, rel=1e-5)
    # On the same logits a higher temperature flattens both distributions: a different value.
    assert float(divergence_sum(kind, student, target, 2.0)) != pytest.approx(at_one, rel=1e-3)


def test_reverse_is_mode_seeking_forward_is_mean_seeking() -> None:
    target = torch.tensor([[0.49, 0.49, 0.02]]).log()
    peaked = torch.tensor([[0.96, 0.02, 0.02]]).log()
    spread = torch.zeros(1, 3)
    # By hand: KL(peaked||q) = 0.5816 < KL(spread||q) = 0.6809, but KL(q||peaked) = 1.2378 > KL(q||spread) = 0.3213.
    assert float(reverse_kl_sum(peaked, target, 1.0)) == pytest.approx(
        0.96 * math.log(0.96 / 0.49) + 0.02 * math.log(0.02 / 0.49), rel=1e-5
    )
    assert float(reverse_kl_sum(peaked, target, 1.0)) < float(reverse_kl_sum(spread, target, 1.0))
    assert float(forward_kl_sum(peaked, target, 1.0)) > float(forward_kl_sum(spread, target, 1.0))
    assert float(reverse_kl_sum(peaked, target, 1.0)) != pytest.approx(
        float(forward_kl_sum(peaked, target, 1.0)), rel=0.1
    )


def test_jsd_limits_are_forward_and_reverse_kl() -> None:
    student, target = _logits(4, 9, seed=7, scale=1.5), _logits(4, 9, seed=8, scale=1.5)
    forward = float(forward_kl_sum(student, target, 1.0))
    reverse = float(reverse_kl_sum(student, target, 1.0))
    assert forward != pytest.approx(reverse, rel=5e-2)  # otherwise the checks could not tell them apart

    def relative_errors(eps: float) -> tuple[float, float]:
        near_zero = float(generalized_jsd_sum(student, target, 1.0, beta=eps)) / eps
        near_one = float(generalized_jsd_sum(student, target, 1.0, beta=1 - eps)) / eps
        return abs(near_zero / forward - 1), abs(near_one / reverse - 1)

    # JSD_beta / beta -> KL(q||s) and JSD_beta / (1 - beta) -> KL(s||q), with an O(eps) error.
    coarse, fine = relative_errors(1e-3), relative_errors(1e-4)
    assert fine[0] < 3e-3 and fine[1] < 3e-3
    assert fine[0] < coarse[0] / 5 and fine[1] < coarse[1] / 5
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="beta"):
            generalized_jsd_sum(student, target, 1.0, beta=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_student_only(kind: str) -> None:
    student = _logits(3, 5, seed=9).requires_grad_(True)
    target = _logits(3, 5, seed=10).requires_grad_(True)
    divergence_sum(kind, student, target, 2.0).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert target.grad is None


def test_bf16_inputs_give_float32_results() -> None:
    student, target = _logits(4, 10, seed=11).bfloat16(), _logits(4, 10, seed=12).bfloat16()
    labels = torch.tensor([0, 3, 9, 5])
    for kind in KINDS:
        got = divergence_sum(kind, student, target, 2.0)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(_reference(kind, student.float(), target.float(), 2.0), rel=1e-5)
    ce = cross_entropy_sum(student, labels)
    assert ce.dtype == torch.float32
    assert float(ce) == pytest.approx(float(cross_entropy_sum(student.float(), labels)), rel=1e-6)


def test_cross_entropy_matches_reference() -> None:
    logits, labels = _logits(5, 7, seed=13), torch.tensor([0, 6, 2, 2, 4])
    expected = sum(
        -math.log(_softmax(row, 1.0)[label])
        for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True)
    )
    assert float(cross_entropy_sum(logits, labels)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        cross_entropy_sum(logits, torch.tensor([0, 6, 2, -100, 4]))


def test_supervised_selects_shifted_rows_and_sample_index() -> None:
    """The selector training uses: position t's logits predict label t + 1; ignored labels drop out."""
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    labels = torch.tensor([[-100, -100, 1, 2], [-100, 0, -100, 1]])
    sup = supervised(labels)
    rows = logits[:, :-1][sup.mask]
    # Shifted: position t predicts label t + 1 -> (b0, t1), (b0, t2), (b1, t0), (b1, t2).
    torch.testing.assert_close(rows, torch.stack([logits[0, 1], logits[0, 2], logits[1, 0], logits[1, 2]]))
    assert sup.targets.tolist() == [1, 2, 0, 1]
    assert sup.sample_index.tolist() == [0, 0, 1, 1]
    assert sup.count == 4 and sup.mask.shape == (2, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_excluded_tokens_do_not_matter(kind: str) -> None:
    n, v = 5, 8
    student, target, labels = _logits(n, v, seed=14), _logits(n, v, seed=15), torch.tensor([1, 7, 0, 3, 3])
    # Embed the 5 supervised rows among junk rows (NaN) whose label is ignore_index, in a [2, 6, V] batch.
    positions = [(0, 1), (0, 2), (0, 4), (1, 0), (1, 3)]
    big_student = torch.full((2, 6, v), float("nan"))
    big_target = torch.full((2, 6, v), float("nan"))
    big_labels = torch.full((2, 6), -100)
    for i, (b, t) in enumerate(positions):
        big_student[b, t], big_target[b, t], big_labels[b, t + 1] = student[i], target[i], labels[i]
    sup = supervised(big_labels)
    s_rows, t_rows, labels_rows = big_student[:, :-1][sup.mask], big_target[:, :-1][sup.mask], sup.targets
    direct = seed_loss(student, target, labels, temperature=2.0, distill_weight=0.7, kind=kind, num_tokens=n)
    selected = seed_loss(s_rows, t_rows, labels_rows, temperature=2.0, distill_weight=0.7, kind=kind, num_tokens=n)
    assert torch.isfinite(selected.total)
    torch.testing.assert_close(selected.total, direct.total, rtol=0, atol=0)


def test_empty_rows_give_zero_sum() -> None:
    empty = torch.zeros(0, 6, requires_grad=True)
    for kind in KINDS:
        value = divergence_sum(kind, empty, torch.zeros(0, 6), 2.0)
        assert value.item() == 0.0 and value.requires_grad
    assert cross_entropy_sum(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_unchunked_in_value_and_gradient(kind: str) -> None:
    base = _logits(10, 7, seed=16)
    target = _logits(10, 7, seed=17)
    labels = torch.randint(0, 7, (10,), generator=torch.Generator().manual_seed(18))

    def loss_and_grad(chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        student = base.clone().requires_grad_(True)
        if chunk is None:
            value = divergence_sum(kind, student, target, 2.0) + cross_entropy_sum(student, labels)
        else:
            value = chunked(lambda s, q: divergence_sum(kind, s, q, 2.0), student, target, chunk=chunk)
            value = value + chunked(cross_entropy_sum, student, labels, chunk=chunk)
        value.backward()
        return value.detach(), student.grad

    full_value, full_grad = loss_and_grad(None)
    for chunk in (1, 3, 10, 64):
        value, grad = loss_and_grad(chunk)
        torch.testing.assert_close(value, full_value, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, full_grad, rtol=1e-6, atol=1e-7)


def test_chunked_forwards_keyword_arguments_and_validates() -> None:
    student, target = _logits(7, 5, seed=19), _logits(7, 5, seed=20)
    got = chunked(reverse_kl_sum, student, target, chunk=2, temperature=3.0)
    torch.testing.assert_close(got, reverse_kl_sum(student, target, 3.0))
    with pytest.raises(ValueError, match="chunk"):
        chunked(reverse_kl_sum, student, target, chunk=0, temperature=3.0)
    with pytest.raises(ValueError, match="row count"):
        chunked(reverse_kl_sum, student, target[:3], chunk=2, temperature=3.0)


def test_seed_loss_combines_means_over_window_tokens() -> None:
    student, target, labels = _logits(6, 9, seed=21), _logits(6, 9, seed=22), torch.tensor([0, 1, 2, 3, 4, 8])
    window = 20  # this micro-batch holds 6 of the window's 20 supervised tokens
    parts = seed_loss(
        student, target, labels, temperature=2.0, distill_weight=0.7, kind="reverse_kl", num_tokens=window
    )
    assert isinstance(parts, LossParts)
    kl = _reference("reverse_kl", student, target, 2.0) / window  # T^2 inside
    ce = float(cross_entropy_sum(student, labels)) / window
    assert float(parts.kl) == pytest.approx(kl, rel=1e-5)
    assert float(parts.ce) == pytest.approx(ce, rel=1e-6)
    assert float(parts.total) == pytest.approx(0.7 * kl + 0.3 * ce, rel=1e-5)
    chunked_parts = seed_loss(
        student, target, labels, temperature=2.0, distill_weight=0.7, kind="reverse_kl", num_tokens=window, chunk=4
    )
    torch.testing.assert_close(chunked_parts.total, parts.total)


def test_seed_loss_without_distillation_is_exactly_ce_and_ignores_target() -> None:
    base, labels = _logits(5, 6, seed=23), torch.tensor([5, 0, 1, 1, 2])
    grads = []
    for target in (_logits(5, 6, seed=24), _logits(5, 6, seed=25), torch.full((5, 6), float("nan"))):
        student = base.clone().requires_grad_(True)
        parts = seed_loss(student, target, labels, temperature=2.0, distill_weight=0.0, kind="reverse_kl", num_tokens=5)
        assert torch.equal(parts.total.detach(), cross_entropy_sum(base, labels) / 5)
        parts.total.backward()
        grads.append(student.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_seed_loss_rejects_bad_token_counts() -> None:
    student, target, labels = _logits(3, 4, seed=26), _logits(3, 4, seed=27), torch.tensor([0, 1, 2])
    for bad in (0, -1, 2):
        with pytest.raises(ValueError, match="num_tokens"):
            seed_loss(student, target, labels, temperature=2.0, distill_weight=0.7, kind="reverse_kl", num_tokens=bad)
    with pytest.raises(ValueError, match="kind"):
        seed_loss(student, target, labels, temperature=2.0, distill_weight=0.7, kind="kl", num_tokens=3)


def test_chunked_keeps_only_input_views_for_backward() -> None:
    student = _logits(12, 50, seed=28).requires_grad_(True)
    target = _logits(12, 50, seed=29)
    storages = {student.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = chunked(reverse_kl_sum, student, target, chunk=4, temperature=2.0)
    # Checkpointed chunks save no float32 [chunk, V] intermediates: only slices of the inputs survive forward.
    assert saved and all(t.untyped_storage().data_ptr() in storages for t in saved)
    value.backward()
    assert student.grad is not None and bool(torch.isfinite(student.grad).all())
