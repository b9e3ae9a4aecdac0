"""Seeds derived from names and positions with sha256, so they never depend on the Python version.

Python's built-in `hash()` of a tuple changed between CPython versions and differs on PyPy; a run
resumed under another interpreter would draw other noise. `derive_seed` is the one scheme used
everywhere (training noise and dropout, evaluation sampling). Torch-free.
"""

from __future__ import annotations

import hashlib

SEED_BYTES = 8


def derive_seed(*parts: int | str | bytes, width: int = SEED_BYTES) -> int:
    """A `width`-byte seed from sha256 over `parts`: text and numbers as `part:`, bytes as they are."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else f"{part}:".encode())
    return int.from_bytes(digest.digest()[:width], "little")


def torch_seed(*parts: int | str | bytes) -> int:
    """A seed for `torch.Generator.manual_seed` and `torch.manual_seed` (63 bits, never negative)."""
    return derive_seed(*parts) & 0x7FFF_FFFF_FFFF_FFFF
