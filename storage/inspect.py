"""Statistics and PNG contact sheets of the banks, so people can look rather than read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import zarr

from storage.atomic import write_bytes
from storage.banks import open_kernel_bank, open_noise_bank


def bank_kind(path: Path) -> str:
    try:
        g = zarr.open_group(zarr.storage.LocalStore(Path(path), read_only=True), mode="r")
    except Exception as e:
        raise ValueError(f"{path} is not a Zarr store ({e})") from None
    kind = g.attrs.get("kind", "")
    if kind not in ("realsr-kernel-bank", "realsr-noise-bank"):
        raise ValueError(f"{path} is not a kernel or noise bank (kind={kind!r})")
    return kind


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[: tile.shape[1] // 6], (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, bar], 0)


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = t
    return sheet


def _write_sheet(path: Path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    write_bytes(path, buf.tobytes())


def kernel_report(path: Path, sheet: Path, max_tiles: int = 64) -> str:
    attrs, sets = open_kernel_bank(path)
    lines = [f"kernel bank {path}: source {attrs.get('kernel_source')}, digest {attrs['digest'][:12]}"]
    tiles = []
    for scale, ks in sorted(sets.items()):
        v = ks.checks["valid"]
        lines.append(
            f"  x{scale}: {len(ks)} kernels {ks.kernels.shape[1]}x{ks.kernels.shape[2]}, {int(v.sum())} valid; "
            f"sum {ks.checks['kernel_sum'].min():.4f}..{ks.checks['kernel_sum'].max():.4f}, "
            f"centre offset max {np.nanmax(ks.checks['center_offset']):.3f} px, "
            f"border energy max {np.nanmax(ks.checks['border_energy']):.4f}, "
            f"distance to bicubic mean {np.nanmean(ks.checks['bicubic_distance']):.4f}"
        )
        for i in range(min(len(ks), max_tiles)):
            k = ks.kernels[i]
            norm = np.clip(k / max(k.max(), 1e-12), 0, 1)
            zoom = max(1, 200 // k.shape[0])
            heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
            heat = cv2.resize(heat, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
            tag = "" if v[i] else " INVALID"
            name = Path(str(ks.source[i])).stem or ks.kernel_id(i)  # the photo it came from, if any
            tiles.append(_label(heat, f"x{scale} {name}{tag}"))
    if tiles:
        size = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
        tiles = [cv2.resize(t, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for t in tiles]
        _write_sheet(sheet, _grid(tiles, cols=min(8, len(tiles))))
        lines.append(f"  contact sheet: {sheet}")
    return "\n".join(lines)


def noise_report(path: Path, sheet: Path, max_tiles: int = 64, gain: float = 8.0) -> str:
    bank = open_noise_bank(path)
    g = bank.group
    lines = [
        f"noise bank {path}: {bank.count} patches of {bank.patch_size}px from "
        f"{sum(1 for s in g.attrs['sources'] if s['patches'])}/{len(g.attrs['sources'])} sources, "
        f"{g.attrs['rejected']} candidates rejected (luma var < {g.attrs['max_var']}, mean > {g.attrs['min_mean']})"
    ]
    if bank.count == 0:
        lines.append("  (empty: no flat patches were found)")
        return "\n".join(lines)
    gv, cv = bank.column("gray_var"), bank.column("channel_var")
    lines.append(
        f"  luma variance min/median/max {gv.min():.2f}/{np.median(gv):.2f}/{gv.max():.2f}; "
        "channel noise std (R, G, B) median " + ", ".join(f"{v:.2f}" for v in np.sqrt(np.median(cv, 0))) + " levels"
    )
    idx = np.unique(np.linspace(0, bank.count - 1, min(bank.count, max_tiles)).round().astype(int))
    patches = bank.patches(idx)
    crop = min(bank.patch_size, 128)
    tiles = []
    for i, p in zip(idx, patches):
        p = p[:crop, :crop].astype(np.float32)
        amp = np.clip((p - p.mean(axis=(0, 1))) * gain + 128, 0, 255).astype(np.uint8)
        tiles.append(_label(amp[..., ::-1].copy(), f"#{i} {Path(str(g['source'][i])).stem}"))
    _write_sheet(sheet, _grid(tiles, cols=min(8, len(tiles))))
    lines.append(f"  contact sheet (noise x{gain:g} around mid-gray, {crop}px crops): {sheet}")
    return "\n".join(lines)


def inspect_bank(path: Path, sheet: Path | None = None) -> str:
    path = Path(path)
    kind = bank_kind(path)
    sheet = Path(sheet) if sheet else path.with_name(path.name.replace(".zarr", "") + "_sheet.png")
    return kernel_report(path, sheet) if kind == "realsr-kernel-bank" else noise_report(path, sheet)
