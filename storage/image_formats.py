"""Phone and camera formats OpenCV cannot read, and colour profiles, for `storage.images`.

HEIC/HEIF (iPhones) decode through pillow-heif, AVIF through Pillow's own plugin, DNG through
rawpy (LibRaw). Each arrives in OpenCV's layout (BGR, BGRA or gray; uint8 or uint16) so the rest
of the reader treats every format alike. Colour: OpenCV ignores ICC profiles, so an iPhone's
Display P3 photo would be read as if it were sRGB (greens and reds come out dull); `to_srgb`
converts with LittleCMS (Pillow's ImageCms), relative colorimetric as browsers do.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from realsr.models.errors import RealsrError

HEIF_SUFFIXES = (".heic", ".heif", ".avif")
RAW_SUFFIXES = (".dng",)
# camera RAW formats read as none: named in the left-out list rather than called "not an image"
OTHER_RAW = (".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")
RAW_NOTE = "RAW (DNG) developed by LibRaw: a clean HR source only (no noise patches, no kernel)"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
EXTRA = {"heif": "pillow-heif (pip install 'realsr-pipeline[heic]')", "raw": "rawpy (pip install 'realsr-pipeline[raw]')"}


class FormatError(RealsrError, ValueError):
    """A file of a known kind that cannot be decoded here; `storage.images` names the file."""


def container(data: bytes, suffix: str = "") -> str | None:
    """'heif', 'avif' or 'raw' for the formats this module decodes, else None (OpenCV's)."""
    if data[4:8] == b"ftyp":
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(len(data), 8 + int.from_bytes(data[:4], "big")), 4)}
        if brands & _AVIF_BRANDS and not brands & {b"heic", b"heix"}:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heif"
    if suffix.lower() in RAW_SUFFIXES and data[:4] in (b"II*\x00", b"MM\x00*"):
        return "raw"
    return None


def processed_photos(paths: list) -> list:
    """The photos as the camera hands them out, RAW files left out: KernelGAN learns their blur."""
    return [p for p in paths if not str(p).lower().endswith(RAW_SUFFIXES)]


def register_heif() -> bool:
    """Teach Pillow HEIC/HEIF (header reads, EXIF, ICC); False when pillow-heif is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def decode(kind: str, data: bytes, max_pixels: int) -> np.ndarray:
    """The pixels of a 'heif', 'avif' or 'raw' file in OpenCV's layout."""
    if kind == "raw":
        return _decode_raw(data, max_pixels)
    if kind == "heif" and not register_heif():
        raise FormatError(f"HEIC/HEIF needs {EXTRA['heif']}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > max_pixels:
                raise FormatError(f"{im.size[0]}x{im.size[1]} is over the {max_pixels / 1e6:g} MP limit (--max-megapixels)")
            im.load()
            a = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
    except FormatError:
        raise
    except UnidentifiedImageError:
        raise FormatError(f"cannot decode {kind.upper()} (damaged, or not a {kind.upper()} file)") from None
    except Exception as e:  # libheif/libavif raise their own types for damaged files
        raise FormatError(f"cannot decode {kind.upper()} ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return np.ascontiguousarray(a[..., [2, 1, 0, 3]] if a.shape[2] == 4 else a[..., ::-1])


def _decode_raw(data: bytes, max_pixels: int) -> np.ndarray:
    """A DNG developed as a camera would, with its own white balance, to 16-bit sRGB. Used as a
    clean HR source only: RAW noise is not the noise of the photos the camera hands out."""
    try:
        import rawpy
    except ImportError:
        raise FormatError(f"DNG needs {EXTRA['raw']}") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h > max_pixels:
                raise FormatError(f"{w}x{h} is over the {max_pixels / 1e6:g} MP limit (--max-megapixels)")
            rgb = raw.postprocess(use_camera_wb=True, output_bps=16, output_color=rawpy.ColorSpace.sRGB)
    except FormatError:
        raise
    except Exception as e:  # rawpy's LibRawError family, and OSError for what it cannot open
        raise FormatError(f"cannot decode DNG ({type(e).__name__}: {str(e).strip() or 'unreadable'})") from None
    return np.ascontiguousarray(rgb[..., ::-1])


def metadata(data: bytes) -> tuple[bytes | None, bytes | None]:
    """The file's embedded ICC profile and raw EXIF block, from its header (no pixels read)."""
    from PIL import Image

    if container(data) == "heif":
        register_heif()
    try:
        with Image.open(io.BytesIO(data)) as im:
            icc = im.info.get("icc_profile") or None
            exif = im.info.get("exif") or None
            if exif is None and (tags := im.getexif()):
                exif = tags.tobytes()
    except Exception:
        return None, None
    return icc, (bytes(exif) if exif else None)


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """LittleCMS's sRGB profile (IEC 61966-2.1 primaries and tone curve), as Pillow builds it."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def profile_name(icc: bytes) -> str:
    from PIL import ImageCms

    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip() or "unnamed profile"
    except (OSError, ImageCms.PyCMSError):
        return "unreadable profile"


def is_srgb(icc: bytes) -> bool:
    """sRGB under any of its names (IEC 61966-2.1, v2 or v4): converting would change nothing."""
    return "srgb" in profile_name(icc).lower().replace(" ", "")


def to_srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """RGB uint8 or uint16 pixels in the colour space of `icc`, converted to sRGB.

    8-bit converts pixel by pixel through LittleCMS. LittleCMS in Pillow takes 8-bit RGB only, so
    16-bit is converted in float from the profile's matrix and tone curves (the kind of profile
    cameras and phones write: Display P3, Adobe RGB, ProPhoto); a table-based profile is refused."""
    from PIL import Image, ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        transform = ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), "RGB", "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (OSError, ImageCms.PyCMSError) as e:
        raise FormatError(f"its ICC profile cannot be used ({str(e).strip() or type(e).__name__})") from None
    if rgb.dtype == np.uint8:
        return np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(rgb)), transform))
    shaper = _matrix_shaper(icc)
    if shaper is None:
        raise FormatError("16-bit with a table-based ICC profile is not converted (LittleCMS in Pillow takes 8-bit only): save it as 8-bit or as sRGB")
    matrix, curves = shaper
    srgb, _ = _matrix_shaper(srgb_icc())
    x = rgb.astype(np.float64) / 65535.0
    linear = np.stack([curves[c](x[..., c]) for c in range(3)], -1)
    out = linear @ (np.linalg.solve(srgb, matrix)).T
    return np.clip(_gamma(out) * 65535.0 + 0.5, 0, 65535).astype(np.uint16)


def _matrix_shaper(icc: bytes):
    """(RGB -> XYZ matrix, three tone curves) of a matrix/TRC profile, or None for a table-based
    one. The exact float conversion for 16-bit pixels."""
    import struct

    tags = {}
    for i in range(int.from_bytes(icc[128:132], "big")):
        sig, off, size = struct.unpack(">4sII", icc[132 + 12 * i : 144 + 12 * i])
        tags[sig] = icc[off : off + size]
    if not all(k in tags for k in (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")):
        return None
    s15 = lambda b, n: np.array(struct.unpack(f">{n}i", b[: 4 * n]), np.float64) / 65536.0  # noqa: E731
    matrix = np.stack([s15(tags[k][8:], 3) for k in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
    curves = [_curve(tags[k]) for k in (b"rTRC", b"gTRC", b"bTRC")]
    return (matrix, curves) if all(curves) else None


def _curve(tag: bytes):
    """An ICC 'curv' or 'para' tone curve as a function of arrays in [0, 1]."""
    import struct

    if tag[:4] == b"curv":
        n = int.from_bytes(tag[8:12], "big")
        if n == 0:
            return lambda v: v
        if n == 1:
            gamma = int.from_bytes(tag[12:14], "big") / 256.0
            return lambda v: v**gamma
        table = np.array(struct.unpack(f">{n}H", tag[12 : 12 + 2 * n]), np.float64) / 65535.0
        return lambda v: np.interp(v, np.linspace(0, 1, n), table)
    if tag[:4] == b"para":
        kind = int.from_bytes(tag[8:10], "big")
        count = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(kind)
        if count is None:
            return None
        g, a, b, c, d, e, f = [*(np.array(struct.unpack(f">{count}i", tag[12 : 12 + 4 * count])) / 65536.0), 0, 0, 0, 0, 0, 0][:7]
        if kind == 0:
            return lambda v: v**g
        if kind == 1:  # (a v + b)^g above -b/a, else 0
            return lambda v: np.where(v >= -b / a, np.maximum(a * v + b, 0) ** g, 0.0)
        if kind == 2:
            return lambda v: np.where(v >= -b / a, np.maximum(a * v + b, 0) ** g + c, c)
        if kind == 3:
            return lambda v: np.where(v >= d, np.maximum(a * v + b, 0) ** g, c * v)
        return lambda v: np.where(v >= d, np.maximum(a * v + b, 0) ** g + e, c * v + f)
    return None


def _gamma(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)
