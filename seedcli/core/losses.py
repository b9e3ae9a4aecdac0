"""Mode-seeking distillation losses (docs/protocols.md, SEED), as pure tensor functions.

Shapes: B = samples, T = sequence positions, N = supervised tokens (rows already selected), V =
vocabulary. Every divergence and cross-entropy returns a SUM over its N rows as a float32 scalar;
the caller divides by the number of supervised tokens of the whole accumulation window (`seed_loss`
takes it as `num_tokens`). Softmax / log-softmax are computed in float32 whatever the input dtype.
The target (purified teacher) is always detached: gradients reach the student only.

Generalised JSD limits, with m = beta * q + (1 - beta) * s and
JSD_beta = beta * KL(q || m) + (1 - beta) * KL(s || m):
- beta -> 0: m -> s + beta (q - s), so KL(q || m) -> KL(q || s) and KL(s || m) = beta^2 / 2 *
  chi^2(q || s) + O(beta^3); hence JSD_beta = beta * KL(q || s) + O(beta^2), i.e. JSD_beta / beta
  -> forward KL(q || s).
- beta -> 1: symmetrically JSD_beta = (1 - beta) * KL(s || q) + O((1 - beta)^2), i.e.
  JSD_beta / (1 - beta) -> reverse KL(s || q).
At beta = 0 or 1 exactly the JSD is identically 0, so `beta` must lie strictly inside (0, 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from seedcli.core.choices import DIVERGENCE_KINDS


def _check_pair(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> None:
    if student_logits.dim() != 2 or student_logits.shape != target_logits.shape:
        raise ValueError(
            f"need student and target logits of the same shape [N, V], got "
            f"{tuple(student_logits.shape)} and {tuple(target_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _log_probs(
    student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log s, log q) at temperature T, float32, target detached: each [N, V]."""
    _check_pair(student_logits, target_logits, temperature)
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = torch.log_softmax(target_logits.detach().float() / temperature, dim=-1)
    return log_s, log_q


def reverse_kl_sum(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum_t KL(s_t || q_t), s = softmax(student / T), q = softmax(target / T): [N, V] x2 -> [] float32."""
    log_s, log_q = _log_probs(student_logits, target_logits, temperature)
    kl = (log_s.exp() * (log_s - log_q)).sum()
    return kl * (temperature * temperature)


def forward_kl_sum(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum_t KL(q_t || s_t) (mean-seeking ablation): [N, V] x2 -> [] float32."""
    log_s, log_q = _log_probs(student_logits, target_logits, temperature)
    kl = (log_q.exp() * (log_q - log_s)).sum()
    return kl * (temperature * temperature)


def generalized_jsd_sum(
    student_logits: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float,
    beta: float = 0.5,
) -> torch.Tensor:
    """T^2 * sum_t [beta KL(q || m) + (1 - beta) KL(s || m)], m = beta q + (1 - beta) s: [N, V] x2 -> [] float32."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"JSD beta must lie strictly in (0, 1) (the JSD is 0 at both ends), got {beta}")
    log_s, log_q = _log_probs(student_logits, target_logits, temperature)
    log_m = torch.logaddexp(log_q + math.log(beta), log_s + math.log(1.0 - beta))  # [N, V]
    kl_qm = (log_q.exp() * (log_q - log_m)).sum()
    kl_sm = (log_s.exp() * (log_s - log_m)).sum()
    return (beta * kl_qm + (1.0 - beta) * kl_sm) * (temperature * temperature)


def divergence_sum(
    kind: str,
    student_logits: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Dispatch on kind: "reverse_kl" | "forward_kl" | "jsd"; [N, V] x2 -> [] float32 (T^2 included)."""
    if kind == "reverse_kl":
        return reverse_kl_sum(student_logits, target_logits, temperature)
    if kind == "forward_kl":
        return forward_kl_sum(student_logits, target_logits, temperature)
    if kind == "jsd":
        return generalized_jsd_sum(student_logits, target_logits, temperature, beta=jsd_beta)
    raise ValueError(f"divergence kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")


def cross_entropy_sum(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_t -log softmax(student_t)[label_t] in float32: [N, V], [N] -> []. Labels must all be valid ids."""
    if student_logits.dim() != 2 or labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"need logits [N, V] and labels [N], got {tuple(student_logits.shape)} and {tuple(labels.shape)}"
        )
    vocab = student_logits.shape[1]
    if labels.numel() > 0:
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= vocab:
            raise ValueError(
                f"labels must lie in [0, {vocab}); select supervised rows first (ignore_index is not skipped here)"
            )
    z = student_logits.float()  # [N, V]
    picked = z.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # [N]
    return (torch.logsumexp(z, dim=-1) - picked).sum()


def chunked(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, chunk: int, **kwargs: object) -> torch.Tensor:
    """sum over row chunks of fn(*chunk_tensors, **kwargs) for a per-token SUM loss; equals fn(*tensors, **kwargs).

    When gradients are needed each chunk is checkpointed (recomputed in backward), so at most
    chunk x V float32 intermediates are alive at once, in forward and in backward.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not tensors:
        raise ValueError("chunked needs at least one tensor")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all tensors must share the row count N, got {[tuple(t.shape) for t in tensors]}")
    if n <= chunk:
        return fn(*tensors, **kwargs)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # One split per tensor: its backward concatenates the chunk gradients once, [N, V] in total.
    pieces = [t.split(chunk, dim=0) for t in tensors]
    total: torch.Tensor | None = None
    for parts in zip(*pieces, strict=True):
        if needs_grad:
            value = checkpoint(fn, *parts, use_reentrant=False, **kwargs)
        else:
            value = fn(*parts, **kwargs)
        total = value if total is None else total + value
    assert total is not None  # n > chunk >= 1 guarantees one chunk
    return total


def cross_entropy_mean(
    student_logits: torch.Tensor, labels: torch.Tensor, *, num_tokens: int, chunk: int | None = None
) -> torch.Tensor:
    """CE summed over N rows and divided by `num_tokens`: [N, V], [N] -> [] float32; `chunk` bounds memory."""
    if chunk is None:
        return cross_entropy_sum(student_logits, labels) / num_tokens
    return chunked(cross_entropy_sum, student_logits, labels, chunk=chunk) / num_tokens


@dataclasses.dataclass(frozen=True)
class LossParts:
    """SEED loss terms, each a per-token mean over the window: total = w * kl + (1 - w) * ce (T^2 inside kl)."""

    total: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def seed_loss(
    student_logits: torch.Tensor,
    purified_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    distill_weight: float,
    kind: str,
    num_tokens: int,
    jsd_beta: float = 0.5,
    chunk: int | None = None,
) -> LossParts:
    """SEED total loss over N supervised rows: [N, V], [N, V], [N] -> LossParts of [] float32 means over num_tokens.

    A term whose weight is 0 is still computed for logging, without gradient, and left out of total
    (so distill_weight = 0 gives exactly the CE mean whatever the target holds).
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens <= 0:
        raise ValueError(f"num_tokens must be a positive int (the window's supervised tokens), got {num_tokens!r}")
    n = student_logits.shape[0]
    if num_tokens < n:
        raise ValueError(f"num_tokens ({num_tokens}) is smaller than this batch's supervised tokens ({n})")
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"divergence kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")

    def divergence() -> torch.Tensor:
        if chunk is None:
            return divergence_sum(kind, student_logits, purified_logits, temperature, jsd_beta)
        return chunked(
            lambda s, q: divergence_sum(kind, s, q, temperature, jsd_beta), student_logits, purified_logits, chunk=chunk
        )

    with torch.set_grad_enabled(torch.is_grad_enabled() and distill_weight > 0.0):
        kl = divergence() / num_tokens
    with torch.set_grad_enabled(torch.is_grad_enabled() and distill_weight < 1.0):
        ce = cross_entropy_mean(student_logits, labels, num_tokens=num_tokens, chunk=chunk)
    if distill_weight == 0.0:
        total = ce
    elif distill_weight == 1.0:
        total = kl
    else:
        total = distill_weight * kl + (1.0 - distill_weight) * ce
    return LossParts(total=total, kl=kl, ce=ce)
