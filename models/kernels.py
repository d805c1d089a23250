"""Blur kernels for the degradation model, in one convention.

A kernel here is odd-sized, sums to 1 and has its centre of mass on the middle pixel. It is a
*correlation* kernel (as torch's conv2d and KernelGAN's generator use it). It degrades an HR
image on the pixel-centre grid that MATLAB's imresize and our clean-up use: LR pixel i sits over
HR position s*i + (s-1)/2. For even s that position falls between pixels, so `aligned_kernel`
moves the kernel half a pixel with Lanczos-4 interpolation before it is applied (KernelGAN's
`kernel_shift` does the same with a spline, and pads the kernel to 17x17/33x33 while doing it;
we keep the stored size and pad only the copy that is applied).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stored kernel sizes per scale: KernelGAN's x2 generator composes to 13x13, and the analytic x4
# kernel derived from it is 25x25.
KERNEL_SIZE = {2: 13, 4: 25}
RESIZE_CONVENTION = (
    "correlate with the kernel (reflect border), LR[i,j] at HR (s*i+(s-1)/2, s*j+(s-1)/2); "
    "for even s the centred kernel is shifted +0.5 px by Lanczos-4 interpolation before use"
)


def _half_pixel_taps(a: int = 4) -> np.ndarray:
    """Lanczos-a weights that move a sampled signal by half a pixel (2a taps).

    Lanczos-4 keeps a bicubic x2 degradation within 0.16/255 (mean) of MATLAB's imresize on
    baboon; Keys' cubic (4 taps) was 0.51/255.
    """
    x = np.arange(2 * a, dtype=np.float64) - (a - 0.5)
    t = np.sinc(x) * np.sinc(x / a)
    return t / t.sum()


_HALF_PIXEL_TAPS = _half_pixel_taps()


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's imresize uses."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))


def pad_to(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (or refuse to crop) an odd square kernel to `size` x `size`, keeping it centred."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or size % 2 == 0:
        raise ValueError(f"kernels must be odd and square, got {k.shape} -> {size}")
    if k.shape[0] > size:
        raise ValueError(f"kernel of size {k.shape[0]} does not fit in {size}x{size}")
    p = (size - k.shape[0]) // 2
    return np.pad(k, p)


def bicubic_kernel(scale: int, size: int | None = None) -> np.ndarray:
    """The antialiased bicubic kernel of an integer downscale, centred, as a 2-D kernel.

    Taps at integer offsets d carry cubic(d / scale); the support is 4*scale - 1 taps wide.
    """
    half = 2 * scale - 1
    d = np.arange(-half, half + 1, dtype=np.float64)
    w = cubic(d / scale)
    w /= w.sum()
    k = np.outer(w, w)
    return pad_to(k, size or KERNEL_SIZE.get(scale, k.shape[0]))


def center_of_mass(kernel: np.ndarray) -> np.ndarray:
    """(row, col) centre of mass of a kernel, in pixel indices."""
    k = np.asarray(kernel, dtype=np.float64)
    total = k.sum()
    if abs(total) < 1e-12:
        raise ValueError("kernel sums to zero: no centre of mass")
    rows, cols = np.indices(k.shape)
    return np.array([(rows * k).sum() / total, (cols * k).sum() / total])


def _shift_linear(kernel: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shift by a sub-pixel vector with bilinear weights: the first moment moves by exactly `shift`."""
    out = kernel
    for axis, s in enumerate(shift):
        whole = int(np.floor(s))
        frac = s - whole
        moved = np.roll(out, whole, axis=axis) * (1.0 - frac) + np.roll(out, whole + 1, axis=axis) * frac
        out = moved
    return out


def centre_kernel(kernel: np.ndarray) -> np.ndarray:
    """Move a kernel's centre of mass onto its middle pixel and renormalise it to sum 1.

    The kernel keeps its size; mass that a shift would push past the border wraps, so the
    caller should check `border_energy` of the input first (a kernel with mass at its border
    is rejected by `check_kernel` anyway).
    """
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    mid = np.array(k.shape, dtype=np.float64) // 2
    k = _shift_linear(k, mid - center_of_mass(k))
    return k / k.sum()


def analytic_x4(k2: np.ndarray) -> np.ndarray:
    """The x4 kernel equal to applying the x2 kernel twice: k2 convolved with k2 dilated by 2.

    As KernelGAN's `analytic_kernel`: a 13x13 x2 kernel gives a 37x37 composite, cropped by
    size//2 on each side to 25x25 and renormalised.
    """
    k2 = np.asarray(k2, dtype=np.float64)
    n = k2.shape[0]
    big = np.zeros((3 * n - 2, 3 * n - 2))
    for r in range(n):
        for c in range(n):
            big[2 * r : 2 * r + n, 2 * c : 2 * c + n] += k2[r, c] * k2
    crop = n // 2
    k4 = big[crop:-crop, crop:-crop]
    return k4 / k4.sum()


def aligned_kernel(kernel: np.ndarray, scale: int) -> tuple[np.ndarray, int]:
    """The kernel as it is applied on the pixel-centre grid, and its anchor (row = col).

    Odd scales need no shift. Even scales shift the kernel +0.5 px on both axes with Lanczos-4
    taps; the result is 7 px larger and its centre lies half a pixel after the anchor.
    """
    k = np.asarray(kernel, dtype=np.float64)
    r = k.shape[0] // 2
    if scale % 2 == 1:
        return k, r
    rows = np.apply_along_axis(np.convolve, 0, k, _HALF_PIXEL_TAPS)
    both = np.apply_along_axis(np.convolve, 1, rows, _HALF_PIXEL_TAPS)
    return both / both.sum(), r + len(_HALF_PIXEL_TAPS) // 2 - 1


@dataclass(frozen=True)
class KernelChecks:
    """Validity figures stored with every kernel, and the verdict."""

    kernel_sum: float
    center_offset: float  # px between the centre of mass and the middle pixel
    border_energy: float  # share of |k| on the outermost ring
    bicubic_distance: float  # L2 distance to the bicubic kernel of the same scale and size
    valid: bool
    reason: str


def check_kernel(
    kernel: np.ndarray,
    scale: int,
    sum_tol: float = 1e-3,
    max_center_offset: float = 0.5,
    max_border_energy: float = 0.05,
) -> KernelChecks:
    """Measure a kernel against the convention; `reason` names every failed check."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        return KernelChecks(float(k.sum()), float("nan"), float("nan"), float("nan"), False, f"bad shape {k.shape}")
    total = float(k.sum())
    mid = np.array(k.shape) // 2
    try:
        offset = float(np.linalg.norm(center_of_mass(k) - mid))
    except ValueError:
        offset = float("inf")
    mag = np.abs(k)
    ring = mag.sum() - mag[1:-1, 1:-1].sum()
    border = float(ring / max(mag.sum(), 1e-12))
    bic = bicubic_kernel(scale, k.shape[0]) if (4 * scale - 1) <= k.shape[0] else None
    distance = float(np.linalg.norm(k - bic)) if bic is not None else float("nan")
    reasons = []
    if not np.all(np.isfinite(k)):
        reasons.append("non-finite taps")
    if abs(total - 1.0) > sum_tol:
        reasons.append(f"sum {total:.4f} != 1")
    if offset > max_center_offset:
        reasons.append(f"centre of mass {offset:.2f} px off the middle")
    if border > max_border_energy:
        reasons.append(f"{100 * border:.1f}% of the energy on the border")
    return KernelChecks(total, offset, border, distance, not reasons, "; ".join(reasons))


def consensus_kernel(kernels, iterations: int = 100) -> np.ndarray:
    """One kernel for a camera from its photos' estimates: their geometric median, centred.

    Photos of one camera share its optics, so their kernels estimate one blur; the geometric
    median (Weiszfeld's iteration on the flattened, centred kernels) follows the majority and,
    unlike the mean, is not dragged by the few estimates that failed (a graphic, a flat photo).
    """
    ks = np.stack([centre_kernel(np.asarray(k, np.float64)) for k in kernels])
    shape = ks.shape[1:]
    flat = ks.reshape(len(ks), -1)
    m = np.median(flat, 0)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.linalg.norm(flat - m, axis=1), 1e-12)
        new = (w[:, None] * flat).sum(0) / w.sum()
        if np.linalg.norm(new - m) < 1e-10:
            break
        m = new
    k = np.clip(m.reshape(shape), 0, None)
    return centre_kernel(k / k.sum())
