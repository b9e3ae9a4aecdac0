"""Losses of the detector over two-way answer distributions (supported word, hallucinated word).

B is the batch of questions; every logits tensor is [B, 2]: column 0 the logit of the label word
meaning "supported", column 1 the word meaning "hallucinated". Softmax in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of [B, 2] logits against [B] targets, summed over the labelled rows and divided by B.

    target: 1 = hallucinated, 0 = supported, -1 = no label (a transfer-set question: adds 0). Dividing
    by all B rows keeps the loss a mean over questions, so a batch split into shares weighted by their
    sizes sums to the whole batch's loss. 0 for an empty batch.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    keep = target >= 0  # [B]
    per_row = F.cross_entropy(logits.float(), target.clamp(min=0).long(), reduction="none")  # [B]
    return (per_row * keep).sum() / logits.shape[0]


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over B; the teacher is not detached here."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)  # [B, 2]
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)  # [B, 2]
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # [B]
    return temperature**2 * kl.mean()


def hybrid(
    student: torch.Tensor,
    target: torch.Tensor,
    teachers: list[tuple[torch.Tensor, float]],
    *,
    label_weight: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """label_weight * CE + sum_i w_i * T^2 KL(teacher_i || student), teachers detached; returns the parts too."""
    ce = label_ce(student, target)
    total = label_weight * ce
    parts = {"ce": float(ce.detach())}
    for i, (teacher, weight) in enumerate(teachers):
        kl = kd_kl(student, teacher.detach(), temperature)
        total = total + weight * kl
        parts[f"kl{i}"] = float(kl.detach())
    return total, parts


def p_hallucinated(logits: torch.Tensor) -> torch.Tensor:
    """P(hallucinated) [B] from [B, 2] logits."""
    return torch.softmax(logits.float(), dim=-1)[:, 1]
