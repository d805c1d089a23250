"""`realsr upscale`: photos through an SR generator, as Real-ESRGAN's inference script does.

A file or a folder; each image keeps what it was: gray stays gray, 16-bit stays 16-bit, alpha is
upscaled on its own (by the model, or bicubic), the EXIF orientation is applied first. Small
images of one size go through the network together. The output keeps the photo's EXIF (its
orientation reset) and carries an ICC profile (`output_meta`). A bad file fails alone with its
reason; the others finish and the summary lists it. An image is planned from its header before it is
decoded: one that would not fit in memory whole is tiled, one that would not fit at all is
refused (steps/upscale_plan.py). Outputs replace only what upscale wrote (its record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from realsr.models.tiling import run_batch, tile_count, to_dtype, upscale
from realsr.steps.upscale_plan import (  # noqa: F401  (UpscaleOptions, UpscaleError, inputs: this module's API too)
    Plan,
    UpscaleError,
    UpscaleOptions,
    activation_bytes,
    check_options,
    inputs,
    keep_reason,
    memory_plan,
    output_path,
    plan_outputs,
)
from realsr.storage.atomic import write_bytes
from realsr.storage.image_formats import is_srgb, profile_name
from realsr.storage.image_write import HOLDS_ALPHA, encode_image, icc_space, srgb_icc, upright_exif
from realsr.storage.images import ALPHA_NOTE, SRGB_NOTE, BadImageError, ImageHeader, SourceImage, decode_image, image_header, read_bytes
from realsr.storage.model_files import LoadedGenerator


@dataclass
class UpscaleReport:
    written: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # inputs not read, each with why
    kept: list[dict] = field(default_factory=list)  # inputs not upscaled: their output is a file upscale may not replace

    @property
    def done(self) -> bool:
        """Everything asked for was written (nothing failed, nothing held back by a file in the way)."""
        return not self.failed and not self.kept


class LogProgress:
    """tqdm's `reset`/`set_description`/`update` where stderr is not a terminal (a log file, a
    pipe): a plain line every `every` seconds while a long image is tiled."""

    def __init__(self, log: Callable[[str], None], every: float = 30.0):
        self.log, self.every = log, every
        self.name, self.total, self.n, self.t0, self.last = "", 0, 0, 0.0, 0.0

    def reset(self, total: int) -> None:
        self.total, self.n = total, 0
        self.t0 = self.last = time.monotonic()

    def set_description(self, name: str) -> None:
        self.name = name

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            self.log(f"{self.name}: {self.n}/{self.total} tiles ({now - self.t0:.0f} s)")


def upscale_notes(img: SourceImage, target: Path, planned: Path, opts: UpscaleOptions) -> list[str]:
    """The reader's notes said as they hold for an upscaled file (the reader speaks for degrade)."""
    said = {
        ALPHA_NOTE: f"alpha channel kept, upscaled on its own ({'by the model' if opts.alpha == 'model' else 'bicubic'})",
        "gray, replicated to RGB": "gray: upscaled as RGB, written gray",
        "16-bit, converted to float": "16-bit, written 16-bit",
        "float image, clipped to [0, 1]": "float image, clipped to [0, 1], written 8-bit",
    }
    notes = [said.get(n, n) for n in img.notes if not n.startswith(SRGB_NOTE)]  # output_meta says it
    if target.suffix.lower() != planned.suffix.lower():
        held = planned.suffix.lower().lstrip(".") in HOLDS_ALPHA
        notes.append(
            (
                f"written as {target.suffix.lstrip('.').upper()}: {planned.suffix.lstrip('.').upper()} holds no "
                f"{'alpha' if img.alpha is not None and not held else '16 bits'}"
            )
        )
    return notes


def output_meta(img: SourceImage, out: np.ndarray, opts: UpscaleOptions) -> tuple[bytes | None, bytes | None, dict[str, str]]:
    """The ICC profile and EXIF (orientation reset, size updated) the output carries, with a
    note on each by "icc"/"exif".

    By default the pixels are sRGB (converted on reading where the file had another profile) and
    the output says so with an sRGB profile, also where the input had none: a colour-managed
    viewer then shows what the product computed rather than its own guess for an untagged file.
    With --profile keep the pixels were read in the file's own profile and the output carries
    that profile byte for byte. A profile the reader did not convert from (gray, float) stays."""
    colour = out.ndim == 3 and out.shape[2] >= 3
    icc, notes = None, {}
    if img.srgb_from:
        icc, notes["icc"] = srgb_icc(), f"sRGB profile written (converted from {img.srgb_from})"
    elif img.icc and icc_space(img.icc) == ("RGB" if colour else "GRAY"):
        if opts.profile == "srgb" and colour and is_srgb(img.icc):
            icc = srgb_icc()
        else:
            icc, notes["icc"] = img.icc, f"input profile kept ({profile_name(img.icc)})"
    else:
        icc = srgb_icc() if colour else None  # no RGB profile fits a gray image
        if img.icc:
            notes["icc"] = f"input ICC profile ({icc_space(img.icc) or '?'}) not written: it does not fit a {'colour' if colour else 'gray'} image"
    exif = None
    if img.exif:
        fixed = upright_exif(img.exif, (out.shape[1], out.shape[0]))
        if fixed is None:
            notes["exif"] = "EXIF not kept: not readable as TIFF"
        else:
            exif, turned = fixed
            notes["exif"] = "EXIF kept" + (" (orientation reset)" if turned != 1 else "")
    return icc, exif, notes


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def batch_key(img: SourceImage, opts: UpscaleOptions, tile: int) -> tuple | None:
    """Images with the same key go through the network together; None: this one goes alone
    (batching is off, or it is tiled, or it is too large to be worth batching)."""
    h, w = img.rgb.shape[:2]
    if opts.batch <= 1 or (tile and max(h, w) > tile) or h * w * opts.batch > opts.batch_megapixels * 1e6:
        return None
    return (h, w, img.alpha is not None)


def upscale_images(
    imgs: list[SourceImage], gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, progress: Callable[[int], None] | None = None
) -> list[np.ndarray]:
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


def encode(img: SourceImage, out: np.ndarray, path: Path, opts: UpscaleOptions) -> tuple[bytes, list[str]]:
    """RGB(A)/gray samples to file bytes by the path's suffix, with the profile and EXIF of
    `output_meta`; and the notes on them (what was kept, what the format could not hold)."""
    icc, exif, said = output_meta(img, out, opts)
    try:
        data, lost = encode_image(out, path.suffix, opts.quality, icc, exif)
    except (OSError, ValueError) as e:
        raise OSError(f"{path.suffix.lstrip('.').upper()} encoding failed ({e})") from None
    return data, [n for k, n in said.items() if k not in lost] + list(lost.values())


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, BadImageError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# RuntimeError: torch (out of memory, ...)
_FAILURES = (BadImageError, OSError, ValueError, RuntimeError)


def read_planned(path: Path, gen: LoadedGenerator, opts: UpscaleOptions, per_px: int, device_bytes: int | None) -> tuple[SourceImage, int, str | None]:
    """The image decoded, with the tile it runs with and a note when memory forced tiling. The
    header is read first: an image that cannot fit is refused before a byte of it is decoded."""
    data = read_bytes(path)
    header = image_header(data)
    if header is not None:
        tile, note = memory_plan(path, header, gen.scale, opts, per_px, device_bytes)
    img = decode_image(path, data, int(opts.max_megapixels * 1e6), upright=True, to_srgb=opts.profile != "keep")
    if header is None:  # a format PIL does not know: planned from the decoded pixels
        h, w = img.rgb.shape[:2]
        channels = 4 if img.alpha is not None else (1 if img.gray else 3)
        tile, note = memory_plan(path, ImageHeader(w, h, 1, channels, max(1, img.bit_depth // 8)), gen.scale, opts, per_px, device_bytes)
    return img, tile, note


def upscale_paths(
    paths: list[Path],
    out: Path,
    gen: LoadedGenerator,
    opts: UpscaleOptions,
    device: torch.device,
    bar=None,
    log: Callable[[str], None] = print,
    plan: Plan | None = None,
) -> UpscaleReport:
    """Every input in turn; a bad one is reported and skipped, the rest go on.

    Consecutive images of one `batch_key` are gathered up to `opts.batch` and upscaled together;
    a batch that fails (out of memory, say) is retried one image at a time, so only the image
    that is itself the problem fails. Each output is recorded in the folder's record before it
    is written, and is written only where nothing upscale did not write is in the way.
    """
    run = _Run(paths, Path(out), gen, opts, device, bar, log, plan or plan_outputs(paths, Path(out), opts))
    pending: list[tuple[Path, SourceImage]] = []
    for path in run.plan.targets:
        try:
            img, run.tiles[path], note = read_planned(path, gen, opts, run.per_px, run.device_bytes)
        except _FAILURES as e:
            run.fail(path, e)
            continue
        if note:
            img.notes.append(note)
            log(f"{path}: {note}")
        key = batch_key(img, opts, run.tiles[path])
        if pending and (key is None or key != batch_key(pending[0][1], opts, run.tiles[pending[0][0]])):
            run.group(pending[:])
            pending.clear()
        if key is None:
            run.group([(path, img)])
            continue
        pending.append((path, img))
        if len(pending) >= opts.batch:
            run.group(pending[:])
            pending.clear()
    if pending:
        run.group(pending)
    return run.report


class _Run:
    """One `upscale_paths` call's state: the plan, the report, each image's tile."""

    def __init__(self, paths: list[Path], out: Path, gen: LoadedGenerator, opts: UpscaleOptions, device: torch.device, bar, log, plan: Plan):
        self.out, self.gen, self.opts, self.device, self.bar, self.log, self.plan = out, gen, opts, device, bar, log, plan
        self.report = UpscaleReport(skipped=list(plan.skipped), kept=list(plan.kept))
        if plan.record.problem:
            log(plan.record.problem)
        self.many = len(paths) > 1
        self.taken = {str(t.resolve()).lower(): p for p, t in plan.targets.items()}
        self.read = {p.resolve() for p in plan.targets} | {Path(k["source"]).resolve() for k in plan.kept}  # the user's inputs (not earlier outputs)
        self.per_px = activation_bytes(gen.model, gen.scale, torch_dtype(opts.precision, device))
        self.device_bytes = int(0.85 * torch.cuda.get_device_properties(device).total_memory) if device.type == "cuda" else None  # the rest: weights, allocator
        self.tiles: dict[Path, int] = {}

    def fail(self, path: Path, e: Exception) -> None:
        self.report.failed.append({"source": str(path), "reason": _reason(e)})
        self.log(f"FAILED {path}: {_reason(e)}")

    def group(self, group: list[tuple[Path, SourceImage]]) -> None:
        """Upscale images together; a failed batch goes again one image at a time."""
        t0 = time.perf_counter()
        imgs, opts, bar = [img for _, img in group], self.opts, self.bar
        one = replace(opts, tile=self.tiles[group[0][0]]) if len(group) == 1 else opts
        h, w = imgs[0].rgb.shape[:2]
        per_image = tile_count(h, w, one.tile, one.overlap) if len(imgs) == 1 else 1
        if per_image > 1:
            self.log(f"{group[0][0]}: {w}x{h} in {per_image} tiles of {one.tile} px")
        if bar is not None:
            bar.reset(total=per_image * (2 if imgs[0].alpha is not None and opts.alpha == "model" else 1) * (1 if len(imgs) == 1 else len(imgs)))
            bar.set_description(group[0][0].name[:30] + (f" +{len(group) - 1}" if len(group) > 1 else ""))
        try:
            results = upscale_images(imgs, self.gen, one, self.device, bar.update if bar is not None else None)
        except _FAILURES as e:
            if len(group) == 1:
                return self.fail(group[0][0], e)
            self.log(f"a batch of {len(group)} failed ({_reason(e)}); one at a time")
            for item in group:
                self.group([item])
            return
        secs = (time.perf_counter() - t0) / len(group)
        for (path, img), result in zip(group, results):
            self.write(path, img, result, secs)

    def write(self, path: Path, img: SourceImage, result: np.ndarray, secs: float) -> None:
        """One output, where nothing upscale did not write is in the way; recorded first."""
        opts, plan = self.opts, self.plan
        try:
            target = output_path(path, self.out, opts, self.many, img)
            if self.taken.get(str(target.resolve()).lower(), path) != path:  # turned PNG onto another input's name
                raise OSError(f"its output {target.name} is the output of {self.taken[str(target.resolve()).lower()].name}")
            why = (
                f"its output {target.name} is an input of this run (not overwritten)"
                if target.resolve() in self.read
                else keep_reason(target, plan.record, opts.overwrite)
            )
            if why:  # turned PNG onto a file, or one appeared since the plan
                self.report.kept.append({"source": str(path), "output": str(target), "reason": why})
                self.log(f"not written {path}: {why}")
                return
            data, written = encode(img, result, target, opts)
            plan.record.record(target, data, str(path))
            write_bytes(target, data, durable=False)
        except _FAILURES as e:
            return self.fail(path, e)
        notes = upscale_notes(img, target, plan.targets[path], opts) + written
        self.report.written.append(
            {"source": str(path), "output": str(target), "size": [int(result.shape[1]), int(result.shape[0])], "seconds": round(secs, 3), "notes": notes}
        )
        self.log(f"{path} -> {target} ({result.shape[1]}x{result.shape[0]}, {secs:.1f} s)")


def upscale_files(
    source: Path,
    out: Path,
    model: str,
    opts: UpscaleOptions,
    device: str = "auto",
    bar=None,
    log: Callable[[str], None] = print,
    blend: float | None = None,
    blend_with: str | None = None,
) -> UpscaleReport:
    """`realsr upscale`'s driver: a file or a folder through `model` (a checkpoint or a released
    name), or through `model` blended at share `blend` with `blend_with` (default: its init).
    Names, the files in the way and the output folder are checked before the model loads; the
    report lists what was written, what failed, what was not read and what was held back by a
    file upscale did not write, each with why."""
    from realsr.models.devices import resolve_device, use_compute_threads
    from realsr.storage.model_files import load_generator

    check_options(opts)  # a missing encoder is refused before any work
    dev = resolve_device(device)
    use_compute_threads()
    opts = replace(opts, precision="fp32" if dev.type == "cpu" else opts.precision)  # half precision is slow on CPUs
    from realsr.steps.blend import blend_partner, blended_generator

    partner = blend_partner(model, blend_with) if blend is not None else None  # no init to blend with: refused first
    paths, others = inputs(source)
    if not paths:
        raise FileNotFoundError(
            f"{source}: no images (looked for png, jpg, tif, webp, bmp, gif, ...)"
            + (f"; {len(others)} other entries, e.g. {Path(others[0]['source']).name}: {others[0]['reason']}" if others else "")
        )
    plan = plan_outputs(paths, out, opts, named_file=Path(source).is_file())  # refuses lost or overwritten files before any work
    if not plan.targets:  # nothing to compute: the model is not even loaded
        return UpscaleReport(skipped=others + plan.skipped, kept=plan.kept)
    if partner is None:
        gen = load_generator(model)
    else:
        gen = blended_generator(model, partner, blend)
        log(f"blend: {blend:g} x {model} + {1 - blend:g} x {partner}")
    dtype = torch_dtype(opts.precision, dev)
    gen.model.to(dev, dtype)
    gen.model.to(memory_format=torch.channels_last)  # 1.19x on this CPU too (BENCHMARKS.md)
    log(f"{gen.describe()} on {dev} ({str(dtype).removeprefix('torch.')}); {len(plan.targets)} image(s); tile {opts.tile or 'off'}")
    report = upscale_paths(paths, out, gen, opts, dev, bar, log, plan)
    report.skipped[:0] = others
    return report
