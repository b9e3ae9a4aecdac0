"""Every speed optimisation keeps the results of the plain path (tiny models, a few steps).

The plain path: joint teacher batch, unchunked loss, no gradient checkpointing, no teacher cache.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from seedcli.config.distill import DistillConfig
from seedcli.core import distill as engine
from seedcli.core import losses, purify, teacher_cache
from seedcli.reporting import NullReporter
from tests.smoke.test_distill import adapter_tensors, config, metrics, write_train_data

pytestmark = pytest.mark.smoke

KEYS = ("loss", "kl", "ce", "beta", "confidence", "grad_norm")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_train_data(tmp_path_factory.mktemp("opt-data"), n=8)


def _plain(data: Path, out: Path, **overrides) -> DistillConfig:
    return config(data, out, max_steps=2, batch_size=2, grad_accum=2, lora_dropout=0.0, **overrides)


def _spy_purify(monkeypatch) -> list[torch.Tensor]:
    """Record every purified target the loop computes."""
    seen: list[torch.Tensor] = []
    original = purify.purify

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(engine.purify, "purify", spy)
    return seen


@pytest.fixture(scope="module")
def plain_run(data_dir: Path, tmp_path_factory) -> tuple[Path, list[torch.Tensor]]:
    """The plain path, run once for the module, with its purified targets."""
    out = tmp_path_factory.mktemp("plain") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        targets = _spy_purify(monkeypatch)
        engine.distill(_plain(data_dir, out), NullReporter())
    return out, targets


def _assert_same_run(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) == 2
    for ra, rb in zip(ma, mb, strict=True):
        for key in KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=rtol, abs=atol), key
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=rtol, atol=atol)


def test_joint_teacher_batch_equals_two_separate_passes(plain_run, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    plain, plain_targets = plain_run
    targets = _spy_purify(monkeypatch)
    engine.distill(_plain(data_dir, tmp_path / "separate", teacher_batching="separate"), NullReporter())
    # sanity check + 2 steps x 2 micro-batches
    assert len(targets) == len(plain_targets) == 5
    for joint, separate in zip(plain_targets, targets, strict=True):
        torch.testing.assert_close(joint, separate, rtol=1e-5, atol=1e-5)
    assert max(float(t.abs().max()) for t in targets) > 0.1  # real logits, not an empty comparison
    _assert_same_run(plain, tmp_path / "separate")


def test_chunked_loss_equals_unchunked_inside_the_loop(plain_run, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    plain, _ = plain_run
    calls = []
    original = losses.chunked

    def spy(fn, *tensors, chunk, **kwargs):
        calls.append((tensors[0].shape[0], chunk))
        return original(fn, *tensors, chunk=chunk, **kwargs)

    monkeypatch.setattr(losses, "chunked", spy)
    engine.distill(_plain(data_dir, tmp_path / "chunked", loss_chunk=3), NullReporter())
    assert calls and any(rows > chunk for rows, chunk in calls), "the loss must really be split into chunks"
    _assert_same_run(plain, tmp_path / "chunked")


def test_gradient_checkpointing_on_equals_off(plain_run, data_dir: Path, tmp_path: Path) -> None:
    plain, _ = plain_run
    summary = engine.distill(_plain(data_dir, tmp_path / "gc", gradient_checkpointing=True), NullReporter())
    assert summary["final"]["last"]["step"] == 2
    _assert_same_run(plain, tmp_path / "gc")
    lora_b = [v for k, v in adapter_tensors(tmp_path / "gc").items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "two steps must have moved the adapter"


# ----------------------------------------------------------------------------- teacher cache (functions)


def _peaked_logits(rows: int, vocab: int, seed: int, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def test_top_k_with_k_at_least_vocab_reconstructs_the_rows_exactly() -> None:
    clean, noisy = _peaked_logits(7, 50, 0), _peaked_logits(7, 50, 1)
    entry = teacher_cache.compress(clean, noisy, k=50)
    c, z = teacher_cache.reconstruct(entry)
    assert torch.equal(c, clean) and z is not None and torch.equal(z, noisy)
    bf16 = clean.bfloat16()
    c16, _ = teacher_cache.reconstruct(teacher_cache.compress(bf16, None, k=64))
    assert torch.equal(c16, bf16.float()), "bf16 logits stored as bf16 lose nothing"


def test_reconstruction_keeps_lse_head_and_tail_mass() -> None:
    clean = _peaked_logits(5, 40, 2)
    entry = teacher_cache.compress(clean, None, k=6)
    rebuilt, _ = teacher_cache.reconstruct(entry)
    torch.testing.assert_close(torch.logsumexp(rebuilt, -1), torch.logsumexp(clean, -1), rtol=0, atol=1e-5)
    top = clean.topk(6, -1).indices
    torch.testing.assert_close(rebuilt.gather(1, top), clean.gather(1, top), rtol=0, atol=0)
    p, p_hat = clean.double().softmax(-1), rebuilt.double().softmax(-1)
    mask = teacher_cache.covered_mask(entry)
    torch.testing.assert_close((p_hat * ~mask).sum(-1), (p * ~mask).sum(-1), rtol=1e-5, atol=1e-6)
    # The tail is uniform: every uncovered id of a row has the same logit.
    tail = rebuilt.masked_fill(mask, float("nan"))
    spread = torch.nan_to_num(tail, nan=-1e9).amax(-1) - torch.nan_to_num(tail, nan=1e9).amin(-1)
    assert float(spread.abs().max()) < 1e-5


def _kl_rows(student: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """Float64 reference: T^2 KL(s || q) per row."""
    log_s = torch.log_softmax(student.double() / t, -1)
    log_q = torch.log_softmax(target.double() / t, -1)
    return t * t * (log_s.exp() * (log_s - log_q)).sum(-1)


@pytest.mark.parametrize("space,gamma", [("logits", None), ("logprobs", None), ("logits", 0.1)])
def test_cached_kl_is_exact_at_full_k_and_within_the_documented_bound_below(space: str, gamma: float | None) -> None:
    t, vocab, rows = 2.0, 64, 12
    clean, noisy, student = (
        _peaked_logits(rows, vocab, 3),
        _peaked_logits(rows, vocab, 4),
        _peaked_logits(rows, vocab, 5, scale=2.0),
    )
    beta = torch.linspace(0.4, 1.1, rows)
    exact = purify.purify(clean, noisy, beta, space, gamma, 30.0)
    labels = clean.argmax(-1)

    full = teacher_cache.compress(clean, noisy, k=vocab)
    c, z = teacher_cache.reconstruct(full)
    cached = purify.purify(c, z, beta, space, gamma, 30.0)
    a = losses.seed_loss(student, exact, labels, temperature=t, distill_weight=0.7, kind="reverse_kl", num_tokens=rows)
    b = losses.seed_loss(student, cached, labels, temperature=t, distill_weight=0.7, kind="reverse_kl", num_tokens=rows)
    assert float(a.total) == float(b.total) and float(a.kl) == float(b.kl)

    bounds = []
    for k in (2, 8, 24):
        entry = teacher_cache.compress(clean, noisy, k=k)
        c, z = teacher_cache.reconstruct(entry)
        approx = purify.purify(c, z, beta, space, gamma, 30.0)
        covered = teacher_cache.covered_mask(entry)
        torch.testing.assert_close(approx[covered], exact[covered], rtol=1e-5, atol=1e-4)  # exact on S
        gap = (_kl_rows(student, approx, t) - _kl_rows(student, exact, t)).abs()
        bound = teacher_cache.reverse_kl_gap_bound(student, exact, approx, covered, t)
        assert bool((gap <= bound + 1e-6).all()), (k, (gap - bound).max())
        assert float(gap.max()) > 1e-4, "with k < V the cache is approximate: the test must see a gap"
        bounds.append(float(bound.mean()))
    assert bounds[0] > bounds[1] > bounds[2], bounds


def test_identity_behind_the_bound_holds_exactly() -> None:
    t, rows, vocab = 2.0, 6, 30
    clean, noisy, student = (
        _peaked_logits(rows, vocab, 6),
        _peaked_logits(rows, vocab, 7),
        _peaked_logits(rows, vocab, 8),
    )
    exact = purify.purify(clean, noisy, 0.8)
    entry = teacher_cache.compress(clean, noisy, k=4)
    c, z = teacher_cache.reconstruct(entry)
    approx = purify.purify(c, z, 0.8)
    tail = ~teacher_cache.covered_mask(entry)
    s = torch.softmax(student.double() / t, -1)
    identity = (torch.logsumexp(approx.double() / t, -1) - torch.logsumexp(exact.double() / t, -1)) + (
        s * (exact.double() - approx.double()) * tail
    ).sum(-1) / t
    gap = (_kl_rows(student, approx, t) - _kl_rows(student, exact, t)) / (t * t)
    torch.testing.assert_close(gap, identity, rtol=1e-6, atol=1e-8)


def test_maxprob_confidence_is_exact_for_any_k() -> None:
    clean = _peaked_logits(9, 80, 9)
    rebuilt, _ = teacher_cache.reconstruct(teacher_cache.compress(clean, None, k=1))
    index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    torch.testing.assert_close(
        purify.sample_confidence(rebuilt, index, 3), purify.sample_confidence(clean, index, 3), rtol=1e-6, atol=1e-5
    )


def test_cache_files_round_trip_and_refuse_a_different_record(tmp_path: Path) -> None:
    cache = teacher_cache.TeacherCache(root=tmp_path, k=5, mode="both")
    clean, noisy = _peaked_logits(4, 20, 10).bfloat16(), _peaked_logits(4, 20, 11).bfloat16()
    cache.put(1, 7, "rec-7", clean, noisy)
    entry = cache.get(1, 7, "rec-7", rows=4)
    assert entry is not None and entry.clean.dtype == torch.bfloat16 and entry.indices.shape == (4, 10)
    expected = teacher_cache.compress(clean, noisy, k=5)
    assert torch.equal(entry.clean, expected.clean) and torch.equal(entry.noisy, expected.noisy)
    assert cache.get(1, 7, "rec-8", rows=4) is None
    assert cache.get(1, 7, "rec-7", rows=3) is None
    assert cache.get(2, 7, "rec-7", rows=4) is None
    assert teacher_cache.TeacherCache(root=tmp_path, k=6, mode="both").get(1, 7, "rec-7", rows=4) is None
    only_clean = teacher_cache.TeacherCache(root=tmp_path, k=5, mode="clean")
    only_clean.put(1, 8, "rec-8", clean, noisy)
    got = only_clean.get(1, 8, "rec-8", rows=4)
    assert got is not None and got.noisy is None


def test_micro_batch_store_and_load_keep_sample_order(tmp_path: Path) -> None:
    cache = teacher_cache.TeacherCache(root=tmp_path, k=100, mode="both")
    sample_index = torch.tensor([0, 0, 1, 1, 1, 2])
    clean, noisy = _peaked_logits(6, 30, 12), _peaked_logits(6, 30, 13)
    cache.store_micro(1, [5, 2, 9], ["a", "b", "c"], sample_index, clean, noisy)
    # A later micro-batch holds the same samples in another order.
    loaded = cache.load_micro(1, [9, 5, 2], ["c", "a", "b"], [1, 2, 3], "cpu")
    assert loaded is not None
    order = torch.tensor([5, 0, 1, 2, 3, 4])
    assert torch.equal(loaded[0], clean[order]) and torch.equal(loaded[1], noisy[order])
    assert cache.load_micro(1, [9, 4], ["c", "d"], [1, 1], "cpu") is None


def test_size_estimate() -> None:
    # k = 64, both: 128 int32 ids + 2 x (128 bf16 logits + one float32 lse) per row.
    assert teacher_cache.bytes_per_row(64, "both") == 128 * 4 + 2 * (128 * 2 + 4)
    assert (
        teacher_cache.log_size_note(150, 50_000, 64, "both") == f"{1032 * 150 * 50_000 / 1e9:.1f} GB for 50000 samples"
    )
    assert math.isclose(teacher_cache.bytes_per_row(64, "clean"), 64 * 4 + 64 * 2 + 4)


# ----------------------------------------------------------------------------- teacher cache (in the loop)

HAS_CACHE = "teacher_cache" in {f.name for f in fields(DistillConfig)}
needs_cache_flag = pytest.mark.skipif(not HAS_CACHE, reason="the loop has no --teacher-cache yet")


def _cache_cfg(data: Path, out: Path, **overrides) -> DistillConfig:
    # 8 records, window 4: 2 steps per epoch, 2 epochs. Epoch 2 batches other samples together than
    # epoch 1 (other padding), so uncached teacher logits differ from cached ones at float rounding:
    # the loop comparisons use the tolerance of test_distill's batch-invariance test.
    base = dict(max_steps=None, epochs=2, batch_size=2, grad_accum=2, lora_dropout=0.0)
    base.update(overrides)
    return config(data, out, **base)


def _count_teacher_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = engine._teacher

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_teacher", spy)
    return calls


def _frozen_noise(monkeypatch) -> None:
    """Noise keyed by (seed, round, sample) only: the same noise for a sample in every epoch."""
    monkeypatch.setattr(
        engine,
        "_noise_generator",
        lambda cfg, round_index, step, sample: torch.Generator().manual_seed(
            hash((cfg.seed, round_index, sample)) & 0x7FFF_FFFF
        ),
    )


@needs_cache_flag
def test_clean_cache_at_full_k_gives_the_uncached_epoch_2(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    engine.distill(_cache_cfg(data_dir, tmp_path / "plain"), NullReporter())
    calls = _count_teacher_calls(monkeypatch)
    engine.distill(
        _cache_cfg(data_dir, tmp_path / "cached", teacher_cache="clean", teacher_cache_k=10**6), NullReporter()
    )
    assert len(calls) == 1 + 2 * 2  # sanity check + epoch 1 (2 steps x 2 micro-batches); epoch 2 from the cache
    assert len(list((tmp_path / "cached").rglob("*.safetensors"))) >= 8
    ma, mb = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [1, 2, 3, 4]
    for ra, rb in zip(ma, mb, strict=True):
        for key in KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)


@needs_cache_flag
def test_both_cache_at_full_k_equals_the_uncached_loop_with_the_same_noise(
    data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _frozen_noise(monkeypatch)
    engine.distill(_cache_cfg(data_dir, tmp_path / "plain"), NullReporter())
    calls = _count_teacher_calls(monkeypatch)
    engine.distill(
        _cache_cfg(data_dir, tmp_path / "cached", teacher_cache="both", teacher_cache_k=10**6), NullReporter()
    )
    assert len(calls) == 1 + 2 * 2
    for ra, rb in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "cached"), strict=True):
        for key in KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    ta, tb = adapter_tensors(tmp_path / "plain"), adapter_tensors(tmp_path / "cached")
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=1e-6)


@needs_cache_flag
def test_both_cache_freezes_the_noise_which_changes_epoch_2(data_dir: Path, tmp_path: Path) -> None:
    """The documented deviation: with fresh noise per step, epoch 2 differs from the cached one."""
    engine.distill(_cache_cfg(data_dir, tmp_path / "plain"), NullReporter())
    engine.distill(
        _cache_cfg(data_dir, tmp_path / "cached", teacher_cache="both", teacher_cache_k=10**6), NullReporter()
    )
    ma, mb = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    for ra, rb in zip(ma[:2], mb[:2], strict=True):
        assert ra["kl"] == pytest.approx(rb["kl"], rel=1e-5)
    assert all(math.isfinite(r["kl"]) for r in mb)
    assert any(abs(ra["kl"] - rb["kl"]) > 1e-6 * abs(ra["kl"]) for ra, rb in zip(ma[2:], mb[2:], strict=True))


@needs_cache_flag
def test_small_k_cache_in_the_loop_is_approximate_and_finite(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """k = 4: epoch 1 is untouched, epoch 2 differs (the bound itself is tested on full logits above)."""
    _frozen_noise(monkeypatch)
    engine.distill(_cache_cfg(data_dir, tmp_path / "plain"), NullReporter())
    engine.distill(_cache_cfg(data_dir, tmp_path / "cached", teacher_cache="both", teacher_cache_k=4), NullReporter())
    ma, mb = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    for ra, rb in zip(ma[:2], mb[:2], strict=True):
        assert ra["kl"] == pytest.approx(rb["kl"], rel=1e-5)
    assert ma[2]["kl"] != pytest.approx(mb[2]["kl"], rel=1e-6), "k = 4 of a large vocabulary must be approximate"
    assert math.isfinite(mb[2]["kl"]) and math.isfinite(mb[3]["kl"])
