"""Reading source photos into float32 RGB [0, 1] with clear errors, and writing PNGs atomically."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from realsr.models.errors import RealsrError
from realsr.storage import image_formats as formats
from realsr.storage.atomic import write_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2", ".gif", *formats.HEIF_SUFFIXES, *formats.RAW_SUFFIXES}
ALPHA_NOTE = "alpha channel ignored; transparent pixels excluded from noise patches"  # degrade's use of it
SRGB_NOTE = "converted to sRGB from its ICC profile:"  # the summaries count the photos with this note


def is_image_name(rel: str) -> bool:
    """A relative path `list_images` would take: an image suffix, no hidden part."""
    path = Path(rel)
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in path.parts)


class BadImageError(RealsrError, ValueError):
    """An input that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # crosses process boundaries (Dask workers) intact
        return (type(self), (self.path, self.reason))


@dataclass
class SourceImage:
    """A decoded source photo and what was done to make it RGB."""

    path: str
    sha256: str
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    opaque: np.ndarray | None  # (H, W) bool where alpha is full; None when there is no alpha
    bit_depth: int
    notes: list[str] = field(default_factory=list)
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1] when the file has an alpha channel
    gray: bool = False  # the file is single-channel
    icc: bytes | None = None  # the file's embedded ICC profile, as found
    exif: bytes | None = None  # the file's raw EXIF block
    srgb_from: str | None = None  # the profile the pixels were converted to sRGB from (None: not converted)
    raw: bool = False  # a camera RAW (DNG): a clean HR source only


EXIF_ORIENTATION = 0x0112
DNG_VERSION = 50706  # the TIFF tag that makes a TIFF a DNG


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored) of JPEG/PNG/WebP/TIFF bytes; 1 when there is none."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright as viewers do (PIL's exif_transpose, in numpy)."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_images(folder: Path, recursive: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files (by suffix) under `folder`, sorted, and what was left out, each with why:
    other file types, subfolders that cannot be read (or, not `recursive`, any subfolder), and
    symlinks that loop or lead nowhere. Hidden files and folders are passed over."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"source folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"source {folder} is not a folder")
    images: list[Path] = []
    left_out: list[tuple[Path, str]] = []

    def unreadable(e: OSError) -> None:
        left_out.append((Path(e.filename), f"folder not readable ({e.strerror})"))

    seen_dirs = {folder.resolve()}
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        base = Path(root)
        if not recursive:
            left_out += [(base / d, "a subfolder (not read: only the folder's own images are)") for d in dirs if not d.startswith(".")]
            dirs.clear()
        for d in list(dirs):
            real = (base / d).resolve()
            if d.startswith(".") or real in seen_dirs:
                if not d.startswith("."):
                    left_out.append((base / d, "a link back into folders already read (loop)"))
                dirs.remove(d)
            seen_dirs.add(real)
        for name in files:
            p = base / name
            if name.startswith("."):
                continue
            if p.is_symlink() and not p.exists():
                left_out.append((p, "a link that leads nowhere (broken or a loop)"))
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                images.append(p)
            elif p.suffix.lower() in formats.OTHER_RAW:
                left_out.append((p, f"a camera RAW ({p.suffix}): only DNG is read (through rawpy); convert it to DNG"))
            else:
                left_out.append((p, f"not an image type ({p.suffix or 'no extension'})"))
    return sorted(images), sorted(left_out)


def _check_complete(path: Path, data: bytes) -> None:
    """Refuse truncated JPEG/PNG files that the decoders would silently fill with gray."""
    if data[:3] == b"\xff\xd8\xff":
        # FF D9 cannot occur inside entropy-coded data (FF is stuffed), so any EOI after the first
        # start-of-scan ends the image; motion photos append a video after it
        sos = data.find(b"\xff\xda")
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            raise BadImageError(path, "truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise BadImageError(path, "truncated PNG (no IEND chunk)")


_PIL_LIMIT = threading.Lock()


@dataclass(frozen=True)
class ImageHeader:
    """What the file's header says; enough to know the decoded size before decoding."""

    width: int
    height: int
    frames: int
    channels: int  # as the decoder returns them: gray 1, colour 3, with alpha (or palette) 4
    sample_bytes: int  # 1, 2 (16-bit) or 4 (float)

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.channels * self.sample_bytes


_MODE_CHANNELS = {"1": 1, "L": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "I": 1, "F": 1, "LA": 4, "PA": 4, "P": 4, "RGBA": 4, "CMYK": 4}


def header_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, frames) from the file's header alone, or None (see `image_header`)."""
    h = image_header(data)
    return (h.width, h.height, h.frames) if h else None


def image_header(data: bytes) -> ImageHeader | None:
    """The header alone (PIL reads no pixels), or None when PIL does not know the format (the
    decoder then has the last word). PIL calls 16-bit colour "RGB": PNG's IHDR and TIFF's
    BitsPerSample tag tell."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    kind = formats.container(data, "")
    if kind == "heif":
        formats.register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _PIL_LIMIT:  # PIL's own bomb limit is lifted for the header read: ours decides
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        w, h, frames, mode, fmt = im.size[0], im.size[1], int(getattr(im, "n_frames", 1)), im.mode, im.format
                        bits = getattr(im, "tag_v2", {}).get(258, (8,)) if fmt == "TIFF" else (8,)
                        if fmt == "TIFF" and DNG_VERSION in im.tag_v2:
                            return None  # a DNG: PIL reads the size of its preview (rawpy's decoder checks the size)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    channels = _MODE_CHANNELS.get(mode, 3)
    sample = 4 if mode == "F" else 2 if mode.startswith("I") else 1
    if fmt == "PNG" and len(data) > 25 and data[24] == 16:  # IHDR bit depth
        sample = 2
    if max(bits if isinstance(bits, tuple) else (bits,)) > 8:
        sample = max(sample, 2)
    return ImageHeader(w, h, frames, channels, sample)


def decode_image(path: Path | str, data: bytes, max_pixels: int = 200_000_000, upright: bool = False, to_srgb: bool = True) -> SourceImage:
    """Decode bytes into RGB float32; gray, 16-bit, alpha, palette and CMYK are converted, with notes.

    The size is read from the header first: an image over `max_pixels` is refused before a byte
    of it is decoded (a 600 KB PNG can hold 14500x14500 pixels). `upright` applies the EXIF
    orientation (what a viewer shows); degrade-flow reads pixels as stored (HEIC's own rotation,
    which its decoder always applies, aside). `to_srgb` converts pixels from an embedded ICC
    profile other than sRGB (every step computes in sRGB); False leaves them in the file's own.
    """
    path = Path(path)
    kind, img, header = _decode_pixels(path, data, max_pixels)
    notes: list[str] = [formats.RAW_NOTE] if kind == "raw" else []
    if header and header[2] > 1:
        notes.append(f"animated ({header[2]} frames): the first frame only")
    depth, scale = _sample_depth(path, img, notes)
    if upright and (turn := exif_orientation(data)) != 1:
        if kind is not None or data[:4] not in (b"II*\x00", b"MM\x00*"):  # OpenCV's TIFF decoder turns TIFFs itself
            img = apply_orientation(img, turn)
        notes.append(f"EXIF orientation {turn} applied")
    rgb, opaque, alpha, channels = _split_alpha(path, img[..., None] if img.ndim == 2 else img, depth, scale, data[:4] == b"GIF8", notes)
    icc, exif = formats.metadata(data) if kind != "raw" else (None, None)
    srgb_from = None
    if to_srgb and icc and channels != 1 and depth != 32 and not formats.is_srgb(icc):
        try:
            rgb = formats.to_srgb(rgb, icc)
        except formats.FormatError as e:
            raise BadImageError(path, str(e)) from None
        srgb_from = formats.profile_name(icc)
        notes.append(f"{SRGB_NOTE} {srgb_from}")
    rgb = rgb.astype(np.float32)
    rgb *= np.float32(1.0 / scale)
    if depth == 32:
        np.clip(rgb, 0.0, 1.0, out=rgb)
    return SourceImage(str(path), sha256_bytes(data), rgb, opaque, depth, notes, alpha, channels == 1, icc, exif, srgb_from, kind == "raw")


def _decode_pixels(path: Path, data: bytes, max_pixels: int) -> tuple[str | None, np.ndarray, tuple[int, int, int] | None]:
    """(the container kind or None for OpenCV's formats, the pixels in OpenCV's layout, the
    header's (w, h, frames)); the size is checked from the header before decoding and after."""
    if not data:
        raise BadImageError(path, "empty file")
    _check_complete(path, data)
    header = header_size(data)
    if header and header[0] * header[1] > max_pixels:
        raise BadImageError(path, f"{header[0]}x{header[1]} is over the {max_pixels / 1e6:g} MP limit (--max-megapixels)")
    if kind := formats.container(data, path.suffix):
        try:
            img = formats.decode(kind, data, max_pixels)
        except formats.FormatError as e:
            raise BadImageError(path, str(e)) from None
    else:
        try:
            img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            raise BadImageError(path, f"cannot decode ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise BadImageError(path, "not a readable image (corrupt or unsupported format)")
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise BadImageError(path, f"{w}x{h} is over the {max_pixels / 1e6:g} MP limit (--max-megapixels)")
    return kind, img, header


def _sample_depth(path: Path, img: np.ndarray, notes: list[str]) -> tuple[int, float]:
    """(bits, full scale) of the samples, noting a conversion."""
    if img.dtype == np.uint8:
        return 8, 255.0
    if img.dtype == np.uint16:
        notes.append("16-bit, converted to float")
        return 16, 65535.0
    if img.dtype == np.float32:
        notes.append("float image, clipped to [0, 1]")
        return 32, 1.0
    raise BadImageError(path, f"unsupported sample type {img.dtype}")


def _split_alpha(path: Path, img: np.ndarray, depth: int, scale: float, gif: bool, notes: list[str]):
    """(RGB, opaque mask, alpha in [0, 1], channels) of HWC pixels in OpenCV's order."""
    channels = img.shape[2]
    if channels == 1:
        notes.append("gray, replicated to RGB")
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), None, None, 1
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), None, None, 3
    if channels != 4:
        raise BadImageError(path, f"{channels} channels are not supported")
    opaque = img[..., 3] >= (scale if depth != 32 else 1.0)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if gif and opaque.all():  # OpenCV gives every GIF an alpha channel
        return rgb, None, None, 4
    alpha = np.clip(img[..., 3].astype(np.float32) / np.float32(scale), 0, 1)
    notes.append(ALPHA_NOTE)
    return rgb, opaque, alpha, 4


def jpeg_quality(data: bytes) -> dict | None:
    """A JPEG's libjpeg quality read from its quantisation tables (None for other formats):
    {"quality": 1-100, "table_error": mean absolute table difference at it (0: exact)}."""
    if data[:2] != b"\xff\xd8":
        return None
    import io

    from PIL import Image

    from realsr.models.jpeg import estimate_quality

    try:
        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None)
        quality, err = estimate_quality(tables or {})
    except (OSError, ValueError):
        return None
    return {"quality": quality, "table_error": round(err, 3)}


def remote_images(url: str) -> list[str]:
    """The photos a degrade run would take from the folder at `url` (relative paths, sorted)."""
    from realsr.storage.remote import Mirror

    return sorted(Mirror(url, "sources").remote_files(is_image_name))


def read_bytes(path: Path | str) -> bytes:
    """A file's bytes (a local path, or a URL: a photo a run at a URL names by it), with read
    failures turned into BadImageError naming the file."""
    from realsr.storage.remote import RemoteError, is_url, remote_bytes

    if is_url(path):
        try:
            data = remote_bytes(str(path))
        except RemoteError as e:
            raise BadImageError(path, f"cannot read ({e})") from None
        if data is None:
            raise BadImageError(path, "cannot read (no such file)")
        return data
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read ({e.strerror or e})") from None


def read_image(path: Path | str, max_pixels: int = 200_000_000, upright: bool = False) -> SourceImage:
    return decode_image(path, read_bytes(path), max_pixels, upright)


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 to PNG bytes with OpenCV's defaults (2x faster than level 1 here)."""
    if rgb.dtype != np.uint8:
        raise TypeError(f"encode_png takes uint8 RGB, got {rgb.dtype} (use models.degradation.to_uint8)")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Atomic (temp file + rename) but not fsynced: images are many and a rerun rebuilds them."""
    write_bytes(path, encode_png(rgb), durable=False)


def read_png_uint8(path: Path) -> np.ndarray:
    """An 8-bit RGB PNG written by this project, as uint8 HWC."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise BadImageError(path, "cannot read intermediate PNG")
    return np.ascontiguousarray(img[..., ::-1])
