"""Unit tests for seedcli.core.noise: diffusion noise statistics, layouts, dtypes and the VCD schedule."""

from __future__ import annotations

import math

import pytest
import torch

from seedcli.core.noise import add_diffusion_noise, vcd_alpha_bar


def _reference_alpha_bar(step: int, num_steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> float:
    """Independent float64 computation with math only: prod_{i<=step} (1 - beta_i)."""
    product = 1.0
    for i in range(step + 1):
        x = -6.0 + 12.0 * i / (num_steps - 1)
        beta = beta_start + (beta_end - beta_start) / (1.0 + math.exp(-x))
        product *= 1.0 - beta
    return product


def test_noise_statistics_for_constant_image() -> None:
    value, alpha = 2.0, 0.3
    pixels = torch.full((1_000_000,), value)
    noised = add_diffusion_noise(pixels, alpha, generator=torch.Generator().manual_seed(0))
    # E[v'] = sqrt(a) v = 1.0954, std[v'] = sqrt(1 - a) = 0.8367; standard error of the mean ~ 8e-4.
    assert float(noised.mean()) == pytest.approx(math.sqrt(alpha) * value, abs=5e-3)
    assert float(noised.std()) == pytest.approx(math.sqrt(1 - alpha), abs=5e-3)


def test_noise_is_seeded_and_fresh() -> None:
    pixels = torch.zeros(4, 3, 8, 8)
    a = add_diffusion_noise(pixels, 0.5, generator=torch.Generator().manual_seed(1))
    b = add_diffusion_noise(pixels, 0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    first, second = add_diffusion_noise(pixels, 0.5, generator=g), add_diffusion_noise(pixels, 0.5, generator=g)
    assert torch.equal(a, b)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (64, 1176), (5, 3, 8, 8)], ids=["llava", "qwen_patches", "tiles"])
def test_noise_keeps_dtype_shape_and_noises_every_element(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    pixels = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    noised = add_diffusion_noise(pixels, 0.3, generator=torch.Generator().manual_seed(3))
    assert noised.dtype == dtype
    assert noised.shape == pixels.shape
    assert noised.device == pixels.device
    assert bool(torch.isfinite(noised.float()).all())
    # Elementwise noise: essentially every element changes.
    assert float((noised != pixels).float().mean()) > 0.95


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_alpha_one_returns_input(dtype: torch.dtype) -> None:
    pixels = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(4)).to(dtype)
    assert torch.equal(add_diffusion_noise(pixels, 1.0, generator=torch.Generator().manual_seed(5)), pixels)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_alpha_out_of_range_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        add_diffusion_noise(torch.zeros(2, 2), alpha)


def test_integer_pixels_rejected() -> None:
    with pytest.raises(ValueError, match="floating"):
        add_diffusion_noise(torch.zeros(2, 2, dtype=torch.uint8), 0.5)


def test_vcd_alpha_bar_first_step_by_hand() -> None:
    sigmoid_minus_6 = 1.0 / (1.0 + math.exp(6.0))
    expected = 1.0 - 1e-5 - (5e-3 - 1e-5) * sigmoid_minus_6
    assert vcd_alpha_bar(0) == pytest.approx(expected, rel=1e-14)


def test_vcd_alpha_bar_monotone_decreasing() -> None:
    values = [vcd_alpha_bar(k) for k in range(0, 999, 37)] + [vcd_alpha_bar(999)]
    assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))
    assert 0.0 < values[-1] < values[0] < 1.0


@pytest.mark.parametrize("step", [500, 999])
def test_vcd_alpha_bar_against_float64_reference(step: int) -> None:
    assert vcd_alpha_bar(step) == pytest.approx(_reference_alpha_bar(step), rel=1e-12)


def test_vcd_alpha_bar_validates_step() -> None:
    for bad in (-1, 1000):
        with pytest.raises(ValueError, match="step"):
            vcd_alpha_bar(bad)
