"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik 2013), as BasicSR 1.4.2
computes it (`basicsr/metrics/niqe.py`, which matches the authors' MATLAB code to 1e-6).

No reference image: NIQE is the distance (Eq. 10) between a multivariate Gaussian fitted to
natural-scene statistics of the image's 96x96 blocks and the one fitted to pristine photos (the
released `niqe_pris_params.npz`, weight `niqe` in storage.weights). Lower is more natural.
Per block and scale, 18 features: a generalized Gaussian fit (shape, spread) of the MSCN
coefficients (Eq. 1, a 7x7 Gaussian window), and an asymmetric one (shape, mean, left and right
spread; Eq. 7-8) of their products with the 4 neighbours; at the full and the half scale: 36.
As BasicSR: the Y of MATLAB's rgb2ycbcr rounded to integers, `crop_border` off each side, the
image cut to whole blocks (no overlap), the half scale by MATLAB's antialiased bicubic.
Blocks are processed all at once (N, b, b); the AGGD shape is looked up on BasicSR's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realsr.models.degradation import clean_up
from realsr.models.metrics import rgb_to_y

BLOCK = 96  # the block side the pristine model was fitted with (the authors' recommendation)
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, two diagonals
_gamma = np.vectorize(math.gamma)
ALPHA_GRID = np.arange(0.2, 10.001, 0.001)  # BasicSR's search grid for the GGD shape
R_GRID = _gamma(2 / ALPHA_GRID) ** 2 / (_gamma(1 / ALPHA_GRID) * _gamma(3 / ALPHA_GRID))  # strictly increasing


@dataclass(frozen=True)
class Pristine:
    """The MVG of pristine photos: mean (36,), covariance (36, 36), and the 7x7 window of Eq. 1."""

    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray

    @classmethod
    def load(cls, path: Path | str) -> "Pristine":
        """From BasicSR's `niqe_pris_params.npz` (plain arrays: no pickle is allowed)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                p = cls(f["mu_pris_param"].reshape(-1).astype(np.float64), f["cov_pris_param"].astype(np.float64), f["gaussian_window"].astype(np.float64))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a NIQE pristine model ({type(e).__name__}: {e})") from None
        if p.mu.shape != (36,) or p.cov.shape != (36, 36) or p.window.ndim != 2:
            raise ValueError(f"{path}: NIQE pristine model of shapes {p.mu.shape}, {p.cov.shape}, {p.window.shape}; expected (36,), (36, 36), 2-D")
        return p


def aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalized Gaussian fit of each row of `x` (N, M): shape alpha, left and right
    spread beta (Eq. 7, moment matching). A row with no negative or no positive value gives NaN
    spreads, as in BasicSR (its mean of an empty selection)."""
    x = x.astype(np.float64)
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((sq * (x < 0)).sum(1) / (x < 0).sum(1))
        right = np.sqrt((sq * (x > 0)).sum(1) / (x > 0).sum(1))
        g = left / right
        r = np.abs(x).mean(1) ** 2 / sq.mean(1)
        r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    # argmin over the grid of (R_GRID - r_norm)^2, first index on ties and on NaN, as BasicSR's
    i = np.clip(np.searchsorted(R_GRID, r_norm), 1, len(R_GRID) - 1)
    i = np.where((R_GRID[i - 1] - r_norm) ** 2 <= (R_GRID[i] - r_norm) ** 2, i - 1, i)
    i = np.where(np.isnan(r_norm), 0, i)
    alpha = ALPHA_GRID[i]
    k = np.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    return alpha, left * k, right * k


def block_features(blocks: np.ndarray) -> np.ndarray:
    """The 18 features of each MSCN block (N, b, b) -> (N, 18)."""
    n = len(blocks)
    alpha, bl, br = aggd(blocks.reshape(n, -1))
    feats = [alpha, (bl + br) / 2]
    for shift in SHIFTS:  # products of neighbours (the block wraps around, as BasicSR's np.roll)
        prod = blocks * np.roll(blocks, shift, axis=(1, 2))
        alpha, bl, br = aggd(prod.reshape(n, -1))
        mean = (br - bl) * _gamma(2 / alpha) / _gamma(1 / alpha)  # Eq. 8
        feats += [alpha, mean, bl, br]
    return np.stack(feats, 1)


def _blocks(img: np.ndarray, b: int) -> np.ndarray:
    """(H, W) cut into non-overlapping b x b blocks -> (N, b, b)."""
    nh, nw = img.shape[0] // b, img.shape[1] // b
    return img[: nh * b, : nw * b].reshape(nh, b, nw, b).transpose(0, 2, 1, 3).reshape(-1, b, b)


def _local_moments(img: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and deviation under `window` (edges replicated), in single precision as BasicSR and
    MATLAB's `niqe` compute them: the variance E[x^2] - mu^2 cancels in float32, and flat regions'
    features follow that rounding (up to 2% of the score on Set5's bird if done in float64)."""
    f = lambda a: cv2.filter2D(a.astype(np.float64), cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE).astype(np.float32)  # noqa: E731
    mu = f(img)
    return mu, np.sqrt(np.abs(f(img * img) - mu * mu))


def features(y: np.ndarray, window: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """The 36 features of each whole block of a luma plane (H, W) on the 0-255 scale -> (N, 36)."""
    nh, nw = y.shape[0] // block, y.shape[1] // block
    if nh * nw < 2:  # one block has no covariance: BasicSR's pinv fails on NaN there
        raise ValueError(f"NIQE needs at least two {block}x{block} blocks; the image is {y.shape[1]}x{y.shape[0]} px (after the border crop)")
    img = y[: nh * block, : nw * block].astype(np.float32)
    feats = []
    for scale in (1, 2):
        mu, sigma = _local_moments(img, window)
        mscn = (img - mu) / (sigma + 1)  # Eq. 1
        feats.append(block_features(_blocks(mscn, block // scale)))
        if scale == 1:
            img = clean_up(img / np.float32(255), 2) * np.float32(255)
    return np.concatenate(feats, 1)


def distance(f: np.ndarray, pristine: Pristine) -> float:
    """Eq. 10: the pristine MVG against the one fitted to the blocks' features (N, 36); blocks with a
    NaN feature count in the mean but not in the covariance (as BasicSR's nanmean and nancov)."""
    complete = f[~np.isnan(f).any(1)]
    if len(complete) < 2:
        raise ValueError(f"NIQE is undefined here: only {len(complete)} of {len(f)} blocks have values on both sides of their local mean (a flat image?)")
    d = pristine.mu - np.nanmean(f, 0)
    cov = np.cov(complete, rowvar=False)
    return float(np.sqrt(d @ np.linalg.pinv((pristine.cov + cov) / 2) @ d))


def niqe(img: np.ndarray, pristine: Pristine, crop_border: int = 0) -> float:
    """NIQE of an RGB image in [0, 1] (HWC): on its Y, rounded to integer levels, `crop_border` off each side."""
    y = np.round(rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64) * 255.0)
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return distance(features(y, pristine.window), pristine)
