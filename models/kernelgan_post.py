"""What KernelGAN's raw kernel becomes: the reference's post-processing, and the check that names
a raw kernel that is not a blur at all (the product retries those, then falls back to bicubic).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from realsr.models.kernels import centre_kernel, consensus_kernel


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


def x4_base(raw: np.ndarray) -> np.ndarray:
    """The x2 kernel the analytic x4 kernel is composed from: G's raw kernel clipped to >= 0 and
    centred, without the soft threshold. Composing squares the kernel's support, so a threshold
    applied before it cuts the tails twice: on the benchmark's x4 cases the thresholded base gave
    kernels too narrow for strong blur (LR PSNR 39.6 against 40.7 dB, BENCHMARKS.md). At x2 the
    threshold stays (there it measures better: 42.9 against 41.8 dB)."""
    return finalize_kernel(raw, n=0)


def seed_spread(estimate, n_filtering: int) -> float | None:
    """How far one image's seeds disagree: the mean total variation (0..1) between each seed's
    post-processed kernel and their consensus; None with fewer than two good seeds."""
    ok = [e for e in estimate.runs if e.ok]
    if len(ok) < 2:
        return None
    mid = centre_kernel(estimate.kernel)
    return float(np.mean([0.5 * np.abs(centre_kernel(finalize_kernel(e.raw, n_filtering)) - mid).sum() for e in ok]))


def consensus_estimate(estimates: list, n_filtering: int):
    """One image's `KernelEstimate`s from several seeds as one: the geometric median of their
    post-processed kernels (`consensus_kernel`), centred.

    GAN training is chaotic: one seed's kernel for a strongly blurred photo can come out far too
    narrow or turned, and float rounding alone (another thread count) gives another run. The
    geometric median follows the seeds that agree and is not dragged by the one that strayed
    (the mean is: BENCHMARKS.md). `raw` becomes the geometric median of the seeds' clipped,
    centred raw kernels, so the x4 kernel composes their consensus too. Failed seeds have no
    say; with none left the first failure is returned."""
    ok = [e for e in estimates if e.ok]
    if not ok:
        return estimates[0]
    if len(ok) == 1:
        return ok[0]
    kernel = consensus_kernel([finalize_kernel(e.raw, n_filtering) for e in ok])
    raw = consensus_kernel([finalize_kernel(e.raw, 0) for e in ok])
    return replace(ok[0], kernel=kernel, raw=raw, iterations=sum(e.iterations for e in ok), runs=tuple(estimates))
