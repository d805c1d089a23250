"""evaluate-flow's steps: models side by side on a folder of LR photos, with or without HR.

Per (model, image) one record: the SR image written under `OUT/sr/<model>/`, seconds, and, when
the HR is there (matched by file stem), PSNR/SSIM on Y and RGB and LPIPS; with or without HR, NIQE
(no reference, lower is more natural) of the SR image as written. A record is keyed on
the model file's hash, the LR image's hash (and the HR's) and the settings that change numbers,
and written last: a rerun computes only what is new. Bicubic upscaling is always a row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from realsr.models.degradation import to_uint8
from realsr.models.devices import resolve_device, use_compute_threads
from realsr.models.errors import InputError
from realsr.models.metrics import LPIPS, psnr, ssim
from realsr.models.niqe import Pristine, niqe
from realsr.models.tiling import upscale
from realsr.steps import sheets
from realsr.storage.atomic import file_sha256, read_json, write_bytes, write_json
from realsr.storage.images import IMAGE_SUFFIXES, BadImageError, read_bytes, read_image, sha256_bytes, write_png
from realsr.storage.model_files import LoadedGenerator, load_generator, resolve_weights
from realsr.storage.run_dir import overlap
from realsr.storage.weights import require

METRICS_VERSION = "1"  # in every record's key: bump when a metric's definition changes
BICUBIC = "bicubic"


@dataclass
class TestImage:
    stem: str
    lr: Path
    hr: Path | None
    key: str  # the hashes of its files


def test_images(lr_dir: Path, hr_dir: Path | None) -> tuple[list[TestImage], list[str]]:
    """LR files (sorted), each with the HR of the same stem when there is an HR folder; and notes."""
    lr_dir = Path(lr_dir)
    if not lr_dir.is_dir():
        raise NotADirectoryError(f"{lr_dir}: not a folder of LR images")
    lrs = sorted(p for p in lr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not lrs:
        raise FileNotFoundError(f"{lr_dir}: no images")
    _refuse_shared_stems(lrs, "LR")
    hrs = {}
    if hr_dir is not None:
        hr_files = sorted(p for p in Path(hr_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        _refuse_shared_stems(hr_files, "HR")
        hrs = {p.stem: p for p in hr_files}
    notes, out = [], []
    for p in lrs:
        hr = hrs.get(p.stem)
        if hr_dir is not None and hr is None:
            notes.append(f"{p.name}: no HR of the same stem in {hr_dir} (SR only)")
        digest = sha256_bytes(read_bytes(p)) + (sha256_bytes(read_bytes(hr)) if hr else "")
        out.append(TestImage(p.stem, p, hr, hashlib.sha256(digest.encode()).hexdigest()))
    return out, notes


def check_out(out: Path, lr: Path, hr: Path | None) -> None:
    """evaluate writes results.csv, results.md, contact_sheet.png, sr/ and cache/ into `out`: never
    among the test images. `out` may not be, hold, or lie inside the LR or HR folder (links
    resolved); refused before any work."""
    for flag, folder in (("--lr", lr), ("--hr", hr)):
        if folder is None:
            continue
        f = Path(folder).resolve()
        if how := overlap(out, folder):
            raise InputError(
                (
                    f"--out {out} {how} the {flag} folder {folder}{f' ({f})' if f != Path(folder).absolute() else ''}: evaluate's results would mix with the "
                    f"test images; choose another --out"
                )
            )


def _refuse_shared_stems(files: list[Path], kind: str) -> None:
    """Results are named (and HR matched) by file stem: two files of one stem would overwrite each
    other's SR image and share an HR, so they are refused before any work."""
    stems: dict[str, list[Path]] = {}
    for p in files:
        stems.setdefault(p.stem.lower(), []).append(p)
    clashes = [ps for ps in stems.values() if len(ps) > 1]
    if clashes:
        listed = "; ".join(", ".join(p.name for p in ps) for ps in clashes)
        raise InputError(f"{kind} images share a file name stem ({listed}) in {files[0].parent}: their results would overwrite each other; rename them")


def model_label(spec: str, used: set[str]) -> str:
    """A short unique name for a model's rows and folder: its file stem (or name)."""
    base = Path(str(spec)).stem if Path(str(spec)).suffix else str(spec)
    label, n = base, 2
    while label in used:
        label, n = f"{base}-{n}", n + 1
    used.add(label)
    return label


@lru_cache(maxsize=2)
def lpips_metric(alexnet: Path | None) -> LPIPS:
    """LPIPS-alex v0.1: the given AlexNet trunk file, else the verified `alexnet` weights (storage.weights)."""
    return LPIPS(alexnet or require("alexnet"), require("lpips-alex-heads"))


@lru_cache(maxsize=1)
def niqe_model() -> Pristine:
    """NIQE's pristine model: the verified `niqe` weights (storage.weights)."""
    return Pristine.load(require("niqe"))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    h, w = lr.shape[:2]
    return np.clip(cv2.resize(lr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC), 0, 1)


def _hr_for(img: TestImage, shape: tuple[int, int], scale: int) -> np.ndarray:
    """The HR, cut to LR size x scale when it is up to scale-1 px larger (mod-crop); else an error."""
    hr = read_image(img.hr, upright=True).rgb
    h, w = shape
    if hr.shape[0] < h or hr.shape[1] < w or hr.shape[0] - h >= scale or hr.shape[1] - w >= scale:
        raise BadImageError(img.hr, f"HR {hr.shape[1]}x{hr.shape[0]} does not match LR x{scale} ({w}x{h})")
    return hr[:h, :w]


@dataclass(frozen=True)
class Scoring:
    """How every model is run and scored (`flows.settings.EvaluateSettings` builds it with `.spec()`)."""

    scale: int
    crop: int  # pixels dropped on each side before PSNR/SSIM (the settings' crop_border, default the scale)
    tile: int
    tile_pad: int
    device: str
    lpips_alexnet: Path | None
    niqe: bool  # NIQE of each SR image (needs no HR)

    def key(self, model_digest: str, image_key: str) -> str:
        """An image's record key under one model: anything that changes its figures changes it."""
        return hashlib.sha256(
            json.dumps([METRICS_VERSION, model_digest, image_key, self.scale, self.crop, self.tile, self.tile_pad, self.niqe], sort_keys=True).encode()
        ).hexdigest()


def evaluate_model(
    label: str, gen: LoadedGenerator | None, model_digest: str, images: list[TestImage], out: Path, s: Scoring, log: Callable[[str], None] = print
) -> tuple[list[dict], list[dict]]:
    """Every image through one model (None: bicubic); cached records are reused. Returns (rows, failures)."""
    if images:  # one LR folder (and HR folder) per run: test_images lists them
        check_out(out, images[0].lr.parent, next((img.hr.parent for img in images if img.hr is not None), None))
    rows, failures = [], []
    device = resolve_device(s.device)
    use_compute_threads()
    if gen is not None:
        gen.model.to(device)
    lp = None
    for n, img in enumerate(images):
        rec_path = out / "cache" / f"{s.key(model_digest, img.key)}.json"
        sr_path = out / "sr" / label / f"{img.stem}.png"
        if rec_path.exists() and sr_path.exists():
            rows.append({**read_json(rec_path), "cached": True})
            continue
        try:
            lr = read_image(img.lr, upright=True).rgb
            t0 = time.perf_counter()
            if gen is None:
                sr = bicubic_upscale(lr, s.scale)
            else:
                sr = upscale(gen.model, lr, gen.scale, s.tile, s.tile_pad, 16, device)
            secs = time.perf_counter() - t0
            row = {"image": img.stem, "model": label, "seconds": round(secs, 4), "sr": str(sr_path)}
            if img.hr is not None:
                hr = _hr_for(img, sr.shape[:2], s.scale)
                if lp is None:
                    lp = lpips_metric(s.lpips_alexnet)
                row.update(
                    psnr_y=psnr(sr, hr, s.crop, y=True),
                    ssim_y=ssim(sr, hr, s.crop, y=True),
                    psnr_rgb=psnr(sr, hr, s.crop, y=False),
                    ssim_rgb=ssim(sr, hr, s.crop, y=False),
                    lpips=lp(sr, hr),
                )
            written = to_uint8(sr)
            if s.niqe:  # on the image as written, so it can be recomputed from sr/
                try:
                    row["niqe"] = niqe(written.astype(np.float32) / 255.0, niqe_model(), s.crop)
                except ValueError as e:  # too small or flat: the row stands without it
                    log(f"{label}: {img.stem}: no NIQE: {e}")
            write_png(sr_path, written)
            write_json(rec_path, row)
            rows.append({**row, "cached": False})
            log(
                f"{label}: {n + 1}/{len(images)} {img.stem} ({secs:.1f} s)"
                + (f" PSNR-Y {row['psnr_y']:.2f} LPIPS {row['lpips']:.3f}" if "lpips" in row else "")
                + (f" NIQE {row['niqe']:.3f}" if "niqe" in row else "")
            )
        except (BadImageError, ValueError, OSError) as e:
            failures.append({"image": img.stem, "model": label, "reason": str(e)})
            log(f"{label}: {img.stem} FAILED: {e}")
    return rows, failures


HR_COLUMNS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lpips")  # against the HR
METRIC_COLUMNS = (*HR_COLUMNS, "niqe")  # niqe: no reference, every image big enough


def means(rows: list[dict], order: list[str]) -> list[dict]:
    """Per model: images, mean of each metric (over the images that have it: HR given, NIQE defined) and of seconds."""
    out = []
    for label in order:
        got = [r for r in rows if r["model"] == label]
        if not got:
            continue
        m = {"model": label, "images": len(got), "scored": sum("psnr_y" in r for r in got), "seconds": float(np.mean([r["seconds"] for r in got]))}
        for c in METRIC_COLUMNS:
            vals = [r[c] for r in got if c in r]
            if vals:
                m[c] = float(np.mean(vals))
        out.append(m)
    return out


def write_results(out: Path, rows: list[dict], summary: list[dict], failed_models: list[dict] = ()) -> tuple[Path, Path]:
    """results.csv (per image and model) and results.md (means, each over the `scored` images
    that have an HR; NIQE over those it is defined for; then the models that could not be run, with why), atomically."""
    cols = ["image", "model", *[c for c in METRIC_COLUMNS if any(c in r for r in rows)], "seconds", "sr"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["image"], r["model"])):
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_bytes(out / "results.csv", buf.getvalue().encode())
    mcols = [c for c in METRIC_COLUMNS if any(c in m for m in summary)]
    names = {"psnr_y": "PSNR-Y dB", "ssim_y": "SSIM-Y", "psnr_rgb": "PSNR-RGB dB", "ssim_rgb": "SSIM-RGB", "lpips": "LPIPS-alex", "niqe": "NIQE"}
    scored = ["scored (with HR)"] if set(mcols) & set(HR_COLUMNS) else []
    lines = ["| " + " | ".join(["model", "images", *scored, *(names[c] for c in mcols), "s/image"]) + " |", "|" + "---|" * (len(mcols) + len(scored) + 3)]
    for m in summary:  # without HR: model, images, NIQE and seconds
        vals = [f"{m[c]:.4f}" if c in m else "-" for c in mcols]
        lines.append("| " + " | ".join([m["model"], str(m["images"]), *([str(m["scored"])] if scored else []), *vals, f"{m['seconds']:.2f}"]) + " |")
    if "niqe" in mcols:
        lines += ["", "NIQE: no reference needed, lower is more natural (Mittal et al. 2013); over the SR images of two 96 px blocks or more."]
    if failed_models:
        lines += ["", "Models that could not be run:", *[f"- {f['model']}: {f['reason']}" for f in failed_models]]
    write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    return out / "results.csv", out / "results.md"


def contact_sheet(out: Path, images: list[TestImage], order: list[str], scale: int, crop: int = 48, max_rows: int = 8) -> Path | None:
    """Aligned crops, a row per image: LR (nearest), each model, HR; so people look rather than read."""
    shown = images[:max_rows]
    with_hr = any(i.hr is not None for i in shown)
    tiles = []
    lrs = [read_image(img.lr, upright=True).rgb for img in shown]
    c = min([crop] + [min(lr.shape[:2]) for lr in lrs])  # one crop size: the sheet is a grid
    for img, lr in zip(shown, lrs):
        y, x = (lr.shape[0] - c) // 2, (lr.shape[1] - c) // 2
        size, box = c * scale, (slice(y * scale, (y + c) * scale), slice(x * scale, (x + c) * scale))
        row = [("LR", cv2.resize(lr[y : y + c, x : x + c], (c * scale, c * scale), interpolation=cv2.INTER_NEAREST))]
        for label in order:
            p = out / "sr" / label / f"{img.stem}.png"
            row.append((label, read_image(p).rgb[box] if p.exists() else None))
        if with_hr:
            row.append(("HR", read_image(img.hr, upright=True).rgb[box] if img.hr is not None else None))
        for name, t in row:
            canvas = np.ones((size, size, 3), np.float32)  # white where a model failed or there is no HR
            if t is not None:
                canvas[: t.shape[0], : t.shape[1]] = t[:size, :size]
            tiles.append(sheets.label(to_uint8(canvas[..., ::-1]), f"{img.stem[:12]} {name}"))
    if not tiles:
        return None
    path = out / "contact_sheet.png"
    sheets.write_sheet(path, sheets.grid(tiles, cols=len(order) + 1 + with_hr))
    return path


def load_models(specs: list[str], scale: int) -> tuple[list[tuple[str, LoadedGenerator | None, str]], list[dict]]:
    """(label, generator, file digest) per model spec, bicubic first; and the specs that could
    not be loaded, each with why (a bad model fails alone: the others are still scored)."""
    used: set[str] = {BICUBIC}
    out: list[tuple[str, LoadedGenerator | None, str]] = [(BICUBIC, None, BICUBIC)]
    failed = []
    for spec in specs:
        label = model_label(spec, used)
        try:
            path = resolve_weights(spec)
            out.append((label, load_generator(path, expect_scale=scale), file_sha256(path)))
        except (FileNotFoundError, ValueError, OSError) as e:  # CheckpointError is a ValueError
            failed.append({"model": label, "image": "(all)", "reason": str(e)})
    return out, failed
