"""Where KernelGAN looks: crops drawn with probability ~ the image's strongest gradients.

As the reference's DataGenerator (data.py, util.py): a loss map from the luma gradients (the
top 3 % of |d/dx| and of |d/dy| as masks, plus the gradient magnitude, each normalised to sum 1,
then a 5 px box blur), turned into a probability over crop centres by a box blur of half a crop
and a zero border half a crop wide. D's map comes from the image, G's from its bicubic x2
downscale brought back to full size by pixel repetition; corners are even.
"""

from __future__ import annotations

import cv2
import numpy as np

from realsr.models.degradation import clean_up


class CropSampler:
    """Top-left corners of G's and D's crops for one image.

    Args:
        image: float RGB in [0, 1], HWC.
        g_crop, d_crop: the crop sizes (the reference: 64, and G's output size, 26).
        rng: the image's own generator (all draws are made up front, G's first).
    """

    def __init__(self, image: np.ndarray, g_crop: int, d_crop: int, rng: np.random.Generator):
        h, w = image.shape[:2]
        self.h, self.w, self.rng = h, w, rng
        self.sizes = {True: g_crop, False: d_crop}
        small = gradient_map(clean_up(image, 2))
        small = np.repeat(np.repeat(small, 2, 0), 2, 1)[:h, :w]
        small = np.pad(small, ((0, h - small.shape[0]), (0, w - small.shape[1])), mode="edge")
        self.p = {True: probability(small, g_crop), False: probability(gradient_map(image), d_crop)}

    def corners(self, n: int, for_g: bool) -> np.ndarray:
        """(n, 2) even (top, left) corners of crops of G's or D's size."""
        size = self.sizes[for_g]
        centers = self.rng.choice(self.h * self.w, size=n, p=self.p[for_g])
        rows, cols = centers // self.w, centers % self.w
        top = np.clip(rows - size // 2, 0, self.h - size)
        left = np.clip(cols - size // 2, 0, self.w - size)
        return np.stack([top - top % 2, left - left % 2], 1)


def gradient_map(image: np.ndarray, window: int = 5, percent: float = 0.97) -> np.ndarray:
    """The reference's create_gradient_map: mean 1, high where the luma has its strongest edges."""
    gray = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
    gy, gx = np.gradient(gray)
    terms = [_top_share(_zero_border(np.abs(gx), window), percent), _top_share(_zero_border(np.abs(gy), window), percent)]
    terms.append(_zero_border(np.hypot(gx, gy), window))  # the reference adds the unclipped magnitude
    comb = sum(t / t.sum() for t in terms if t.sum() > 0)
    if np.isscalar(comb):  # a flat image: every centre alike
        return np.ones_like(gray)
    loss_map = _box_sum(comb, window) / window**2
    return loss_map / max(loss_map.mean(), 1e-300)


def probability(loss_map: np.ndarray, crop: int) -> np.ndarray:
    """Flattened distribution over crop centres: the map's mean over half a crop, border zeroed."""
    half = max(1, crop // 2)
    blurred = _zero_border(np.maximum(_box_sum(loss_map, half), 0.0) / half**2, half)
    flat = blurred.ravel()
    total = flat.sum()
    return flat / total if total > 0 else np.full(flat.size, 1.0 / flat.size)


def _top_share(m: np.ndarray, percent: float) -> np.ndarray:
    """The reference's clip_extreme: ~0 below the `percent` quantile, a small constant above it."""
    s = np.sort(m.ravel())
    pivot = min(int(percent * s.size), s.size - 2)
    lo = s[pivot]
    hi = s[pivot + 1] if s[pivot + 1] > lo else lo + 1e-5
    return np.clip(m, lo, hi) - lo


def _zero_border(m: np.ndarray, edge: int) -> np.ndarray:
    out = np.zeros_like(m)
    out[edge:-edge, edge:-edge] = m[edge:-edge, edge:-edge]
    return out


def _box_sum(m: np.ndarray, size: int) -> np.ndarray:
    """Sum over a size x size box, zeros outside (scipy's convolve2d 'same' with a box)."""
    return cv2.filter2D(m, -1, np.ones((size, size)), borderType=cv2.BORDER_CONSTANT)
