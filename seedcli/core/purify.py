"""Identify and purge (docs/protocols.md, SEED): confidence, beta selection, purified logits.

Shapes: N = supervised tokens (rows already selected), V = vocabulary, B = samples, K = thresholds.
All softmax / log-softmax work is done in float32 whatever the input dtype.

Sign convention for beta selection: every confidence passed to `beta_from_quantiles`,
`continuous_beta` and `ConfidenceHistory` is "higher = more confident", and lower confidence gives a
larger beta. `token_confidence(kind="entropy")` therefore returns the NEGATED entropy -H(p) (in
[-log V, 0]); `token_entropy` gives H(p) itself for logging.
"""

from __future__ import annotations

import math

import torch

from seedcli.core.choices import CONFIDENCE_KINDS, PURIFY_SPACES


def _check_rows(logits: torch.Tensor, name: str) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be [N, V], got shape {tuple(logits.shape)}")


def _log_max_prob(logits: torch.Tensor) -> torch.Tensor:
    """log max_w softmax(z)_w = max z - logsumexp z, per row: [N, V] -> [N] float32."""
    z = logits.float()  # [N, V]
    return z.amax(dim=-1) - torch.logsumexp(z, dim=-1)


def sample_confidence(
    clean_logits: torch.Tensor,
    sample_index: torch.Tensor,
    num_samples: int,
) -> torch.Tensor:
    """Per-sample confidence: mean over the sample's supervised tokens of log max_w softmax(z(v)): [B] float32."""
    _check_rows(clean_logits, "clean_logits")
    n = clean_logits.shape[0]
    if sample_index.shape != (n,):
        raise ValueError(f"sample_index must be [N] = [{n}], got shape {tuple(sample_index.shape)}")
    if sample_index.dtype != torch.long:
        raise ValueError(f"sample_index must be torch.long, got {sample_index.dtype}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if n > 0 and (int(sample_index.min()) < 0 or int(sample_index.max()) >= num_samples):
        raise ValueError(f"sample_index values must lie in [0, {num_samples})")
    device = clean_logits.device
    per_token = _log_max_prob(clean_logits)  # [N]
    sums = torch.zeros(num_samples, dtype=torch.float32, device=device).index_add_(0, sample_index, per_token)
    counts = torch.bincount(sample_index, minlength=num_samples)  # [B]
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"samples {empty} have no supervised tokens; their confidence is undefined")
    return sums / counts.to(torch.float32)  # [B]


def token_entropy(clean_logits: torch.Tensor) -> torch.Tensor:
    """Entropy H(softmax(z)) per row in nats: [N, V] -> [N] float32 (higher = less confident)."""
    _check_rows(clean_logits, "clean_logits")
    logp = torch.log_softmax(clean_logits.float(), dim=-1)  # [N, V]
    # p * logp is 0 where p underflows to 0 (logp finite for finite logits).
    return -(logp.exp() * logp).sum(dim=-1)


def token_confidence(clean_logits: torch.Tensor, kind: str = "maxprob") -> torch.Tensor:
    """Per-token confidence, higher = more confident: "maxprob" max_w p(w), "entropy" -H(p): [N] float32."""
    _check_rows(clean_logits, "clean_logits")
    if kind == "maxprob":
        return _log_max_prob(clean_logits).exp()
    if kind == "entropy":
        return -token_entropy(clean_logits)
    raise ValueError(f"confidence kind must be one of {CONFIDENCE_KINDS}, got {kind!r}")


class ConfidenceHistory:
    """The last `size` confidences seen (a FIFO window) whose quantiles set the beta thresholds."""

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError(f"confidence history size must be >= 1, got {size}")
        self.size = size
        self._values = torch.empty(0, dtype=torch.float64)  # [<= size], oldest first, CPU

    def update(self, values: torch.Tensor) -> None:
        """Append confidences (any shape, flattened in order), keeping only the newest `size`."""
        new = values.detach().flatten().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(new).all()):
            raise ValueError("confidence values must be finite (got NaN or inf)")
        self._values = torch.cat([self._values, new])[-self.size :]

    def quantiles(self, qs: tuple[float, ...]) -> torch.Tensor:
        """Quantiles of the window (linear interpolation, as torch.quantile): [K] float32."""
        if len(self._values) == 0:
            raise ValueError("confidence history is empty: call update() before quantiles()")
        if any(not 0.0 <= q <= 1.0 for q in qs):
            raise ValueError(f"quantile levels must lie in [0, 1], got {qs}")
        levels = torch.tensor(qs, dtype=torch.float64)
        return torch.quantile(self._values, levels).to(torch.float32)

    def state(self) -> list[float]:
        """The window as JSON-ready floats, oldest first (for checkpoints)."""
        return [float(v) for v in self._values.tolist()]

    @classmethod
    def from_state(cls, values: list[float], size: int = 1000) -> ConfidenceHistory:
        """Rebuild a history from `state()`; keeps the newest `size` values."""
        history = cls(size)
        if values:
            history.update(torch.tensor(values, dtype=torch.float64))
        return history

    def __len__(self) -> int:
        return len(self._values)


def beta_from_quantiles(
    conf: torch.Tensor,
    thresholds: torch.Tensor,
    values: tuple[float, ...],
) -> torch.Tensor:
    """Piecewise-constant beta, [B] float32.

    conf < t[0] -> values[0]; t[i-1] <= conf < t[i] -> values[i]; conf >= t[-1] -> values[-1].
    """
    if thresholds.dim() != 1:
        raise ValueError(f"thresholds must be [K], got shape {tuple(thresholds.shape)}")
    if len(values) != thresholds.shape[0] + 1:
        raise ValueError(f"need len(values) == len(thresholds) + 1, got {len(values)} and {thresholds.shape[0]}")
    t = thresholds.to(device=conf.device, dtype=torch.float32)
    if bool((t[1:] < t[:-1]).any()):
        raise ValueError(f"thresholds must be non-decreasing, got {t.tolist()}")
    c = conf.to(torch.float32)
    if bool(torch.isnan(c).any()):
        raise ValueError("confidence contains NaN")
    # right=True: index i such that t[i-1] <= c < t[i], i.e. the number of thresholds <= c.
    bucket = torch.bucketize(c, t, right=True)  # same shape as conf, in [0, K]
    table = torch.tensor(values, dtype=torch.float32, device=conf.device)  # [K + 1]
    return table[bucket]


def continuous_beta(
    conf: torch.Tensor,
    history_min: float,
    history_max: float,
    beta_min: float,
    beta_max: float,
) -> torch.Tensor:
    """Linear beta: beta_max at history_min, beta_min at history_max, clamped outside; same shape as conf, float32.

    A degenerate range (history_min == history_max, e.g. a one-value history) gives the midpoint.
    """
    if history_max < history_min:
        raise ValueError(f"history_max ({history_max}) must be >= history_min ({history_min})")
    if beta_max < beta_min:
        raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
    c = conf.to(torch.float32)
    if history_max == history_min:
        return torch.full_like(c, 0.5 * (beta_min + beta_max))
    position = ((c - history_min) / (history_max - history_min)).clamp(0.0, 1.0)
    return beta_max - position * (beta_max - beta_min)


def purify(
    clean: torch.Tensor,
    noisy: torch.Tensor,
    beta: torch.Tensor | float,
    space: str = "logits",
    plausibility_gamma: float | None = None,
    penalty: float = 1e4,
) -> torch.Tensor:
    """Purged teacher logits (1 + beta) * a(v) - beta * a(v'), a = logits or log-softmax: [N, V] float32.

    `beta` is a float or [N] per token (expand a per-sample beta [B] with `beta[sample_index]`).
    With `plausibility_gamma`, tokens outside V_head = {w : p(w|v) >= gamma * max p(.|v)} get
    `penalty` subtracted: finite on purpose, since -inf would make a reverse KL infinite.
    """
    _check_rows(clean, "clean")
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy logits {tuple(noisy.shape)} must match clean logits {tuple(clean.shape)}")
    if space not in PURIFY_SPACES:
        raise ValueError(f"purify space must be one of {PURIFY_SPACES}, got {space!r}")
    if not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"plausibility penalty must be finite and >= 0, got {penalty}")
    n = clean.shape[0]
    if isinstance(beta, torch.Tensor):
        if beta.shape not in ((), (n,)):
            raise ValueError(f"beta must be a scalar or [N] = [{n}], got shape {tuple(beta.shape)}")
        b = beta.to(device=clean.device, dtype=torch.float32)
        if b.dim() == 1:
            b = b[:, None]  # [N, 1], broadcast over V
    else:
        b = float(beta)
    z_clean = clean.float()  # [N, V]
    z_noisy = noisy.float()  # [N, V]
    if space == "logprobs":
        a_clean = torch.log_softmax(z_clean, dim=-1)
        a_noisy = torch.log_softmax(z_noisy, dim=-1)
    else:
        a_clean, a_noisy = z_clean, z_noisy
    purified = (1.0 + b) * a_clean - b * a_noisy  # [N, V]
    if plausibility_gamma is None:
        return purified
    if not 0.0 < plausibility_gamma <= 1.0:
        raise ValueError(f"plausibility gamma must be in (0, 1], got {plausibility_gamma}")
    # p(w) >= gamma * max p  <=>  z(w) - max z >= log gamma (the softmax normaliser cancels).
    head = (z_clean - z_clean.amax(dim=-1, keepdim=True)) >= math.log(plausibility_gamma)  # [N, V]
    return torch.where(head, purified, purified - penalty)
