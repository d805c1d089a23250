"""The RealSR degradation model on float32 RGB images in [0, 1], HWC.

clean-up:   HR = imresize(source, 1/f), MATLAB bicubic with antialias (removes sensor noise)
degrade:    LR = (HR correlated with k) sampled every s pixels on the pixel-centre grid
injection:  LR = clip(LR + (n - mean(n)), 0, 1), n a crop of a real noise patch
"""

from __future__ import annotations

import cv2
import numpy as np

from realsr.models.kernels import aligned_kernel, cubic


def _imresize_taps(factor: int) -> np.ndarray:
    """1-D weights of MATLAB's antialiased bicubic for an integer downscale (4f or 4f-1 taps)."""
    length = 4 * factor if factor % 2 == 0 else 4 * factor - 1
    d = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    w = cubic(d / factor)
    return (w / w.sum()).astype(np.float32)


def clean_up(image: np.ndarray, factor: int) -> np.ndarray:
    """Downscale by an integer factor exactly as MATLAB's imresize(img, 1/f, 'bicubic').

    Output size is floor(size / f) (MATLAB rounds up; the partial last pixel is dropped here
    because the pipeline crops to a multiple of the SR scale next anyway).
    """
    if factor == 1:
        return image.astype(np.float32, copy=True)
    h, w = image.shape[:2]
    if h < factor or w < factor:
        raise ValueError(f"image {w}x{h} is smaller than the clean-up factor {factor}")
    taps = _imresize_taps(factor)
    filtered = cv2.sepFilter2D(image.astype(np.float32), -1, taps, taps, borderType=cv2.BORDER_REFLECT)
    o = factor // 2  # row of `filtered` under the first output pixel's centre
    return np.ascontiguousarray(filtered[o::factor, o::factor][: h // factor, : w // factor])


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Crop bottom/right so both sides are a multiple of `multiple` (as RealSR's create_*_dataset)."""
    h, w = image.shape[:2]
    return image[: h - h % multiple, : w - w % multiple]


def degrade(hr: np.ndarray, kernel: np.ndarray, scale: int) -> np.ndarray:
    """Blur with `kernel` and subsample by `scale`; HR sides must be multiples of `scale`."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"HR {w}x{h} is not a multiple of the scale {scale}")
    k, anchor = aligned_kernel(kernel, scale)
    filtered = cv2.filter2D(hr.astype(np.float32), -1, k.astype(np.float32), anchor=(anchor, anchor), borderType=cv2.BORDER_REFLECT)
    if filtered.ndim == 2:
        filtered = filtered[..., None]
    o = (scale - 1) // 2
    return np.ascontiguousarray(filtered[o::scale, o::scale][: h // scale, : w // scale])


# ITU-R BT.601 luma, the weights of PIL's convert('L') that the reference collect_noise.py uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def gray255(image: np.ndarray) -> np.ndarray:
    """Luma on the 0-255 scale, rounded to integers like the reference's uint8 'L' image."""
    luma = cv2.transform(image.astype(np.float32, copy=False), LUMA_WEIGHTS[None].astype(np.float32))
    luma *= np.float32(255.0)
    return np.rint(luma, out=luma)


def patch_grid(length: int, patch: int, stride: int) -> np.ndarray:
    """Top-left offsets of every whole patch along one side (the last whole patch included)."""
    if length < patch:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - patch + 1, stride, dtype=np.int64)


def noise_patch_stats(image: np.ndarray, patch: int, stride: int, opaque: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Grayscale mean and variance of every grid patch (0-255 scale), from integral images.

    `opaque` (bool HxW) marks usable pixels; patches touching others get variance +inf.
    """
    g = gray255(image)
    ys, xs = patch_grid(g.shape[0], patch, stride), patch_grid(g.shape[1], patch, stride)
    if len(ys) == 0 or len(xs) == 0:
        empty = np.zeros(0)
        return {"y": empty.astype(np.int64), "x": empty.astype(np.int64), "mean": empty, "var": empty}
    s, sq = cv2.integral2(g, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()

    def box(t: np.ndarray) -> np.ndarray:
        return t[yy + patch, xx + patch] - t[yy, xx + patch] - t[yy + patch, xx] + t[yy, xx]

    n = float(patch * patch)
    mean = box(s) / n
    var = np.maximum(box(sq) / n - mean * mean, 0.0)
    if opaque is not None:
        holes, _ = cv2.integral2((~opaque).astype(np.float64))
        var = np.where(box(holes) > 0, np.inf, var)
    return {"y": yy, "x": xx, "mean": mean, "var": var}


def select_noise_patches(
    image: np.ndarray,
    patch: int,
    stride: int,
    max_var: float,
    min_mean: float,
    opaque: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Flat patches whose luma variance < max_var and mean > min_mean: the real-noise candidates
    (the paper's rule; `DegradeSettings.noise_*` declares the values).

    Returns the accepted patches' stats (y, x, mean, var) and how many grid patches were rejected.
    """
    stats = noise_patch_stats(image, patch, stride, opaque)
    keep = (stats["var"] < max_var) & (stats["mean"] > min_mean)
    return {k: v[keep] for k, v in stats.items()}, int((~keep).sum())


def noise_crop(noise_patch: np.ndarray, size: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """A crop of a uint8 noise patch as zero-mean float32 noise (per-channel mean removed)."""
    y, x = offset
    h, w = size
    crop = noise_patch[y : y + h, x : x + w].astype(np.float32) / 255.0
    if crop.shape[:2] != (h, w):
        raise ValueError(f"noise crop {h}x{w} at {offset} falls outside a {noise_patch.shape[:2]} patch")
    return crop - crop.mean(axis=(0, 1), keepdims=True)


def inject_noise(lr: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Add zero-mean noise and clip to [0, 1]."""
    return np.clip(lr + noise, 0.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round a [0, 1] float image to uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
