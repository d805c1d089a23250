"""degrade-flow's noise steps: one photo's noise patches and the bank (an LR crop's noise is
drawn by `models.noise.draw_noise`, which training shares).

Two rules fill the bank (`NoiseRule.rule`):
- `reference`: the paper's collect_noise.py (square patches of low luma variance); injection
  crops a patch and removes its channel means, exactly as the released code;
- `adaptive`: `models.noise.select_noise_tiles`; the bank holds each tile's residual noise, and an
  LR crop larger than a tile gets a mosaic of tiles.
Either way, draws can match the LR crop's brightness (signal-dependent noise) or be uniform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from realsr.models.degradation import select_noise_patches, to_uint8
from realsr.models.errors import RealsrError
from realsr.models.noise import select_noise_tiles
from realsr.storage.banks import write_noise_bank


@dataclass(frozen=True)
class NoiseRule:
    """How noise patches are chosen (`DegradeSettings.noise_<field>` has each field's default,
    meaning and bounds)."""

    rule: str  # "adaptive" (the photo's own noise level) or "reference" (the paper's variance rule)
    tile: int  # adaptive: side of a bank tile
    tolerance: float  # adaptive: a tile's noise may stand this far above the photo's level
    max_per_image: int  # adaptive: one photo's share of the bank
    patch_size: int  # reference: side of a patch
    stride: int  # reference: step of its grid
    max_var: float  # reference: a patch's luma variance under this is flat
    min_mean: float  # reference: ... and its mean over this
    min_patches: int  # either rule: a bank with fewer patches gets a loud warning

    @property
    def size(self) -> int:
        """Side of the bank's patches under the rule."""
        return self.patch_size if self.rule == "reference" else self.tile

    def key_fields(self) -> dict:
        """The fields a photo's noise patches depend on, under the settings' names (stage keys)."""
        used = ("patch_size", "stride", "max_var", "min_mean") if self.rule == "reference" else ("tile", "tolerance", "max_per_image")
        return {"noise_rule": self.rule, **{f"noise_{f}": getattr(self, f) for f in used}}


class EmptyNoiseBank(RealsrError, RuntimeError):
    """The bank is empty and the settings say to stop rather than make noise-free pairs."""


COLUMNS = ("patches", "noise", "position", "gray_mean", "gray_var", "channel_mean", "channel_var", "noise_level")


def extract_noise(rgb: np.ndarray, opaque: np.ndarray | None, s: NoiseRule) -> tuple[dict[str, np.ndarray], dict]:
    """One source photo's noise patches as bank columns, and a small record of how they were chosen."""
    if s.rule == "reference":
        sel, rejected = select_noise_patches(rgb, s.patch_size, s.stride, s.max_var, s.min_mean, opaque)
        p = s.patch_size
        patches = np.stack([to_uint8(rgb[y : y + p, x : x + p]) for y, x in zip(sel["y"], sel["x"])]) if len(sel["y"]) else np.zeros((0, p, p, 3), np.uint8)
        pf = patches.reshape(len(patches), p * p, 3).astype(np.float64)
        table = {
            "patches": patches,
            "noise": (pf - pf.mean(1, keepdims=True)).reshape(patches.shape).astype(np.float16),
            "position": np.stack([sel["y"], sel["x"]], 1).astype(np.int32),
            "gray_mean": sel["mean"].astype(np.float32),
            "gray_var": sel["var"].astype(np.float32),
            "channel_mean": pf.mean(1).astype(np.float32),
            "channel_var": pf.var(1).astype(np.float32),
            "noise_level": np.full(len(patches), np.nan, np.float32),
        }
        return table, {"count": len(patches), "rejected": rejected}
    tiles = select_noise_tiles(rgb, s.tile, s.tolerance, s.max_per_image, opaque)
    n, t = len(tiles.y), s.tile
    table = {
        "patches": to_uint8(tiles.pixels) if n else np.zeros((0, t, t, 3), np.uint8),
        "noise": tiles.residual.astype(np.float16),
        "position": np.stack([tiles.y, tiles.x], 1).astype(np.int32) if n else np.zeros((0, 2), np.int32),
        "gray_mean": tiles.brightness.astype(np.float32),
        "gray_var": (tiles.sigma**2).astype(np.float32),
        "channel_mean": tiles.channel_brightness.astype(np.float32).reshape(n, 3),
        "channel_var": (tiles.channel_sigma**2).astype(np.float32).reshape(n, 3),
        "noise_level": tiles.level.astype(np.float32),
    }
    return table, {"count": n, "rejected": tiles.candidates - n, "noise_level": tiles.nlf.as_dict()}


def bank_attrs(s: NoiseRule) -> dict:
    """What the bank says of the rule that filled it (stored in noise.zarr, shown by inspect)."""
    common = {"rule": s.rule, "patch_size": s.size, "grayscale": "BT.601 luma 0.299 R + 0.587 G + 0.114 B on the 0-255 scale"}
    if s.rule == "reference":
        return {
            **common,
            "stride": s.stride,
            "max_var": s.max_var,
            "min_mean": s.min_mean,
            "selection": "luma variance < max_var and luma mean > min_mean, on the source image (collect_noise.py)",
            "grid": "every whole patch from the top-left corner, the last whole row/column included",
            "noise": "patch minus its channel means",
        }
    return {
        **common,
        "stride": s.tile,
        "tolerance": s.tolerance,
        "max_per_image": s.max_per_image,
        "selection": (
            "detrended luma std <= (1 + tolerance) x the photo's own noise level at the tile's brightness; no clipped, near-black or transparent pixel"
        ),
        "noise": "each channel minus its best-fitting quadratic surface (0-255 scale, float16)",
        "gray_mean": "luma of the tile (its brightness); gray_var: the residual's luma variance; noise_level: the photo's estimated level there",
    }


def write_bank(path, parts: list[dict[str, np.ndarray]], source: list[str], sha: list[str], s: NoiseRule, sources: list[dict]) -> dict:
    """Stack every photo's columns (in the given order) into noise.zarr."""
    p = s.size
    empty = {"patches": (0, p, p, 3), "noise": (0, p, p, 3), "position": (0, 2), "channel_mean": (0, 3), "channel_var": (0, 3)}
    table = {c: np.concatenate([q[c] for q in parts]) if parts else np.zeros(empty.get(c, (0,)), np.float32) for c in COLUMNS}
    stack = table.pop("patches").astype(np.uint8)
    table["noise"] = table["noise"].astype(np.float16)
    table["position"] = table["position"].astype(np.int32)
    table = {"source": np.asarray(source, dtype=str), "source_sha256": np.asarray(sha, dtype=str), **table}
    attrs = {**bank_attrs(s), "sources": sources, "rejected": int(sum(x["rejected"] for x in sources))}
    digest = write_noise_bank(path, stack, table, attrs)
    count = int(len(stack))
    return {"path": str(path), "count": count, "rejected": attrs["rejected"], "digest": digest, "warning": bank_warning(count, s)}


def bank_warning(count: int, s: NoiseRule) -> str:
    """The loud message for an empty or tiny bank (empty string when the bank is fine)."""
    if count >= max(1, s.min_patches):
        return ""
    what = (
        "is EMPTY: every pair will be noise-free"
        if count == 0
        else f"holds only {count} patches (fewer than noise_min_patches={s.min_patches}): few noise samples repeat in every pair"
    )
    if s.rule == "reference":
        fix = "try --noise-rule adaptive, or a smaller --noise-patch-size / a larger --noise-max-var"
    else:
        fix = "add photos with flat areas (sky, walls, out-of-focus background), raise --noise-tolerance, or lower --noise-tile"
    stop = "" if count else " (or --on-empty-noise stop to fail instead of going on)"
    return f"noise bank {what}; {fix}{stop}"
