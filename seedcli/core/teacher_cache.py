"""Optional teacher-target cache reused across epochs: top-k teacher logits per sample, in safetensors.

Why: the frozen teacher's clean logits z(v) are the same every epoch, so from epoch 2 on the clean
teacher pass can be skipped (mode "clean": exact, nothing about the method changes). Mode "both"
also stores the noisy logits z(v'); then epochs >= 2 run no teacher pass at all, but each sample
keeps the noise it drew in epoch 1. SEED draws noise "anew at every step" (docs/protocols.md), so "both" is a
documented, opt-in deviation (frozen noise per sample across epochs, like a fixed augmentation).

What is stored, per sample and supervised row (n rows, vocabulary V):
- `indices` [n, m] int32: the top-k ids of z(v), and in mode "both" also the top-k ids of z(v')
  (m = 2k; an id may occur twice), or all V ids when k >= V;
- `clean` [n, m] (and `noisy` [n, m]) in the logits' own dtype: the exact logits at those ids
  (bf16 logits stored as bf16 lose nothing);
- `clean_lse` [n] (and `noisy_lse`) float32: logsumexp over the FULL vocabulary.

Reconstruction (`expand`), per row, with S the set of stored ids (|S| = m' distinct ids): the
logits on S are the stored ones; every id outside S gets one fill value
    f = lse + log(r / (V - m')),   r = 1 - sum_{w in S} exp(z_w - lse)  (the tail mass),
so the reconstructed row has exactly the stored lse, the exact probabilities on S and the exact tail
mass r, spread uniformly. When S covers the vocabulary (k >= V) the reconstruction IS the original
row (exact, up to float32 rounding of the upcast, which is exact for bf16/fp16/fp32 logits).

How the loss is computed from the cache: the reconstructed clean and noisy rows go through exactly
the uncached path (confidence -> beta -> `purify.purify` -> `losses.seed_loss`). Consequences:
- identify "maxprob" is exact for any k (it needs max z and lse only); "entropy" is an upper bound
  (the uniform tail has the largest entropy for its mass);
- purified logits p^ equal the exact p on S (all purify spaces and the plausibility mask, since the
  top-1 clean id is in S); outside S they differ (in mode "both", p^ is one constant c per row there).
Bound (reverse KL at temperature T, q = softmax(p/T), q^ = softmax(p^/T), s the student): exactly
    KL(s||q^) - KL(s||q) = (log Z^ - log Z) + sum_{w not in S} s_w (p_w - p^_w) / T,
with Z = sum_w exp(p_w / T), hence
    |T^2 KL(s||q^) - T^2 KL(s||q)| <= T^2 [ |log Z^ - log Z| + sigma * max_{w not in S} |p_w - p^_w| / T ],
sigma = the student's mass outside S. Both terms vanish as the teacher's and the student's tail mass
outside the top-k goes to 0 ("exact where k covers the mass"). `reverse_kl_gap_bound` evaluates the
right-hand side from full logits (a diagnostic for tests and benchmarks; training never has them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seedcli import atomic
from seedcli.core.choices import TEACHER_CACHE_MODES as MODES

FORMAT = "seedcli-teacher-topk-v1"


@dataclass(frozen=True)
class TopK:
    """One sample's cached teacher rows: ids, logits at the ids, full-vocabulary logsumexp."""

    indices: torch.Tensor  # int32 [n, m]
    clean: torch.Tensor  # [n, m], the logits' dtype
    clean_lse: torch.Tensor  # float32 [n]
    noisy: torch.Tensor | None  # [n, m] (mode "both")
    noisy_lse: torch.Tensor | None  # float32 [n]
    vocab: int

    @property
    def rows(self) -> int:
        """n, the sample's supervised rows."""
        return int(self.indices.shape[0])


def compress(clean: torch.Tensor, noisy: torch.Tensor | None, k: int) -> TopK:
    """Top-k representation of teacher rows [n, V] (noisy optional): ids from both when both are given."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if clean.dim() != 2 or (noisy is not None and noisy.shape != clean.shape):
        raise ValueError(
            f"need clean [n, V] and noisy of the same shape, got {tuple(clean.shape)} and "
            f"{None if noisy is None else tuple(noisy.shape)}"
        )
    n, vocab = clean.shape
    kk = min(k, vocab)
    ids = clean.float().topk(kk, dim=-1).indices  # [n, kk]
    if noisy is not None and kk < vocab:
        ids = torch.cat([ids, noisy.float().topk(kk, dim=-1).indices], dim=-1)  # [n, 2kk]
    return TopK(
        indices=ids.to(torch.int32),
        clean=clean.gather(1, ids),
        clean_lse=torch.logsumexp(clean.float(), dim=-1),
        noisy=None if noisy is None else noisy.gather(1, ids),
        noisy_lse=None if noisy is None else torch.logsumexp(noisy.float(), dim=-1),
        vocab=vocab,
    )


def expand(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor, vocab: int) -> torch.Tensor:
    """Full rows [n, V] float32 from logits at ids [n, m] and the full lse [n] (uniform tail, see module doc)."""
    n = values.shape[0]
    ids = indices.long()
    vals = values.float()
    covered = torch.zeros(n, vocab, dtype=torch.bool, device=vals.device).scatter_(1, ids, True)  # [n, V]
    full = torch.zeros(n, vocab, dtype=torch.float32, device=vals.device).scatter_(1, ids, vals)  # [n, V]
    head = ((full - lse[:, None]).exp() * covered).sum(dim=-1)  # [n], mass on S
    missing = (vocab - covered.sum(dim=-1)).clamp(min=1).float()  # [n]
    # A tail mass that rounds to <= 0 becomes the smallest normal float: the fill stays finite, so
    # purification never computes inf - inf.
    tail = (1.0 - head).clamp(min=torch.finfo(torch.float32).tiny)
    fill = lse + tail.log() - missing.log()  # [n]
    return torch.where(covered, full, fill[:, None])


def reconstruct(entry: TopK, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(clean [n, V], noisy [n, V] or None) float32 rows on `device` from a cached entry."""
    move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    ids = move(entry.indices)
    clean = expand(move(entry.clean), ids, move(entry.clean_lse), entry.vocab)
    if entry.noisy is None or entry.noisy_lse is None:
        return clean, None
    return clean, expand(move(entry.noisy), ids, move(entry.noisy_lse), entry.vocab)


def split_by_sample(rows: torch.Tensor, sample_index: torch.Tensor, samples: int) -> list[torch.Tensor]:
    """Rows [N, ...] of a micro-batch -> one tensor per sample (in sample order; rows stay in order)."""
    return [rows[sample_index == j] for j in range(samples)]


@dataclass(frozen=True)
class TeacherCache:
    """Per-sample files <root>/round-<r>/<index>.safetensors; `index` is the record's position in the training set."""

    root: Path
    k: int
    mode: str  # "clean" | "both"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"teacher cache mode must be one of {MODES}, got {self.mode!r}")
        if self.k < 1:
            raise ValueError(f"teacher cache k must be >= 1, got {self.k}")

    def path(self, round_index: int, index: int) -> Path:
        """Where one sample's entry lives."""
        return Path(self.root) / f"round-{round_index}" / f"{index}.safetensors"

    def put(
        self, round_index: int, index: int, record_id: str, clean: torch.Tensor, noisy: torch.Tensor | None
    ) -> None:
        """Store one sample's teacher rows [n, V] (noisy is dropped in mode "clean"); atomic write."""
        from safetensors.torch import save

        entry = compress(
            clean.detach(), noisy.detach() if (noisy is not None and self.mode == "both") else None, self.k
        )
        tensors = {"indices": entry.indices, "clean": entry.clean, "clean_lse": entry.clean_lse}
        if entry.noisy is not None and entry.noisy_lse is not None:
            tensors.update({"noisy": entry.noisy, "noisy_lse": entry.noisy_lse})
        tensors = {name: t.contiguous().cpu() for name, t in tensors.items()}
        meta = {
            "format": FORMAT,
            "record_id": str(record_id),
            "k": str(self.k),
            "mode": self.mode,
            "vocab": str(entry.vocab),
            "rows": str(entry.rows),
        }
        atomic.write_bytes(self.path(round_index, index), save(tensors, metadata=meta))

    def get(self, round_index: int, index: int, record_id: str, rows: int) -> TopK | None:
        """The sample's entry, or None when absent or made for another record, k, mode or row count."""
        from safetensors import safe_open

        path = self.path(round_index, index)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            expected = {
                "format": FORMAT,
                "record_id": str(record_id),
                "k": str(self.k),
                "mode": self.mode,
                "rows": str(rows),
            }
            if any(meta.get(key) != value for key, value in expected.items()):
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
        return TopK(
            indices=tensors["indices"],
            clean=tensors["clean"],
            clean_lse=tensors["clean_lse"],
            noisy=tensors.get("noisy"),
            noisy_lse=tensors.get("noisy_lse"),
            vocab=int(meta["vocab"]),
        )

    def store_micro(
        self,
        round_index: int,
        indices: Sequence[int],
        record_ids: Sequence[str],
        sample_index: torch.Tensor,
        clean: torch.Tensor,
        noisy: torch.Tensor | None,
    ) -> None:
        """Store every sample of a micro-batch from its teacher rows [N, V] (sample_index [N])."""
        cleans = split_by_sample(clean, sample_index, len(indices))
        noisies = split_by_sample(noisy, sample_index, len(indices)) if noisy is not None else [None] * len(indices)
        for index, record_id, c, z in zip(indices, record_ids, cleans, noisies, strict=True):
            self.put(round_index, index, record_id, c, z)

    def load_micro(
        self,
        round_index: int,
        indices: Sequence[int],
        record_ids: Sequence[str],
        rows: Sequence[int],
        device: torch.device | str,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(clean [N, V], noisy [N, V] or None) float32 for a whole micro-batch, or None if any sample is missing."""
        entries = [self.get(round_index, i, r, n) for i, r, n in zip(indices, record_ids, rows, strict=True)]
        if any(e is None for e in entries):
            return None
        parts = [reconstruct(e, device) for e in entries if e is not None]
        clean = torch.cat([c for c, _ in parts])
        noisy = None if self.mode == "clean" else torch.cat([z for _, z in parts if z is not None])
        return clean, noisy


def reverse_kl_gap_bound(
    student: torch.Tensor, exact: torch.Tensor, approx: torch.Tensor, covered: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-row bound [N] on |T^2 KL(s||q^) - T^2 KL(s||q)| when approx == exact on `covered` [N, V] (module doc)."""
    t = temperature
    log_z = torch.logsumexp(exact.double() / t, dim=-1)  # [N]
    log_z_hat = torch.logsumexp(approx.double() / t, dim=-1)  # [N]
    s = torch.softmax(student.double() / t, dim=-1)  # [N, V]
    sigma = (s * (~covered)).sum(dim=-1)  # [N], student tail mass
    spread = ((exact.double() - approx.double()).abs() * (~covered)).amax(dim=-1)  # [N], max |p_w - p^_w| outside S
    return (t * t) * ((log_z_hat - log_z).abs() + sigma * spread / t)


def covered_mask(entry: TopK) -> torch.Tensor:
    """Bool [n, V]: which ids of each row are stored."""
    return torch.zeros(entry.rows, entry.vocab, dtype=torch.bool).scatter_(1, entry.indices.long(), True)


def bytes_per_row(k: int, mode: str, logit_bytes: int = 2) -> int:
    """Disk bytes per supervised row (int32 ids + logits + float32 lse), for sizing a cache."""
    m = 2 * k if mode == "both" else k
    values = 2 if mode == "both" else 1
    return m * 4 + values * (m * logit_bytes + 4)


def log_size_note(rows_per_sample: float, samples: int, k: int, mode: str, logit_bytes: int = 2) -> str:
    """Human-readable size of a cache: e.g. '7.7 GB for 50000 samples'."""
    size = bytes_per_row(k, mode, logit_bytes) * rows_per_sample * samples
    exponent = min(int(math.log(max(size, 1), 1000)), 4)
    unit = ("B", "kB", "MB", "GB", "TB")[exponent]
    return f"{size / 1000 ** exponent:.1f} {unit} for {samples} samples"
