"""`realsr upscale`: photos through an SR generator, as Real-ESRGAN's inference script does.

A file or a folder; each image keeps what it was: gray stays gray, 16-bit stays 16-bit, alpha is
upscaled on its own (by the model, or bicubic), the EXIF orientation is applied first. Small
images of one size go through the network together. A bad file fails alone with its reason; the
others finish and the summary lists it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from realsr.models.tiling import run_batch, tile_count, to_dtype, upscale
from realsr.storage.atomic import write_bytes
from realsr.storage.checkpoints import LoadedGenerator
from realsr.storage.images import IMAGE_SUFFIXES, BadImageError, SourceImage, read_image


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
    batch: int = 1  # same-sized whole images per forward pass
    batch_megapixels: float = 1.0  # ... as long as the batch's input stays under this


@dataclass
class UpscaleReport:
    written: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # inputs not read, each with why


class UpscaleError(ValueError):
    """Settings that would lose or overwrite files; found before any image is computed."""


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def inputs(path: Path) -> tuple[list[Path], list[dict]]:
    """One file, or the images of a folder (not recursive, sorted); and the folder's other files."""
    path = Path(path)
    if path.is_file():
        return [path], []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        other = [{"source": str(p), "reason": f"not an image type ({p.suffix or 'no extension'})"} for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES], other
    raise FileNotFoundError(f"{path}: no such file or folder")


WRITABLE = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")


def output_path(src: Path, out: Path, opts: UpscaleOptions, many: bool, img: SourceImage | None = None) -> Path:
    """Where `src`'s result goes; with `img`, a JPEG name turns PNG where alpha or 16 bits need it."""
    ext = opts.ext if opts.ext != "auto" else (src.suffix.lower().lstrip(".") or "png")
    if img is not None and ext in ("jpg", "jpeg") and (img.alpha is not None or img.bit_depth == 16):
        ext = "png"  # JPEG holds neither alpha nor 16 bits
    if ext not in WRITABLE:
        ext = "png"
    name = f"{src.stem}_{opts.suffix}.{ext}" if opts.suffix else f"{src.stem}.{ext}"
    return (out / name) if many or out.is_dir() or not out.suffix else out


def plan_outputs(paths: list[Path], out: Path, opts: UpscaleOptions) -> tuple[dict[Path, Path], list[dict]]:
    """Each input's output, checked before any work: none may be an input, no two may share a
    name (compared case-blind), and the folder must be writable. An input that is another input's
    output (a rerun into the input folder) is not read again: it is listed as skipped."""
    many = len(paths) > 1
    plan = {p: output_path(p, Path(out), opts, many) for p in paths}
    by_file = {p.resolve(): p for p in paths}
    own = {by_file[t.resolve()]: src for src, t in plan.items() if t.resolve() in by_file and by_file[t.resolve()] != src}
    skipped = [{"source": str(p), "reason": f"the output of {src.name} from an earlier run (not read again)"} for p, src in own.items()]
    plan = {p: t for p, t in plan.items() if p not in own}
    same = [p for p, t in plan.items() if t.resolve() == p.resolve()]
    if same:
        raise UpscaleError(f"the output would overwrite the input {same[0]}" + (f" (and {len(same) - 1} more)" if len(same) > 1 else "") + ": choose another -o or a --suffix")
    names: dict[str, list[Path]] = {}
    for p, t in plan.items():
        names.setdefault(str(t.resolve()).lower(), []).append(p)
    clashes = [ps for ps in names.values() if len(ps) > 1]
    if clashes:
        listed = "; ".join(f"{', '.join(p.name for p in ps)} -> {plan[ps[0]].name}" for ps in clashes)
        raise UpscaleError(f"inputs would write the same output file ({listed}): rename them, or upscale them one at a time")
    folder = Path(out) if many or Path(out).is_dir() or not Path(out).suffix else Path(out).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".realsr-write-check-"):
            pass
    except OSError as e:
        raise UpscaleError(f"output folder {folder} cannot be written ({e.strerror or e})") from None
    return plan, skipped


def batch_key(img: SourceImage, opts: UpscaleOptions) -> tuple | None:
    """Images with the same key go through the network together; None: this one goes alone
    (batching is off, or it is tiled, or it is too large to be worth batching)."""
    h, w = img.rgb.shape[:2]
    if opts.batch <= 1 or (opts.tile and max(h, w) > opts.tile) or h * w * opts.batch > opts.batch_megapixels * 1e6:
        return None
    return (h, w, img.alpha is not None)


def upscale_images(imgs: list[SourceImage], gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Each image upscaled, in the file's own layout (H, W[, C]) and sample type.

    One image runs as the options say (tiled or whole); several (of one `batch_key`) run whole,
    stacked into one forward pass.
    """
    dtype = torch_dtype(opts.precision, device)

    def run(arrays: list[np.ndarray], types: list) -> list[np.ndarray]:
        if len(arrays) == 1:
            return [upscale(gen.model, arrays[0], gen.scale, opts.tile, opts.tile_pad, opts.overlap, device, dtype, True, types[0], progress)]
        outs = run_batch(gen.model, arrays, device, dtype, True)
        if progress:
            progress(len(arrays))
        return [to_dtype(o, t) for o, t in zip(outs, types)]

    types = [np.uint16 if img.bit_depth == 16 else np.uint8 for img in imgs]
    rgbs = run([img.rgb for img in imgs], types)
    alphas: list[np.ndarray | None] = [None] * len(imgs)
    if imgs[0].alpha is not None:  # a batch is all with alpha or all without
        if opts.alpha == "model":
            alphas = [a.mean(axis=2) for a in run([np.repeat(img.alpha[..., None], 3, axis=2) for img in imgs], [np.float32] * len(imgs))]
        else:
            alphas = [cv2.resize(img.alpha, (img.alpha.shape[1] * gen.scale, img.alpha.shape[0] * gen.scale), interpolation=cv2.INTER_CUBIC) for img in imgs]
    return [finish(img, rgb, a, gen.scale, opts, t) for img, rgb, a, t in zip(imgs, rgbs, alphas, types)]


def finish(img: SourceImage, rgb: np.ndarray, alpha: np.ndarray | None, scale: int, opts: UpscaleOptions, out_type) -> np.ndarray:
    """The network's RGB (and alpha) back into the file's layout, at the output scale."""
    planes = [rgb] + ([to_dtype(np.clip(alpha, 0, 1), out_type)[..., None]] if alpha is not None else [])
    out = np.concatenate(planes, axis=2) if len(planes) > 1 else rgb
    if opts.outscale and abs(opts.outscale - scale) > 1e-9:
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


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, BadImageError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# RuntimeError: torch (out of memory, ...)
_FAILURES = (BadImageError, OSError, ValueError, RuntimeError)


def upscale_paths(
    paths: list[Path], out: Path, gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, bar=None, log: Callable[[str], None] = print
) -> UpscaleReport:
    """Every input in turn; a bad one is reported and skipped, the rest go on.

    Consecutive images of one `batch_key` are gathered up to `opts.batch` and upscaled together;
    a batch that fails (out of memory, say) is retried one image at a time, so only the image
    that is itself the problem fails.
    """
    plan, skipped = plan_outputs(paths, Path(out), opts)
    report = UpscaleReport(skipped=skipped)
    taken = {str(t.resolve()).lower(): p for p, t in plan.items()}
    pending: list[tuple[Path, SourceImage]] = []

    def fail(path: Path, e: Exception) -> None:
        report.failed.append({"source": str(path), "reason": _reason(e)})
        log(f"FAILED {path}: {_reason(e)}")

    def run(group: list[tuple[Path, SourceImage]]) -> None:
        t0 = time.perf_counter()
        imgs = [img for _, img in group]
        if bar is not None:
            h, w = imgs[0].rgb.shape[:2]
            per_image = tile_count(h, w, opts.tile, opts.overlap) if len(imgs) == 1 else 1
            bar.reset(total=per_image * (2 if imgs[0].alpha is not None and opts.alpha == "model" else 1) * (1 if len(imgs) == 1 else len(imgs)))
            bar.set_description(group[0][0].name[:30] + (f" +{len(group) - 1}" if len(group) > 1 else ""))
        try:
            results = upscale_images(imgs, gen, opts, device, bar.update if bar is not None else None)
        except _FAILURES as e:
            if len(group) == 1:
                return fail(group[0][0], e)
            log(f"a batch of {len(group)} failed ({_reason(e)}); one at a time")
            for one in group:
                run([one])
            return
        secs = (time.perf_counter() - t0) / len(group)
        for (path, img), result in zip(group, results):
            try:
                target = output_path(path, Path(out), opts, len(paths) > 1, img)
                if taken.get(str(target.resolve()).lower(), path) != path:  # turned PNG onto another input's name
                    raise OSError(f"its output {target.name} is the output of {taken[str(target.resolve()).lower()].name}")
                write_bytes(target, encode(result, target), durable=False)
            except _FAILURES as e:
                fail(path, e)
                continue
            report.written.append({"source": str(path), "output": str(target), "size": [int(result.shape[1]), int(result.shape[0])], "seconds": round(secs, 3), "notes": img.notes})
            log(f"{path} -> {target} ({result.shape[1]}x{result.shape[0]}, {secs:.1f} s)")

    def flush() -> None:
        if pending:
            run(pending[:])
            pending.clear()

    for path in plan:
        try:
            img = read_image(path, int(opts.max_megapixels * 1e6), upright=True)
        except _FAILURES as e:
            fail(path, e)
            continue
        key = batch_key(img, opts)
        if pending and (key is None or key != batch_key(pending[0][1], opts)):
            flush()
        if key is None:
            run([(path, img)])
            continue
        pending.append((path, img))
        if len(pending) >= opts.batch:
            flush()
    flush()
    return report


def upscale_files(
    source: Path, out: Path, model: str, opts: UpscaleOptions, device: str = "auto", bar=None, log: Callable[[str], None] = print,
    blend: float | None = None, blend_with: str | None = None,
) -> UpscaleReport:
    """`realsr upscale`'s driver: a file or a folder through `model` (a checkpoint or a released
    name), or through `model` blended at share `blend` with `blend_with` (default: its init).
    Names and the output folder are checked before the model loads; the report lists what was
    written, what failed and what was not read, each with why."""
    from dataclasses import replace

    from realsr.models.devices import resolve_device
    from realsr.storage.checkpoints import load_generator

    dev = resolve_device(device)
    opts = replace(opts, precision="fp32" if dev.type == "cpu" else opts.precision)  # half precision is slow on CPUs
    from realsr.steps.blend import blend_partner, blended_generator

    partner = blend_partner(model, blend_with) if blend is not None else None  # no init to blend with: refused first
    paths, others = inputs(source)
    plan_outputs(paths, out, opts)  # refuses lost or overwritten files before any work
    if partner is None:
        gen = load_generator(model)
    else:
        gen = blended_generator(model, partner, blend)
        log(f"blend: {blend:g} x {model} + {1 - blend:g} x {partner}")
    dtype = torch_dtype(opts.precision, dev)
    gen.model.to(dev, dtype)
    gen.model.to(memory_format=torch.channels_last)  # 1.19x on this CPU too (BENCHMARKS.md)
    log(f"{gen.describe()} on {dev} ({str(dtype).removeprefix('torch.')}); {len(paths)} image(s); tile {opts.tile or 'off'}")
    report = upscale_paths(paths, out, gen, opts, dev, bar, log)
    report.skipped[:0] = others
    return report
