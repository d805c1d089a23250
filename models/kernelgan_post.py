"""What KernelGAN's raw kernel becomes: the reference's post-processing, and the check that names
a raw kernel that is not a blur at all (the product retries those, then falls back to bicubic).
"""

from __future__ import annotations

import numpy as np

from models.kernels import centre_kernel


def collapse(raw: np.ndarray) -> str | None:
    """Why G's raw kernel is not a blur, or None: its sum far from 1 (the sum-to-one term lost to
    the GAN), or much of its mass negative (G learnt an inverted or ringing filter)."""
    pos, neg = float(raw.clip(0).sum()), float(-raw.clip(None, 0).sum())
    if abs(raw.sum() - 1) > 0.1 or neg > 0.25 * (pos + neg):
        return f"G's kernel collapsed (sum {raw.sum():.3f}, {100 * neg / max(pos + neg, 1e-30):.0f}% of its mass negative)"
    return None


def finalize_kernel(raw: np.ndarray, n: int = 40) -> np.ndarray:
    """The reference's post-processing (zeroize_negligible_val), then centring.

    A soft threshold: every tap loses 0.75 x the (n+1)-th largest tap and stays >= 0, which
    removes the tail and keeps the shape of the rest. Centring moves the centre of mass to the
    middle pixel (bilinear sub-pixel shift, size kept).
    """
    k = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(k)):
        raise ValueError("the kernel has non-finite taps")
    if n and n < k.size:
        k = np.clip(k - 0.75 * np.sort(k.ravel())[-n - 1], 0, None)
    k = np.clip(k, 0, None)
    if k.sum() <= 0:
        raise ValueError("no positive mass")
    return centre_kernel(k / k.sum())
