"""Statistics and PNG contact sheets of the banks, so people can look rather than read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realsr.models.noise import BRIGHTNESS_BINS
from realsr.steps.degrade_kernels import SPREAD_FLAG
from realsr.steps.sheets import grid, label, write_sheet
from realsr.storage.banks import bank_kind, open_kernel_bank, open_noise_bank


def spread_lines(ks) -> list[str]:
    """Each photo's seed-to-seed spread, the ones over `SPREAD_FLAG` flagged."""
    spread = ks.checks["spread"]
    have = np.flatnonzero(np.isfinite(spread))
    out = [f"    seed spread (mean total variation of each seed's kernel to their median): median {np.median(spread[have]):.3f}, max {spread[have].max():.3f}"]
    for i in have:
        flag = f"  <- seeds disagree (over {SPREAD_FLAG})" if spread[i] > SPREAD_FLAG else ""
        out.append(f"      {Path(str(ks.source[i])).name}: {spread[i]:.3f}{flag}")
    return out


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
        if scale == 2 and "spread" in ks.checks:  # the same per photo at x4 (its kernel is derived)
            lines += spread_lines(ks)
        for i in range(min(len(ks), max_tiles)):
            k = ks.kernels[i]
            norm = np.clip(k / max(k.max(), 1e-12), 0, 1)
            zoom = max(1, 200 // k.shape[0])
            heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
            heat = cv2.resize(heat, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
            tag = "" if v[i] else " INVALID"
            if "spread" in ks.checks and ks.checks["spread"][i] > SPREAD_FLAG:
                tag += " SEEDS DISAGREE"
            name = Path(str(ks.source[i])).stem or ks.kernel_id(i)  # the photo it came from, if any
            tiles.append(label(heat, f"x{scale} {name}{tag}"))
    if tiles:
        size = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
        tiles = [cv2.resize(t, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for t in tiles]
        write_sheet(sheet, grid(tiles, cols=min(8, len(tiles))))
        lines.append(f"  contact sheet: {sheet}")
    return "\n".join(lines)


def noise_report(path: Path, sheet: Path, max_tiles: int = 64, gain: float = 8.0) -> str:
    bank = open_noise_bank(path)
    attrs, rule = bank.attrs, bank.rule
    how = (
        f"luma var < {attrs.get('max_var')}, mean > {attrs.get('min_mean')}"
        if rule == "reference"
        else f"noise std within {attrs.get('tolerance')} of each photo's own level"
    )
    lines = [
        f"noise bank {path}: {bank.count} patches of {bank.patch_size}px from "
        f"{sum(1 for s in attrs['sources'] if s['patches'])}/{len(attrs['sources'])} sources, "
        f"{attrs['rejected']} candidates rejected (rule {rule}: {how})"
    ]
    if bank.count == 0:
        lines.append("  (empty: no flat patches were found)")
        return "\n".join(lines)
    gv, cv = bank.column("gray_var"), bank.column("channel_var")
    lines.append(
        f"  luma noise std min/median/max {np.sqrt(gv.min()):.2f}/{np.sqrt(np.median(gv)):.2f}/{np.sqrt(gv.max()):.2f}; "
        "channel noise std (R, G, B) median " + ", ".join(f"{v:.2f}" for v in np.sqrt(np.median(cv, 0))) + " levels"
    )
    idx = np.unique(np.linspace(0, bank.count - 1, min(bank.count, max_tiles)).round().astype(int))
    noise = bank.noise(idx).astype(np.float32)
    crop, source = min(bank.patch_size, 128), bank.column("source")
    tiles = []
    for i, p in zip(idx, noise):
        p = p[:crop, :crop].astype(np.float32)
        amp = np.clip((p - p.mean(axis=(0, 1))) * gain + 128, 0, 255).astype(np.uint8)
        tiles.append(label(amp[..., ::-1].copy(), f"#{i} {Path(str(source[i])).stem}"))
    write_sheet(sheet, grid(tiles, cols=min(8, len(tiles))))
    lines.append(f"  contact sheet (noise x{gain:g} around mid-gray, {crop}px crops): {sheet}")
    plot = sheet.with_name(sheet.stem + "_level.png")
    write_sheet(plot, noise_level_plot(bank.column("gray_mean"), np.sqrt(gv), [s.get("noise_level") for s in attrs["sources"]]))
    lines.append(f"  noise level against brightness (dots: patches, red: their median per 16 levels, gray: each photo's estimate): {plot}")
    return "\n".join(lines)


def noise_level_plot(brightness: np.ndarray, sigma: np.ndarray, levels: list, size: tuple[int, int] = (560, 360)) -> np.ndarray:
    """The bank's noise std against brightness as a BGR image (cv2 only: no plotting dependency)."""
    w, h = size
    left, bottom, top, right = 48, 34, 12, 12
    img = np.full((h, w, 3), 255, np.uint8)
    curves = [(np.asarray(lv["centres"]), np.array([np.nan if v is None else v for v in lv["sigma"]], float)) for lv in levels if lv]
    ymax = max([float(np.nanmax(sigma)) if len(sigma) else 1.0] + [float(np.nanmax(c[1])) for c in curves if np.isfinite(c[1]).any()]) * 1.1 or 1.0
    px = lambda b: int(left + b / 255.0 * (w - left - right))  # noqa: E731
    py = lambda s: int(h - bottom - s / ymax * (h - bottom - top))  # noqa: E731
    black, gray = (0, 0, 0), (190, 190, 190)
    cv2.line(img, (left, h - bottom), (w - right, h - bottom), black, 1)
    cv2.line(img, (left, h - bottom), (left, top), black, 1)
    for b in range(0, 256, 64):
        cv2.putText(img, str(b), (px(b) - 8, h - bottom + 14), cv2.FONT_HERSHEY_PLAIN, 0.9, black, 1, cv2.LINE_AA)
    for k in range(5):
        v = ymax * k / 4
        cv2.putText(img, f"{v:.1f}", (4, py(v) + 4), cv2.FONT_HERSHEY_PLAIN, 0.9, black, 1, cv2.LINE_AA)
    cv2.putText(img, "brightness (luma, 0-255)", (w // 2 - 90, h - 4), cv2.FONT_HERSHEY_PLAIN, 1.0, black, 1, cv2.LINE_AA)
    cv2.putText(img, "noise std", (left + 6, top + 12), cv2.FONT_HERSHEY_PLAIN, 1.0, black, 1, cv2.LINE_AA)
    for centres, sig in curves:
        pts = [(px(c), py(s)) for c, s in zip(centres, sig) if np.isfinite(s)]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, gray, 1, cv2.LINE_AA)
    for b, s in zip(brightness, sigma):
        cv2.circle(img, (px(float(b)), py(float(s))), 2, (200, 120, 0), -1, cv2.LINE_AA)
    edges = BRIGHTNESS_BINS
    med = [
        ((lo + hi) / 2, float(np.median(sigma[(brightness >= lo) & (brightness < hi)])))
        for lo, hi in zip(edges, edges[1:])
        if ((brightness >= lo) & (brightness < hi)).any()
    ]
    for a, b in zip(med, med[1:]):
        cv2.line(img, (px(a[0]), py(a[1])), (px(b[0]), py(b[1])), (0, 0, 220), 2, cv2.LINE_AA)
    return img


def inspect_bank(path: Path, sheet: Path | None = None) -> str:
    path = Path(path)
    kind = bank_kind(path)
    sheet = Path(sheet) if sheet else path.with_name(path.name.replace(".zarr", "") + "_sheet.png")
    return kernel_report(path, sheet) if kind == "realsr-kernel-bank" else noise_report(path, sheet)
