"""Isolate: diffusion-style noise on normalised pixel tensors (docs/protocols.md, SEED: isolate).

The noised image v' = sqrt(a) * v + sqrt(1 - a) * eps destroys visual evidence while keeping the
tensor's statistics, so the model's prediction on v' exposes its language prior.
"""

from __future__ import annotations

import math

import torch


def vcd_alpha_bar(
    step: int,
    num_steps: int = 1000,
    beta_start: float = 1e-5,
    beta_end: float = 5e-3,
) -> float:
    """alpha_bar at `step` of VCD's sigmoid schedule: cumprod(1 - betas)[step], in float64."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 <= step < num_steps:
        raise ValueError(f"noise step must be in [0, {num_steps}), got {step}")
    if not 0.0 <= beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 <= beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    # float64 so that the product over 1000 factors keeps ~15 digits.
    grid = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    betas = torch.sigmoid(grid) * (beta_end - beta_start) + beta_start  # [num_steps]
    alpha_bars = torch.cumprod(1.0 - betas, dim=0)  # [num_steps]
    return float(alpha_bars[step])


def add_diffusion_noise(
    pixels: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """v' = sqrt(alpha) * v + sqrt(1 - alpha) * eps, eps ~ N(0, I); same shape, dtype and device as v.

    Elementwise, so every layout works: (B, 3, H, W) images, (P, D) flattened patches, (T, 3, H, W)
    tiles. eps is drawn in float32 (on the generator's device when a generator is given, so a CPU
    generator gives the same noise for a CUDA tensor) and the sum is computed in at least float32.
    """
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a floating-point tensor, got {pixels.dtype}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"noise alpha must be in (0, 1], got {alpha}")
    draw_device = generator.device if generator is not None else pixels.device
    eps = torch.randn(pixels.shape, generator=generator, dtype=torch.float32, device=draw_device)
    compute_dtype = torch.promote_types(pixels.dtype, torch.float32)
    eps = eps.to(device=pixels.device, dtype=compute_dtype)
    noised = math.sqrt(alpha) * pixels.to(compute_dtype) + math.sqrt(1.0 - alpha) * eps
    return noised.to(pixels.dtype)
