"""Real-noise extraction judged by the photo's own noise level (the adaptive rule).

The reference rule (`models.degradation.select_noise_patches`: 256 px, luma variance < 20) ties
the bank to one camera and one image size: a noisy camera's flat sky has a variance above 20, a
small photo has no 256 px flat patch, and a kept patch carries the sky's gradient. This rule:

1. splits every block into the quadratic surface that fits it best (brightness, gradient,
   shading) and a residual; the residual is what a bank tile holds, the surface its brightness;
2. estimates the image's noise level function (NLF: residual std against brightness) from the
   least textured 16 px blocks of each brightness bin: texture only adds residual energy, so the
   low end of the block distribution is the noise; a bin whose floor stands `SPIKE` times over
   its neighbours' has no flat block at all (noise varies slowly with brightness) and is dropped;
3. keeps the `tile`-px tiles whose residual std is within `tolerance` of the NLF at their
   brightness, that hold no clipped, saturated or near-black pixel, and whose brightness varies
   little across the tile (so their brightness is well defined for signal-dependent draws);
   blocks under `EMPTIED` (a quarter level, below what 8-bit rounding leaves of any noise) are
   areas that JPEG or a camera's denoiser emptied: they neither set the level (the floor would
   sit on them) nor enter the bank (injection would pass them on as "no noise");
4. stores each tile's residual (colour correlation and brightness dependence kept) with its
   source position, brightness, measured and estimated noise level.

Large flat areas give many tiles; `max_tiles` caps an image's share, spread over brightness.
All levels are on the 0-255 scale of the source's luma (BT.601).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from realsr.models.degradation import LUMA_WEIGHTS, noise_crop, patch_grid

VERSION = "5"  # in the preprocess cache key: bump when the tiles for the same photo change
CLIP_LOW, CLIP_HIGH = 3.0 / 255.0, 252.0 / 255.0  # a channel this dark or bright has clipped noise
BRIGHTNESS_BINS = np.linspace(0.0, 255.0, 17)  # 16 bins of 16 levels
POOL_BINS = 2
TWO_SCALE_SLACK = 0.05  # a tile's std over its 16 px sub-blocks', at most this above the photo's median
SPIKE = 1.5  # a bin's level this far above its neighbours' median is texture, not noise
EMPTIED = 0.25  # a block's residual luma std under this holds no noise: compression or denoising emptied it
CAPPED_SPAN = 0.8  # a capped bin's share is drawn across the lower four fifths of its candidates' noise ratios


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma on the 0-255 scale, float32 (not rounded: the residual keeps sub-level noise)."""
    out = cv2.transform(image.astype(np.float32, copy=False), LUMA_WEIGHTS[None].astype(np.float32))
    return out * np.float32(255.0)


def clipped_mask(image: np.ndarray, opaque: np.ndarray | None = None, margin: int = 2) -> np.ndarray:
    """Pixels unusable for noise: a channel near black or white (noise clipped), or transparent; grown by `margin` px."""
    bad = ((image <= CLIP_LOW) | (image >= CLIP_HIGH)).any(axis=-1)
    if opaque is not None:
        bad |= ~opaque
    if bad.any() and margin:
        bad = cv2.dilate(bad.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    return bad


@lru_cache(maxsize=8)
def _surface(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The quadratic surface basis of a size x size block (size^2, 6) and its pseudo-inverse (6, size^2)."""
    u, v = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    u, v = u.ravel(), v.ravel()
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1)
    return basis.astype(np.float32), np.linalg.pinv(basis).astype(np.float32)


def detrend(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split blocks (..., size^2) into the quadratic surface that fits each best and the residual.

    The surface takes a block's brightness, gradient and shading (the sky and wall ramps that a
    mean removal keeps) and 6 of its size^2 degrees of freedom of noise; the residual keeps the
    rest at every frequency, so correlated noise (demosaicing, JPEG) is not thinned out.
    """
    n = blocks.shape[-1]
    basis, pinv = _surface(int(round(np.sqrt(n))))
    fit = (blocks @ pinv.T) @ basis.T
    return fit, blocks - fit


def _blocks(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (H//size, W//size, size*size), the whole blocks of a 2-D array."""
    h, w = (a.shape[0] // size) * size, (a.shape[1] // size) * size
    return a[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2).reshape(h // size, w // size, -1)


@dataclass
class BlockStats:
    """Per whole block of a grid: residual std, brightness, brightness range, any clipped pixel."""

    y: np.ndarray
    x: np.ndarray
    sigma: np.ndarray
    brightness: np.ndarray
    spread: np.ndarray
    clipped: np.ndarray


def block_stats(y: np.ndarray, bad: np.ndarray, size: int, band_blocks: int = 64) -> BlockStats:
    """Detrended luma std (unbiased for the 6 fitted terms) of every whole block, a band at a time."""
    rows = y.shape[0] // size
    parts = []
    for r0 in range(0, rows, band_blocks):  # bounded memory on 50 MP photos
        band = _blocks(y[r0 * size : min(rows, r0 + band_blocks) * size], size).astype(np.float32)
        fit, res = detrend(band)
        n = band.shape[-1]
        parts.append(
            (np.sqrt((res.astype(np.float64) ** 2).sum(-1) / (n - 6)), band.mean(-1, dtype=np.float64), (fit.max(-1) - fit.min(-1)).astype(np.float64))
        )
    gy, gx = np.meshgrid(np.arange(rows) * size, np.arange(y.shape[1] // size) * size, indexing="ij")
    cat = lambda i: np.concatenate([p[i] for p in parts]).ravel() if parts else np.zeros(0)  # noqa: E731
    return BlockStats(gy.ravel(), gx.ravel(), cat(0), cat(1), cat(2), _blocks(bad, size).any(-1).ravel())


@dataclass
class NoiseLevel:
    """The noise level function: residual luma std per brightness bin (NaN where none was seen)."""

    centres: np.ndarray  # (B,) bin centres, 0-255
    sigma: np.ndarray  # (B,)
    blocks: np.ndarray  # (B,) flat-candidate blocks the estimate used

    def __call__(self, brightness) -> np.ndarray:
        """The level at any brightness: linear between measured bins, the nearest beyond them."""
        ok = np.isfinite(self.sigma)
        if not ok.any():
            return np.full(np.shape(brightness), np.nan)
        return np.interp(brightness, self.centres[ok], self.sigma[ok])

    def as_dict(self) -> dict:
        return {
            "centres": self.centres.round(2).tolist(),
            "sigma": [None if not np.isfinite(v) else round(float(v), 4) for v in self.sigma],
            "blocks": self.blocks.tolist(),
        }


def robust_floor(sigmas: np.ndarray, slack: float = 0.3, rounds: int = 2) -> float:
    """The noise level under a mix of pure-noise and textured blocks' residual stds.

    Start from the 10th percentile, then take the median of the blocks within `slack` of it, twice:
    with only noise this is the median (unbiased); texture sits above and is left out.
    """
    level = float(np.percentile(sigmas, 10))
    for _ in range(rounds):
        level = float(np.median(sigmas[sigmas <= level * (1 + slack)]))
    return level


def _level_from_blocks(st: BlockStats, min_blocks: int, max_spread: float) -> NoiseLevel:
    edges = BRIGHTNESS_BINS
    usable = ~st.clipped & (st.spread <= max_spread) & (st.sigma >= EMPTIED)
    which = np.clip(np.digitize(st.brightness, edges) - 1, 0, len(edges) - 2)
    sigma = np.full(len(edges) - 1, np.nan)
    count = np.zeros(len(edges) - 1, dtype=np.int64)
    for b in range(len(edges) - 1):
        s = st.sigma[usable & (which == b)]
        count[b] = len(s)
        if len(s) >= min_blocks:
            sigma[b] = robust_floor(s)
    # a small photo has few blocks per bin: a bin short of them borrows its neighbours' (up to
    # two bins, 32 levels, each side), so a 0.03 MP photo still gets a level where it is flat
    for b in np.flatnonzero(count > 0):
        if np.isnan(sigma[b]):
            near = usable & (np.abs(which - b) <= POOL_BINS)
            if near.sum() >= min_blocks:
                sigma[b] = robust_floor(st.sigma[near])
    # a bin whose blocks are all textured has its floor far above its neighbours' (noise varies
    # slowly with brightness): it is no noise level; the bins around it stand in
    seen = np.flatnonzero(np.isfinite(sigma))
    spikes = []
    for b in seen:
        near = sigma[seen[(seen != b) & (np.abs(seen - b) <= POOL_BINS)]]
        if near.size and sigma[b] > SPIKE * np.median(near):
            spikes.append(b)
    sigma[spikes] = np.nan
    return NoiseLevel((edges[:-1] + edges[1:]) / 2, sigma, count)


@dataclass
class NoiseTiles:
    """The tiles an image gives to the bank, with what the bank records of each."""

    y: np.ndarray
    x: np.ndarray
    residual: np.ndarray  # (N, T, T, 3) float32, 0-255 scale: the noise itself
    pixels: np.ndarray  # (N, T, T, 3) float32 in [0, 1]: the source pixels (for contact sheets)
    brightness: np.ndarray  # (N,) luma of the low-frequency part
    channel_brightness: np.ndarray  # (N, 3)
    sigma: np.ndarray  # (N,) measured residual luma std
    channel_sigma: np.ndarray  # (N, 3)
    level: np.ndarray  # (N,) the NLF's level at the tile's brightness
    candidates: int  # tiles on the grid
    nlf: NoiseLevel


def select_noise_tiles(
    image: np.ndarray,
    tile: int,
    tolerance: float,
    max_tiles: int,
    opaque: np.ndarray | None = None,
    max_spread: float = 48.0,
) -> NoiseTiles:
    """The adaptive rule: tiles holding nothing but noise, by the image's own noise level
    (`DegradeSettings.noise_tile`, `noise_tolerance`, `noise_max_per_image` declare the values)."""
    y = luma(image)
    bad = clipped_mask(image, opaque)
    fine = block_stats(y, bad, 16)
    nlf = _level_from_blocks(fine, 8, max_spread / 2)
    st = block_stats(y, bad, tile)
    level = nlf(st.brightness)
    ratio = st.sigma / np.maximum(level, 1e-3)
    keep = ~st.clipped & (st.spread <= max_spread) & np.isfinite(level) & (ratio <= 1 + tolerance) & (st.sigma >= EMPTIED)
    if tile % 16 == 0 and tile > 16 and keep.sum() >= 4:
        # two scales: structure between 16 px and the tile's size (a remnant that the finer
        # surfaces take but the tile's does not) raises the tile's std over its sub-blocks'
        scales = st.sigma / np.maximum(_pool_sigma(fine.sigma, y.shape, 16, tile), 1e-6)
        keep &= scales <= np.median(scales[keep]) * (1 + TWO_SCALE_SLACK)
    chosen = _spread_over_brightness(np.flatnonzero(keep), ratio, st.brightness, max_tiles)
    ys, xs = st.y[chosen], st.x[chosen]
    residual = np.stack([_residual_rgb(image, int(a), int(b), tile) for a, b in zip(ys, xs)]) if len(chosen) else np.zeros((0, tile, tile, 3), np.float32)
    pixels = np.stack([image[a : a + tile, b : b + tile] for a, b in zip(ys, xs)]) if len(chosen) else np.zeros((0, tile, tile, 3), np.float32)
    return NoiseTiles(
        ys,
        xs,
        residual.astype(np.float32),
        pixels.astype(np.float32),
        st.brightness[chosen],
        pixels.mean((1, 2)) * 255.0,
        st.sigma[chosen],
        residual.reshape(len(chosen), -1, 3).std(1) if len(chosen) else np.zeros((0, 3)),
        level[chosen],
        int(len(st.sigma)),
        nlf,
    )


def _pool_sigma(sigma: np.ndarray, shape: tuple, sub: int, tile: int) -> np.ndarray:
    """The RMS of each tile's sub-block stds (tiles and sub-blocks on grids from the corner)."""
    k = tile // sub
    grid = sigma.reshape(shape[0] // sub, shape[1] // sub)
    rows, cols = shape[0] // tile, shape[1] // tile
    return np.sqrt((grid[: rows * k, : cols * k] ** 2).reshape(rows, k, cols, k).mean((1, 3))).ravel()


def _spread_over_brightness(candidates: np.ndarray, ratio: np.ndarray, brightness: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` tiles, shared out in turn over the brightness bins, each bin's share taken
    evenly across the lower `CAPPED_SPAN` of its candidates' noise ratios.

    Not the flattest first: the flattest of many candidates are the ones whose noise happened to
    come out low (and, after JPEG, the blocks it zeroed), so a capped bank read 5-14 % low on
    the benchmark's large photos. Not across all of them either: faint texture that passes the
    tolerance gathers in the top of the ratios (the large photo scenes read up to 10 % high).
    Even quantiles of the lower four fifths cost pure noise about 1 % of its level.
    """
    if len(candidates) <= limit:
        return candidates
    which = np.digitize(brightness[candidates], BRIGHTNESS_BINS)
    bins = [candidates[which == b][np.argsort(ratio[candidates[which == b]], kind="stable")] for b in np.unique(which)]
    share = np.zeros(len(bins), dtype=np.int64)
    while share.sum() < limit:  # round robin over the bins that still have candidates
        for i, q in enumerate(bins):
            if share[i] < len(q) and share.sum() < limit:
                share[i] += 1
    out = [q[((np.arange(k) + 0.5) * (len(q) if k == len(q) else len(q) * CAPPED_SPAN) / k).astype(np.int64)] for q, k in zip(bins, share) if k]
    return np.sort(np.concatenate(out))


def _residual_rgb(image: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    """A tile's RGB residual on the 0-255 scale: each channel minus its own quadratic surface."""
    crop = image[y : y + tile, x : x + tile].astype(np.float32) * np.float32(255.0)  # (T, T, 3)
    _, res = detrend(crop.reshape(-1, 3).T)  # (3, T*T)
    return np.ascontiguousarray(res.T.reshape(tile, tile, 3))


# ----------------------------------------------------------------------------------------------
# injection


def brightness_matched(bank_brightness: np.ndarray, wanted: np.ndarray, rng: np.random.Generator, window: float = 8.0, nearest: int = 4) -> np.ndarray:
    """A bank index per wanted brightness: uniform among tiles within `window` levels, else the `nearest`."""
    order = np.argsort(bank_brightness, kind="stable")
    b = bank_brightness[order]
    out = np.empty(len(wanted), dtype=np.int64)
    for i, w in enumerate(np.asarray(wanted, dtype=np.float64)):
        lo, hi = np.searchsorted(b, w - window), np.searchsorted(b, w + window, side="right")
        if hi - lo < nearest:
            centre = int(np.clip(np.searchsorted(b, w), 0, len(b)))
            lo, hi = max(0, centre - nearest), min(len(b), centre + nearest)
            near = np.argsort(np.abs(b[lo:hi] - w), kind="stable")[:nearest] + lo
            out[i] = order[near[rng.integers(len(near))]]
        else:
            out[i] = order[lo + rng.integers(hi - lo)]
    return out


def noise_cells(size: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the tiles that cover a size x size noise field."""
    starts = patch_grid(-(-size // tile) * tile, tile, tile).tolist()
    return [(int(a), int(b)) for a in starts for b in starts]


def assemble_noise(tiles: list[np.ndarray], size: int) -> np.ndarray:
    """A size x size noise field from the tiles of `noise_cells` (row-major), each mean-removed, 0-1 scale."""
    t = tiles[0].shape[0]
    n = -(-size // t)
    field = np.zeros((n * t, n * t, 3), np.float32)
    for (a, b), tl in zip(noise_cells(size, t), tiles):
        tl = tl.astype(np.float32) / 255.0
        field[a : a + t, b : b + t] = tl - tl.mean(axis=(0, 1), keepdims=True)
    return field[:size, :size]


def draw_noise(bank, rng: np.random.Generator, crops: list[np.ndarray], match: bool) -> list[tuple[np.ndarray, dict]]:
    """Zero-mean noise (0-1 scale) for each LR crop of one image, and its manifest fields; `bank`
    is a noise bank (`storage.banks.NoiseBank`: count, patch_size, column, noise, patch_id).
    degrade-flow's pairs and train-flow's crops both draw here.

    All picks come first from the image's one random stream (`pick_noise`), then one batched read of the bank.
    """
    if not crops or not bank.count:
        return []
    L, P = crops[0].shape[0], bank.patch_size
    wanted = [crop_brightness(c, P) for c in crops] if match else [None] * len(crops)
    picks, offsets = pick_noise(rng, bank.count, P, L, wanted, bank.column("gray_mean").astype(np.float64) if match else None)
    unique = np.unique(np.concatenate([np.asarray(q).ravel() for q in picks]))
    data = dict(zip(unique.tolist(), bank.noise(unique)))
    out = []
    for q, off in zip(picks, offsets):
        q, off = [int(i) for i in np.asarray(q).ravel()], [int(v) for v in off]
        field = noise_crop(data[q[0]], (L, L), tuple(off)) if P >= L else assemble_noise([data[i] for i in q], L)
        index = q[0] if P >= L else q
        out.append((field, {"noise_id": "+".join(bank.patch_id(i) for i in q), "noise_index": index, "noise_offset": off}))
    return out


def crop_brightness(crop: np.ndarray, patch: int) -> list[float]:
    """The luma (0-255) a noise draw matches: the crop's mean where one patch covers it, else each `noise_cells` cell's."""
    y = luma(crop)
    if patch >= crop.shape[0]:
        return [float(y.mean())]
    return [float(y[a : a + patch, b : b + patch].mean()) for a, b in noise_cells(crop.shape[0], patch)]


def pick_noise(rng: np.random.Generator, count: int, patch: int, size: int, wanted: list, brightness: np.ndarray | None) -> tuple[list, list]:
    """(bank rows, offset) per crop of side `size`, drawn from `rng` in the order `draw_noise` has
    always drawn: `wanted` holds each crop's `crop_brightness` (None each when not matched),
    `brightness` the bank's gray_mean column (None: uniform picks, as the paper). A crop's rows are
    one per `noise_cells` cell where the patch is smaller than the crop (offset 0, 0)."""
    if patch >= size:  # one patch per crop
        if brightness is not None:
            picks, offsets = [], []
            for w in wanted:
                picks.append([int(brightness_matched(brightness, w, rng)[0])])
                offsets.append(rng.integers(0, patch - size + 1, size=2))
        else:  # the paper's draws, in the released code's order
            picks = rng.integers(count, size=(len(wanted), 1))
            offsets = rng.integers(0, patch - size + 1, size=(len(wanted), 2))
    else:  # a mosaic of tiles per crop
        offsets = [np.zeros(2, np.int64)] * len(wanted)
        if brightness is not None:
            picks = [brightness_matched(brightness, w, rng) for w in wanted]
        else:
            picks = rng.integers(count, size=(len(wanted), len(noise_cells(size, patch))))
    return picks, offsets
