"""`realsr upscale`: photos through an SR generator, as Real-ESRGAN's inference script does.

A file or a folder; each image keeps what it was: gray stays gray, 16-bit stays 16-bit, alpha is
upscaled on its own (by the model, or bicubic), the EXIF orientation is applied first. A bad
file fails alone with its reason; the others finish and the summary lists it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from models.tiling import tile_count, to_dtype, upscale
from storage.atomic import write_bytes
from storage.checkpoints import LoadedGenerator
from storage.images import IMAGE_SUFFIXES, BadImageError, SourceImage, read_image


@dataclass(frozen=True)
class UpscaleOptions:
    outscale: float | None = None  # final size / input size; None: the model's scale
    tile: int = 0  # 0: whole image at once
    tile_pad: int = 48
    overlap: int = 16
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
    ext: str = "auto"  # auto (the input's, PNG where alpha or 16-bit needs it), png, jpg
    suffix: str = "out"
    alpha: str = "model"  # model or bicubic
    max_megapixels: float = 200.0


@dataclass
class UpscaleReport:
    written: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def inputs(path: Path) -> list[Path]:
    """One file, or the images of a folder (not recursive, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    raise FileNotFoundError(f"{path}: no such file or folder")


def output_path(src: Path, out: Path, img: SourceImage, opts: UpscaleOptions, many: bool) -> Path:
    ext = opts.ext
    if ext == "auto":
        ext = src.suffix.lower().lstrip(".") or "png"
    if ext in ("jpg", "jpeg") and (img.alpha is not None or img.bit_depth == 16):
        ext = "png"  # JPEG holds neither alpha nor 16 bits
    if ext not in ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp"):
        ext = "png"
    name = f"{src.stem}_{opts.suffix}.{ext}" if opts.suffix else f"{src.stem}.{ext}"
    return (out / name) if many or out.is_dir() or not out.suffix else out


def upscale_image(img: SourceImage, gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The upscaled image in the file's own layout (H, W[, C]) and sample type."""
    dtype = torch_dtype(opts.precision, device)
    out_type = np.uint16 if img.bit_depth == 16 else np.uint8
    run = lambda a, t: upscale(gen.model, a, gen.scale, opts.tile, opts.tile_pad, opts.overlap, device, dtype, True, t, progress)  # noqa: E731
    rgb = run(img.rgb, out_type)
    planes = [rgb]
    if img.alpha is not None:
        if opts.alpha == "model":
            a = run(np.repeat(img.alpha[..., None], 3, axis=2), np.float32).mean(axis=2)
        else:
            h, w = img.alpha.shape
            a = cv2.resize(img.alpha, (w * gen.scale, h * gen.scale), interpolation=cv2.INTER_CUBIC)
        planes.append(to_dtype(np.clip(a, 0, 1), out_type)[..., None])
    out = np.concatenate(planes, axis=2) if len(planes) > 1 else rgb
    if opts.outscale and abs(opts.outscale - gen.scale) > 1e-9:
        h, w = img.rgb.shape[:2]
        size = (max(1, round(w * opts.outscale)), max(1, round(h * opts.outscale)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4)
        if out.ndim == 2:
            out = out[..., None]
    if img.gray:  # back to one channel, as the file was
        out = cv2.cvtColor(np.ascontiguousarray(out[..., :3]), cv2.COLOR_RGB2GRAY)
    return out


def encode(out: np.ndarray, path: Path) -> bytes:
    """RGB(A)/gray samples to file bytes by the path's suffix (JPEG at quality 95)."""
    if out.ndim == 3:
        out = cv2.cvtColor(out, cv2.COLOR_RGBA2BGRA if out.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix.lower(), out, params)
    if not ok:
        raise OSError(f"{path}: encoding failed")
    return buf.tobytes()


def upscale_paths(
    paths: list[Path], out: Path, gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, bar=None, log: Callable[[str], None] = print
) -> UpscaleReport:
    """Every input in turn; a bad one is reported and skipped, the rest go on."""
    report = UpscaleReport()
    many = len(paths) > 1
    for path in paths:
        t0 = time.perf_counter()
        try:
            img = read_image(path, int(opts.max_megapixels * 1e6), upright=True)
            h, w = img.rgb.shape[:2]
            calls = tile_count(h, w, opts.tile, opts.overlap) * (2 if img.alpha is not None and opts.alpha == "model" else 1)
            tick = None
            if bar is not None:
                bar.reset(total=calls)
                bar.set_description(path.name[:30])
                tick = bar.update
            result = upscale_image(img, gen, opts, device, tick)
            target = output_path(path, out, img, opts, many)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(target, encode(result, target), durable=False)
        except (BadImageError, OSError, ValueError, RuntimeError) as e:  # RuntimeError: torch (out of memory, ...)
            reason = e.reason if isinstance(e, BadImageError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            report.failed.append({"source": str(path), "reason": reason})
            log(f"FAILED {path}: {reason}")
            continue
        secs = time.perf_counter() - t0
        report.written.append({"source": str(path), "output": str(target), "size": [int(result.shape[1]), int(result.shape[0])], "seconds": round(secs, 3), "notes": img.notes})
        log(f"{path} -> {target} ({result.shape[1]}x{result.shape[0]}, {secs:.1f} s)")
    return report
