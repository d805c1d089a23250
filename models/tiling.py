"""Tiled super-resolution: bounded device memory, no seams, the output assembled on the host.

The image stays on the host. Each tile (with `pad` px of real context on each side, where the
image has it) goes to the device alone, and its output, context cut off, is added into a host
buffer with a weight. Neighbouring tiles overlap by at least `overlap` px and their weights are
complementary linear ramps there, so the weights of every output pixel sum to exactly 1 and
the buffer needs no second array for normalising: device memory is one tile's, host memory the
output buffer's. The context decides how close tiled output comes to untiled (RRDB's receptive
field is far wider than any pad: BENCHMARKS.md measures it); the ramps hide what is left.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def tile_layout(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """The fewest tiles of at most `tile` px that cover `length` with neighbours overlapping by
    at least `overlap`: (their common size, shrunk to what covering needs, and their starts)."""
    if length <= tile:
        return length, [0]
    overlap = min(overlap, tile // 2)  # small tiles: at most half a tile of ramp
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    size = min(tile, int(np.ceil((length + (n - 1) * overlap) / n)))
    return size, [int(v) for v in np.round(np.linspace(0, length - size, n)).astype(int)]


def axis_weights(starts: list[int], size: int, scale: int) -> list[np.ndarray]:
    """Per tile, its output weights along one axis; over all tiles they sum to 1 at every pixel.

    Between neighbours i and i+1 the cut sits mid-way through their overlap; tile i ramps down
    and tile i+1 up, complementary and linear, over `2 r` around it, r at most half the overlap
    and half the distance to the next cut, so no pixel is under two ramps.
    """
    cuts = [(starts[i + 1] + starts[i] + size) / 2 for i in range(len(starts) - 1)]
    half = []
    for i, m in enumerate(cuts):
        room = [(starts[i] + size - starts[i + 1]) / 2]
        room += [(m - cuts[i - 1]) / 2] if i > 0 else []
        room += [(cuts[i + 1] - m) / 2] if i + 1 < len(cuts) else []
        half.append(min(room))
    out = []
    for i, s in enumerate(starts):
        x = (np.arange(size * scale, dtype=np.float64) + 0.5) / scale + s  # output pixel centres in input px
        w = np.ones_like(x)
        if i > 0:
            m, r = cuts[i - 1], half[i - 1]
            w *= np.clip((x - (m - r)) / (2 * r), 0, 1) if r > 0 else (x >= m)
        if i < len(starts) - 1:
            m, r = cuts[i], half[i]
            w *= np.clip(((m + r) - x) / (2 * r), 0, 1) if r > 0 else (x < m)
        out.append(w.astype(np.float32))
    return out


@torch.inference_mode()
def run_batch(net: torch.nn.Module, images: list[np.ndarray], device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> list[np.ndarray]:
    """One forward pass of same-sized (H, W, C) float32 images in [0, 1]; outputs clamped to [0, 1] on the host."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = net(x).float().clamp_(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return list(y)


def run_network(net: torch.nn.Module, image: np.ndarray, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> np.ndarray:
    """One forward pass of one (H, W, C) float32 image in [0, 1]."""
    return run_batch(net, [image], device, dtype, channels_last)[0]


def to_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] floats to the output's sample type (rounded for integers)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    top = float(np.iinfo(dtype).max)
    return np.clip(np.rint(x * top), 0, top).astype(dtype)


def upscale(
    net: torch.nn.Module,
    image: np.ndarray,
    scale: int,
    tile: int = 0,
    pad: int = 48,
    overlap: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    out_dtype=np.float32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The image (H, W, C float32 in [0, 1]) upscaled by the network; `tile` 0 runs it whole.

    Tiled, the output is accumulated one row of tiles at a time in float32 and each finished
    band of rows is converted into the `out_dtype` buffer: besides that buffer, host memory
    holds about two rows of tiles.
    """
    device = torch.device(device)
    h, w, c = image.shape
    if tile <= 0 or (h <= tile and w <= tile):
        out = to_dtype(run_network(net, image, device, dtype, channels_last), out_dtype)
        if progress:
            progress(1)
        return out
    (th, ys), (tw, xs) = tile_layout(h, tile, overlap), tile_layout(w, tile, overlap)
    wy, wx = axis_weights(ys, th, scale), axis_weights(xs, tw, scale)
    out = np.empty((h * scale, w * scale, c), out_dtype)  # the one output-sized buffer
    done = 0  # output rows before this are final and converted
    acc = np.zeros((0, w * scale, c), np.float32)  # rows [done, done + len(acc)) being summed
    for i, y in enumerate(ys):
        top, bottom = y * scale, (y + th) * scale
        if bottom > done + len(acc):  # grow the band down to this row of tiles' bottom
            acc = np.concatenate([acc, np.zeros((bottom - done - len(acc), w * scale, c), np.float32)])
        for j, x in enumerate(xs):
            y0, x0 = max(0, y - pad), max(0, x - pad)
            y1, x1 = min(h, y + th + pad), min(w, x + tw + pad)
            res = run_network(net, image[y0:y1, x0:x1], device, dtype, channels_last)
            oy, ox = (y - y0) * scale, (x - x0) * scale
            part = res[oy : oy + th * scale, ox : ox + tw * scale]
            acc[top - done : bottom - done, x * scale : (x + tw) * scale] += part * (wy[i][:, None, None] * wx[j][None, :, None])
            if progress:
                progress(1)
        final = ys[i + 1] * scale if i + 1 < len(ys) else h * scale  # no later tile reaches above this
        out[done:final] = to_dtype(acc[: final - done], out_dtype)
        acc, done = acc[final - done :], final
    return out


def tile_count(h: int, w: int, tile: int, overlap: int = 16) -> int:
    """How many network calls `upscale` makes (for progress bars)."""
    if tile <= 0 or (h <= tile and w <= tile):
        return 1
    return len(tile_layout(h, tile, overlap)[1]) * len(tile_layout(w, tile, overlap)[1])
