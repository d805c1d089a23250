"""`realsr upscale`'s checks before work: which inputs, which output names, which files may be
replaced, and how much memory an image needs (read from its header, before it is decoded).

Outputs replace only files an earlier upscale wrote, as its record in the output folder says
(`storage.output_record`), unless `--overwrite`; a name like `y_out.png` proves nothing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from realsr.models.errors import RealsrError
from realsr.storage import image_write
from realsr.storage.image_formats import register_heif
from realsr.storage.images import BadImageError, ImageHeader, list_images
from realsr.storage.output_record import OutputRecord

MANIFEST = ".realsr-upscale.json"  # in the output folder: the files upscale wrote there
WRITABLE = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp", "heic", "heif", "avif")
FORMATS = ("auto", "png", "jpg", "webp", "heic")  # --format's choices
AUTO_TILES = (1024, 512, 256, 128, 64, 32)  # tried in turn when a whole image does not fit


@dataclass(frozen=True)
class UpscaleOptions:
    outscale: float | None = None  # final size / input size; None: the model's scale
    tile: int = 0  # 0: whole image at once (tiled anyway when it would not fit in max_memory_gb)
    tile_pad: int = 48
    overlap: int = 16
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
    ext: str = "auto"  # --format: auto (the input's), png, jpg, webp, heic; PNG where alpha or 16-bit needs it
    quality: int | None = None  # JPEG, WebP, HEIC, AVIF; None: 95, and WebP lossless (OpenCV's default, as before)
    profile: str = "srgb"  # srgb: colours converted, sRGB profile written; keep: the input's profile and colours
    suffix: str = "out"
    alpha: str = "model"  # model or bicubic
    max_megapixels: float = 200.0
    max_memory_gb: float | None = None  # host memory one image may take; None: 80 % of this machine's
    overwrite: bool = False  # replace existing files that upscale did not write
    batch: int = 1  # same-sized whole images per forward pass
    batch_megapixels: float = 1.0  # ... as long as the batch's input stays under this


class UpscaleError(RealsrError, ValueError):
    """Settings that would lose or overwrite files; found before any image is computed."""


def check_options(opts: UpscaleOptions) -> None:
    """Options refused before any work: a format whose encoder is missing, a quality or profile
    mode that does not exist."""
    if opts.ext not in FORMATS and opts.ext not in WRITABLE:
        raise UpscaleError(f"--format {opts.ext}: choose one of {', '.join(FORMATS)}")
    if opts.ext in ("heic", "heif") and not register_heif():
        raise UpscaleError(image_write.HEIC_MISSING)
    if opts.quality is not None and not 1 <= opts.quality <= 100:
        raise UpscaleError(f"--quality {opts.quality}: between 1 and 100")
    if opts.profile not in ("srgb", "keep"):
        raise UpscaleError(f"--profile {opts.profile}: srgb or keep")


def inputs(path: Path) -> tuple[list[Path], list[dict]]:
    """One file, or the images of a folder (not recursive, sorted); and what else the folder
    holds, each with why it is not read (other types, subfolders, links that loop or lead nowhere)."""
    path = Path(path)
    if path.is_file():
        return [path], []
    if path.is_dir():
        images, left_out = list_images(path, recursive=False)
        return images, [{"source": str(p), "reason": why} for p, why in left_out]
    raise FileNotFoundError(f"{path}: no such file or folder")


def output_path(src: Path, out: Path, opts: UpscaleOptions, many: bool, img=None) -> Path:
    """Where `src`'s result goes; with `img`, the name turns PNG where the format cannot hold its
    alpha (JPEG) or its 16 bits (all but PNG and TIFF; HEIC's 10 bits would still lose some)."""
    ext = opts.ext if opts.ext != "auto" else (src.suffix.lower().lstrip(".") or "png")
    if img is not None and ((img.alpha is not None and ext not in image_write.HOLDS_ALPHA) or (img.bit_depth == 16 and ext not in image_write.HOLDS_16)):
        ext = "png"
    if ext not in WRITABLE:
        ext = "png"
    name = f"{src.stem}_{opts.suffix}.{ext}" if opts.suffix else f"{src.stem}.{ext}"
    return (out / name) if many or out.is_dir() or not out.suffix else out


@dataclass
class Plan:
    targets: dict[Path, Path]  # input -> output, for the inputs to upscale
    record: OutputRecord  # what earlier runs wrote into the output folder
    skipped: list[dict] = field(default_factory=list)  # inputs not read: earlier outputs
    kept: list[dict] = field(default_factory=list)  # inputs not upscaled: their output is not upscale's to replace


def keep_reason(target: Path, record: OutputRecord, overwrite: bool) -> str | None:
    """Why `target` may not be written now; None when it may."""
    if overwrite and not target.is_dir():
        return None
    if record.blocks(target):
        return f"its output {target} exists and was not written by upscale (--overwrite replaces it)"
    return None


def plan_outputs(paths: list[Path], out: Path, opts: UpscaleOptions, named_file: bool = False) -> Plan:
    """Each input's output, checked before any work: none may be an input, no two may share a
    name (compared case-blind), the folder must be writable, and an existing file is replaced
    only when upscale's record says it wrote it (or with --overwrite). An input that upscale
    wrote into this folder earlier (a rerun into the input folder) is not read again, unless
    it is the one file the user named."""
    out = Path(out)
    many = len(paths) > 1
    folder = out if many or out.is_dir() or not out.suffix else out.parent
    record = OutputRecord(folder, MANIFEST)
    earlier = [p for p in paths if not named_file and record.owns(p)]
    skipped = [{"source": str(p), "reason": f"the output of {Path(record.source_of(p) or '?').name} from an earlier run (not read again)"} for p in earlier]
    plan = {p: output_path(p, out, opts, many) for p in paths if p not in earlier}
    same = [p for p, t in plan.items() if t.resolve() == p.resolve()]
    if same:
        raise UpscaleError(
            f"the output would overwrite the input {same[0]}" + (f" (and {len(same) - 1} more)" if len(same) > 1 else "") + ": choose another -o or a --suffix"
        )
    names: dict[str, list[Path]] = {}
    for p, t in plan.items():
        names.setdefault(str(t.resolve()).lower(), []).append(p)
    clashes = [ps for ps in names.values() if len(ps) > 1]
    if clashes:
        listed = "; ".join(f"{', '.join(p.name for p in ps)} -> {plan[ps[0]].name}" for ps in clashes)
        raise UpscaleError(f"inputs would write the same output file ({listed}): rename them, or upscale them one at a time")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".realsr-write-check-"):
            pass
    except OSError as e:
        raise UpscaleError(f"output folder {folder} cannot be written ({e.strerror or e})") from None
    result = Plan({}, record, skipped)
    read = {p.resolve() for p in plan}
    for p, t in plan.items():
        why = f"its output {t.name} is an input of this run (not overwritten)" if t.resolve() in read else keep_reason(t, record, opts.overwrite)
        if why:
            result.kept.append({"source": str(p), "output": str(t), "reason": why})
        else:
            result.targets[p] = t
    return result


# --- memory -----------------------------------------------------------------------------------


def default_max_memory_gb() -> float:
    """80 % of this machine's physical memory."""
    try:
        return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def activation_bytes(model: torch.nn.Module, scale: int, dtype: torch.dtype) -> int:
    """Peak network memory per input pixel: the widest conv's maps at the output resolution
    dominate (RRDB, 64 features, x4, fp32: 14.3 KB; measured 14.0 KB on 256x256)."""
    widest = max((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), default=64)
    return torch.tensor([], dtype=dtype).element_size() * widest * (3 * scale * scale + 8)


@dataclass(frozen=True)
class Need:
    """About how many bytes one image takes: the decoded file with its float RGB (and alpha),
    the output (in the file's sample type, with alpha and resize copies), and the network's work."""

    image: int
    output: int
    work: int
    on_device: bool  # the network's activations live on the GPU, not in host memory

    @property
    def host(self) -> int:
        return self.image + self.output + (self.work if not self.on_device else 0)

    def describe(self) -> str:
        return f"image {gb(self.image)}, output {gb(self.output)}, network {gb(self.work)}"


def gb(n: float) -> str:
    return f"{n / 1e9:.2g} GB" if n >= 1e8 else f"{n / 1e6:.2g} MB"


def need(h: ImageHeader, scale: int, opts: UpscaleOptions, tile: int, per_px: int, on_device: bool) -> Need:
    px, out_px = h.width * h.height, h.width * h.height * scale * scale
    alpha = h.channels == 4
    out_sample = 2 if h.sample_bytes == 2 else 1
    image = h.decoded_bytes + px * 3 * h.sample_bytes + px * (12 + 4 * alpha)  # decoded, 3-channel copy, float RGB, alpha
    output = out_px * 3 * out_sample
    if alpha:  # the alpha plane's own output (float32 x3 from the model), then the RGBA copy
        output += out_px * (16 if opts.alpha == "model" else 4) + out_px * 4 * out_sample
    if opts.outscale and abs(opts.outscale - scale) > 1e-9:
        output += int(px * opts.outscale**2) * h.channels * out_sample
    if tile and max(h.width, h.height) > tile:
        side_y, side_x = min(h.height, tile + 2 * opts.tile_pad), min(h.width, tile + 2 * opts.tile_pad)
        work = per_px * side_y * side_x + 2 * tile * scale * h.width * scale * 3 * 4  # one tile's maps; two rows of float tiles
    else:
        work = per_px * px + out_px * 3 * 4  # the whole image's maps and its float output
    return Need(image, output, work, on_device)


def memory_plan(path: Path, h: ImageHeader, scale: int, opts: UpscaleOptions, per_px: int, device_bytes: int | None) -> tuple[int, str | None]:
    """The tile this image runs with, and a note when it had to be tiled to fit; an image that
    fits in no way is refused, naming the numbers. `device_bytes`: the GPU's memory (None: CPU)."""
    limit_gb = opts.max_memory_gb or default_max_memory_gb()
    on_device = device_bytes is not None

    def over(n: Need) -> str | None:
        if n.host > limit_gb * 1e9:
            return f"about {gb(n.host)} of memory ({n.describe()}), over the {limit_gb:.3g} GB limit (--max-memory)"
        if on_device and n.work > device_bytes:
            return f"about {gb(n.work)} of GPU memory for the network, over the GPU's {gb(device_bytes)}"
        return None

    first = need(h, scale, opts, opts.tile, per_px, on_device)
    if (why := over(first)) is None:
        return opts.tile, None
    if not opts.tile:
        for t in AUTO_TILES:
            if max(h.width, h.height) > t and over(need(h, scale, opts, t, per_px, on_device)) is None:
                return t, f"tiled at {t} px: whole it needs {why}"
    smallest = need(h, scale, opts, opts.tile or AUTO_TILES[-1], per_px, on_device)
    raise BadImageError(
        path,
        f"{h.width}x{h.height} x{scale}{', even tiled,' if smallest.work < first.work or opts.tile else ''} needs {over(smallest)}: "
        "upscale a smaller image, or raise --max-memory where the machine has it",
    )
