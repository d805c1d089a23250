"""The training degradation of `models.degradation` as batched tensor operations (NCHW, on any
device): a kernel per sample, the subsampling, a noise crop from a bank held as one tensor, 8-bit
quantisation, JPEG through torchvision's codec (nvJPEG on CUDA).

Why: per-sample numpy/OpenCV in DataLoader workers starved a GPU (5.2 it/s, 15-30 % busy, issue
38). Here a batch is one grouped convolution and a few gathers, wherever the tensors are.

What holds against the per-sample path (tests/test_degradation_batched.py): blur and subsampling
to float32 rounding (~1e-6; OpenCV's filter2D sums in another order, so not bitwise); a sample's
result does not depend on the rest of its batch (bitwise on the CPU); on the CPU, the JPEG codec
writes the very bytes OpenCV's does for the same 8-bit image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from realsr.models.kernels import aligned_kernel


def reflect_index(n: int, before: int, after: int, device=None) -> torch.Tensor:
    """Indices 0..n-1 extended by `before`/`after` with OpenCV's BORDER_REFLECT (edge repeated:
    `cba|abcd|dcb`), any width (folded as often as needed)."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def aligned_stack(kernels: np.ndarray, scale: int) -> tuple[torch.Tensor, int]:
    """Bank kernels (N, K, K) as they are applied on the pixel-centre grid (`aligned_kernel`, in
    float64 then float32, as `degrade` does), and their common anchor."""
    pairs = [aligned_kernel(np.asarray(k, dtype=np.float64), scale) for k in kernels]
    if not pairs:
        return torch.zeros(0, 1, 1), 0
    return torch.from_numpy(np.stack([k.astype(np.float32) for k, _ in pairs])), pairs[0][1]


def blur_subsample(hr: torch.Tensor, kernels: torch.Tensor, anchor: int, scale: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/s, W/s): each sample correlated with its own kernel (B, K, K) and
    sampled every `scale` px from (s-1)//2, borders reflected as `degrade`'s (one grouped
    convolution over B*C channels, computing only the kept pixels)."""
    b, c, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR {w}x{h} is not a multiple of the scale {scale}")
    k = kernels.shape[-1]
    o = (scale - 1) // 2
    lo = anchor - o  # pixels needed before index 0 (negative: the first ones are not needed)
    hi_y, hi_x = (h // scale - 1) * scale + o + k - 1 - anchor - (h - 1), (w // scale - 1) * scale + o + k - 1 - anchor - (w - 1)
    ys = reflect_index(h, max(lo, 0), max(hi_y, 0), hr.device)[max(lo, 0) - lo :]
    xs = reflect_index(w, max(lo, 0), max(hi_x, 0), hr.device)[max(lo, 0) - lo :]
    padded = hr[:, :, ys][:, :, :, xs]  # (B, C, H', W')
    weight = kernels.to(hr.dtype).repeat_interleave(c, 0)[:, None]  # (B*C, 1, K, K)
    out = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, stride=scale, groups=b * c)
    return out[0, :, : h // scale, : w // scale].reshape(b, c, h // scale, w // scale)


def lr_mean_weights(kernel: torch.Tensor, anchor: int, scale: int, size: int, cells: list[tuple[int, int]], cell: int) -> np.ndarray:
    """Maps (len(cells), size, size), float64: the mean of the LR over each cell (`cell` px from
    each corner, cut at the LR's edge) is the sum of the HR times the map. The LR's brightness,
    which the noise draw matches, without blurring the crop: `blur_subsample` is linear, and a
    map is its adjoint applied to the cell's averaging."""
    n = size // scale
    masks = torch.zeros(len(cells), 1, n, n, dtype=torch.float64)
    for i, (a, b) in enumerate(cells):
        region = masks[i, 0, a : a + cell, b : b + cell]
        region.fill_(1.0 / region.numel())
    hr = torch.zeros(len(cells), 1, size, size, dtype=torch.float64, requires_grad=True)
    lr = blur_subsample(hr, kernel.to(torch.float64)[None].expand(len(cells), -1, -1), anchor, scale)
    (grad,) = torch.autograd.grad((lr * masks).sum(), hr)
    return grad[:, 0].numpy()


def noise_fields(bank: torch.Tensor, picks: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-mean noise (B, 3, size, size) on the 0-1 scale from a bank (N, P, P, 3) on the 0-255
    scale (uint8 or float16, as stored): `picks` (B, cells) rows, `offsets` (B, 2) where one patch
    covers the crop; else the cells' tiles, each mean-removed, row-major (`noise.assemble_noise`)."""
    p = bank.shape[1]
    if p >= size:  # one patch per crop, cropped at its offset (`degradation.noise_crop`)
        steps = torch.arange(size, device=bank.device)
        rows, cols = offsets[:, 0, None] + steps, offsets[:, 1, None] + steps  # (B, L)
        crops = bank[picks[:, 0, None, None], rows[:, :, None], cols[:, None, :]].to(torch.float32) / 255.0  # (B, L, L, 3)
        crops = crops - crops.mean(dim=(1, 2), keepdim=True)
    else:
        n = -(-size // p)
        tiles = bank[picks].to(torch.float32) / 255.0  # (B, n*n, P, P, 3)
        tiles = tiles - tiles.mean(dim=(2, 3), keepdim=True)
        crops = tiles.reshape(-1, n, n, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * p, n * p, 3)[:, :size, :size]
    return crops.permute(0, 3, 1, 2)


def quantise(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8, rounding half to even as `degradation.to_uint8`."""
    return torch.round(image * 255.0).clamp_(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, qualities: list[int]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """(B, 3, h, w) uint8 through a JPEG encode/decode, sample i at `qualities[i]` (0: left as it
    is), one batched call per quality; nvJPEG where the tensor is on CUDA, libjpeg otherwise.
    Returns the decoded batch and each sample's JPEG bytes (None where left)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    out, coded = images.clone(), [None] * len(qualities)
    for q in sorted(set(qualities) - {0}):
        which = [i for i, v in enumerate(qualities) if v == q]
        data = [d.cpu() for d in encode_jpeg([images[i].contiguous() for i in which], quality=int(q))]  # decode_jpeg reads bytes from host memory
        out[which] = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device=images.device))
        for i, d in zip(which, data):
            coded[i] = d
    return out, coded
