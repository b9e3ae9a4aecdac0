"""Choice tuples shared by the configs and the code that acts on them (torch-free, imports nothing).

The config fields offer exactly these values (`seedcli/config/*`), and core and models check against
the same tuples, so a new choice is added once. A unit test asserts that every config choice tuple
equals its constant here.
"""

from __future__ import annotations

DIVERGENCE_KINDS = ("reverse_kl", "forward_kl", "jsd")
"""Distillation divergences of `losses.divergence_sum`."""
CONFIDENCE_KINDS = ("maxprob", "entropy")
"""Per-token confidence measures of `purify.token_confidence`."""
PURIFY_SPACES = ("logits", "logprobs")
"""Spaces in which `purify.purify` subtracts the noisy logits."""
TEACHER_CACHE_MODES = ("clean", "both")
"""What the teacher cache stores; the config adds "off"."""
WEIGHT_DTYPES = ("bf16", "fp16", "fp32")
"""Explicit weight dtypes (merge offers them next to "base")."""
DTYPES = ("auto", *WEIGHT_DTYPES)
"""Weight and compute dtypes of `models.loading.load`."""
DEVICES = ("auto", "cpu", "cuda")
"""Devices of `models.loading.load`."""
QUANTIZATION = ("none", "4bit", "8bit")
"""Base-model quantization of `models.loading.load` (bitsandbytes)."""
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
"""Attention kernels passed to transformers."""
