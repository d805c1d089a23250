"""Seeded synthetic 'camera photos' for the demo and the tests.

Each picture has what the pipeline looks for in a real photo: flat sky and wall areas (noise
patches), textured ground and sharp shapes (content), an anisotropic lens blur and
signal-dependent sensor noise. Returned as float32 RGB in [0, 1]; the caller encodes it (the demo
writes JPEG, as cameras do).
"""

from __future__ import annotations

import cv2
import numpy as np


def gaussian_kernel(sigma_x: float, sigma_y: float, angle: float, size: int = 13) -> np.ndarray:
    """An anisotropic Gaussian kernel, centred, summing to 1."""
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def camera_photo(seed: int, height: int = 960, width: int = 1280, noise_level: float = 2.0) -> np.ndarray:
    """One synthetic photo; `noise_level` is the sensor noise std in 8-bit levels at mid-gray."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.35, 0.5))
    # sky: a gentle vertical gradient (flat enough to pass the variance < 20 test)
    top, bottom = rng.uniform(0.45, 0.8, 3), rng.uniform(0.55, 0.85, 3)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = (1 - t) * top + t * bottom
    # ground: layered low-frequency texture plus fine grain
    ground = np.zeros((height - horizon, width, 3), np.float32) + rng.uniform(0.2, 0.5, 3)
    for scale in (64, 16, 4):
        small = rng.normal(0, 0.12, ((height - horizon) // scale + 2, width // scale + 2, 3)).astype(np.float32)
        ground += cv2.resize(small, (width, height - horizon), interpolation=cv2.INTER_CUBIC)[: height - horizon]
    img[horizon:] = ground
    # a flat wall on one side and a few sharp shapes
    wx = int(width * rng.uniform(0.6, 0.8))
    img[horizon // 2 :, wx:] = rng.uniform(0.3, 0.7, 3)
    for _ in range(int(rng.integers(6, 12))):
        color = tuple(float(c) for c in rng.uniform(0, 1, 3))
        cx, cy = int(rng.integers(0, wx)), int(rng.integers(horizon, height))
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), int(rng.integers(10, 80)), color, -1, cv2.LINE_AA)
        else:
            w, h = int(rng.integers(20, 160)), int(rng.integers(20, 160))
            cv2.rectangle(img, (cx, cy), (cx + w, cy + h), color, -1)
    for _ in range(int(rng.integers(3, 8))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(horizon, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(horizon, height)))
        cv2.line(img, p1, p2, (0.05, 0.05, 0.05), int(rng.integers(1, 4)), cv2.LINE_AA)
    img = np.clip(img, 0, 1)
    # lens blur, then signal-dependent sensor noise (shot + read noise)
    k = gaussian_kernel(rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.2), rng.uniform(0, np.pi)).astype(np.float32)
    img = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)
    std = (noise_level / 255.0) * np.sqrt(0.3 + 1.4 * img)
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * std
    return np.clip(img, 0, 1).astype(np.float32)
