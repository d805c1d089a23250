"""Output files that carry the photo's metadata: its EXIF and an ICC profile, in every format
that can hold them.

OpenCV encodes PNG, JPEG, BMP and 16-bit TIFF (it keeps 16 bits and gray, where Pillow cannot)
but writes no metadata, so the iCCP/eXIf chunks (PNG) and the APP1/APP2 segments (JPEG) are put
into its bytes here. WebP, AVIF and 8-bit TIFF go through Pillow, HEIC through pillow-heif, which
write both themselves. EXIF travels as bare TIFF bytes (no "Exif\\0\\0" prefix).
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np

from realsr.storage.image_formats import register_heif, srgb_icc  # noqa: F401  (srgb_icc: this module's API too)

HOLDS_ALPHA = {"png", "webp", "tif", "tiff", "bmp", "heic", "heif", "avif"}
HOLDS_16 = {"png", "tif", "tiff"}
HEIC_MISSING = "--format heic needs pillow-heif: pip install 'realsr-pipeline[heic]'"
_JPEG_SEGMENT = 65533  # the most a JPEG segment holds after its length field
EXIF_ORIENTATION, EXIF_IFD, PIXEL_X, PIXEL_Y = 0x0112, 0x8769, 0xA002, 0xA003
# TIFF tags of a file's own pixels: size, samples, compression, strips, tiles, planes, ICC profile
TIFF_LAYOUT = frozenset({254, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339, 34675})


def icc_space(icc: bytes) -> str:
    """The profile's data colour space from its header: 'RGB', 'GRAY', 'CMYK', ..."""
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else ""


def bare_tiff(exif: bytes) -> bytes | None:
    """EXIF as the TIFF bytes it is, whatever wrapper the reader gave it ("Exif\\0\\0", HEIF's
    4-byte offset); None when no TIFF header is found."""
    for start in range(0, min(len(exif), 16)):
        if exif[start : start + 4] in (b"II*\x00", b"MM\x00*"):
            return exif[start:]
    return None


def upright_exif(exif: bytes, size: tuple[int, int] | None = None) -> tuple[bytes, int] | None:
    """The EXIF block with its orientation set to 1 (the pixels were turned upright on reading)
    and, given `size` (w, h), its PixelX/YDimension set to the output's; (bare TIFF bytes, the
    orientation it had). Patched in place, so every other tag, maker notes included, stays
    byte for byte; only a TIFF input's block loses the tags of that file's own pixels first.
    None when the block is not readable TIFF."""
    tiff = bare_tiff(exif)
    if tiff is None:
        return None
    try:
        e = "<" if tiff[:2] == b"II" else ">"
        if TIFF_LAYOUT & _patch(bytearray(tiff), e, struct.unpack_from(e + "I", tiff, 4)[0], {}, TIFF_LAYOUT).keys():
            tiff = _without_layout(tiff)  # a TIFF input's EXIF is its whole first IFD
            e = "<" if tiff[:2] == b"II" else ">"
        out = bytearray(tiff)
        ifd0 = struct.unpack_from(e + "I", tiff, 4)[0]
        found = _patch(out, e, ifd0, {EXIF_ORIENTATION: 1})
        if size and (sub := found.get(EXIF_IFD)):
            _patch(out, e, sub, {PIXEL_X: size[0], PIXEL_Y: size[1]})
    except (struct.error, ValueError, OSError):
        return None
    return bytes(out), int(found.get(EXIF_ORIENTATION) or 1)


def _without_layout(tiff: bytes) -> bytes:
    """The EXIF of a TIFF file without the tags that describe that file's pixels (its size,
    strips, samples, profile): written into another file, they would describe it wrongly."""
    from PIL import Image

    ex = Image.Exif()
    ex.load(tiff)
    for tag in TIFF_LAYOUT:
        ex.pop(tag, None)
    return bare_tiff(ex.tobytes()) or b""


def _patch(buf: bytearray, e: str, ifd: int, values: dict[int, int], seen: frozenset = frozenset()) -> dict[int, int]:
    """Set the one-number SHORT/LONG tags of `values` in the IFD at `ifd` (a SHORT only where the
    value fits); the old values of those tags, and the Exif sub-IFD's offset, are returned, and
    the tags of `seen` found there (as True)."""
    found = {}
    for i in range(struct.unpack_from(e + "H", buf, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack_from(e + "HHI", buf, at)
        if tag in seen:
            found[tag] = True
        if count != 1 or typ not in (3, 4):
            continue
        fmt = e + ("H" if typ == 3 else "I")
        if tag == EXIF_IFD:
            found[tag] = struct.unpack_from(fmt, buf, at + 8)[0]
        if tag in values:
            found[tag] = struct.unpack_from(fmt, buf, at + 8)[0]
            if typ == 4 or values[tag] < 65536:
                struct.pack_into(fmt, buf, at + 8, values[tag])
    return found


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_meta(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """iCCP and eXIf chunks put right after IHDR (both must precede IDAT)."""
    end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4  # signature, IHDR
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif)
    return png[:end] + extra + png[end:]


def jpeg_with_meta(jpg: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """APP1 Exif and APP2 ICC_PROFILE segments (the profile split into numbered chunks) put after
    SOI and the JFIF APP0."""
    at = 2
    if jpg[2:4] == b"\xff\xe0":
        at += 2 + struct.unpack(">H", jpg[4:6])[0]
    segments = b""
    if exif:
        segments += b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(exif)) + b"Exif\0\0" + exif
    if icc:
        step = _JPEG_SEGMENT - 14
        parts = [icc[i : i + step] for i in range(0, len(icc), step)]
        for n, part in enumerate(parts, 1):
            segments += b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(part)) + b"ICC_PROFILE\0" + bytes([n, len(parts)]) + part
    return jpg[:at] + segments + jpg[at:]


def _pillow(out: np.ndarray, fmt: str, quality: int | None, icc: bytes | None, exif: bytes | None) -> bytes:
    from PIL import Image

    if fmt == "HEIF":
        register_heif()
    im = Image.fromarray(out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out)
    params = (
        {"compression": "tiff_adobe_deflate"}
        if fmt == "TIFF"
        else {"lossless": True}
        if fmt == "WEBP" and quality in (None, 100)
        else {"quality": quality or 95}
    )
    if icc:
        params["icc_profile"] = icc
    if exif:
        params["exif"] = b"Exif\0\0" + exif
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def encode_image(out: np.ndarray, ext: str, quality: int | None = None, icc: bytes | None = None, exif: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """`out` (RGB, RGBA or gray; uint8 or uint16) as the bytes of an `ext` file that carries `icc`
    and `exif` (bare TIFF bytes) where the format holds them; and what it could not hold, by
    "icc"/"exif", with why. JPEG, WebP, HEIC and AVIF at `quality` (None: 95; WebP lossless, as
    OpenCV writes it by default and upscale did before it took a quality; 100: lossless WebP too)."""
    ext = ext.lower().lstrip(".")
    lost: dict[str, str] = {}
    if ext in ("webp", "avif", "heic", "heif") or (ext in ("tif", "tiff") and out.dtype == np.uint8):
        fmt = {"webp": "WEBP", "avif": "AVIF", "heic": "HEIF", "heif": "HEIF"}.get(ext, "TIFF")
        return _pillow(out, fmt, quality, icc, exif), lost
    bgr = out
    if out.ndim == 3 and out.shape[2] in (3, 4):
        bgr = cv2.cvtColor(out, cv2.COLOR_RGBA2BGRA if out.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    jpeg = ext in ("jpg", "jpeg")
    ok, buf = cv2.imencode("." + ext, bgr, [cv2.IMWRITE_JPEG_QUALITY, quality or 95] if jpeg else [])
    if not ok:
        raise OSError(f"{ext.upper()} encoding failed")
    data = buf.tobytes()
    if ext == "png":
        return png_with_meta(data, icc, exif), lost
    if jpeg:
        if exif and len(exif) + 8 > _JPEG_SEGMENT:
            lost["exif"] = f"EXIF not kept: its {len(exif) // 1024} KB are over a JPEG segment's 64 KB (PNG keeps it)"
            exif = None
        return jpeg_with_meta(data, icc, exif), lost
    kind = "16-bit TIFF" if ext != "bmp" else "BMP"  # OpenCV's, which writes no metadata
    for key, what, value in (("icc", "ICC profile", icc), ("exif", "EXIF", exif)):
        if value:
            lost[key] = f"{what} not written: {kind} is written without it (PNG keeps it)"
    return data, lost
