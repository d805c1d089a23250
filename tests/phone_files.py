"""Test inputs made here rather than shipped: a Display P3 ICC profile and a Bayer DNG.

The profile is an ICC v2 matrix/TRC profile with Display P3's primaries (SMPTE EG 432-1), D65
white and the sRGB tone curve, as Apple's "Display P3" is; its colorants are adapted to the
D50 connection space with Bradford, as ICC requires. The DNG is a plain uncompressed 16-bit RGGB
mosaic with the tags LibRaw needs (DNG 1.4). `P3_TO_SRGB` is the reference conversion, computed
here from the primaries, not through LittleCMS.
"""

from __future__ import annotations

import struct

import numpy as np

D65 = (0.3127, 0.3290)
D50_XYZ = np.array([0.9642, 1.0, 0.8249])
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def rgb_to_xyz(primaries, white=D65) -> np.ndarray:
    """The RGB -> XYZ matrix of a colour space from its xy primaries and white point."""
    xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])  # noqa: E731
    m = np.stack([xyz(*p) for p in primaries], axis=1)
    return m * np.linalg.solve(m, xyz(*white))


P3 = rgb_to_xyz([(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)])
SRGB = rgb_to_xyz([(0.640, 0.330), (0.300, 0.600), (0.150, 0.060)])
P3_TO_SRGB = np.linalg.solve(SRGB, P3)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def p3_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """Display P3 values in [0, 1] to sRGB values in [0, 1], clipped (relative colorimetric)."""
    return srgb_encode(srgb_decode(rgb) @ P3_TO_SRGB.T)


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _desc_tag(text: str) -> bytes:
    a = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(a)) + a + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


def display_p3_icc(name: str = "Display P3") -> bytes:
    """An ICC v2 Display P3 profile (mntr, RGB -> XYZ, D50 connection)."""
    w = P3 @ np.ones(3)
    src, dst = BRADFORD @ w, BRADFORD @ D50_XYZ
    adapt = np.linalg.inv(BRADFORD) @ np.diag(dst / src) @ BRADFORD
    colorants = adapt @ P3
    trc = b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    tags = [
        (b"desc", _desc_tag(name)),
        (b"cprt", b"text\0\0\0\0" + b"made by the tests\0"),
        (b"wtpt", _xyz_tag(D50_XYZ)),
        (b"rXYZ", _xyz_tag(colorants[:, 0])),
        (b"gXYZ", _xyz_tag(colorants[:, 1])),
        (b"bXYZ", _xyz_tag(colorants[:, 2])),
        (b"rTRC", trc),
        (b"gTRC", trc),
        (b"bTRC", trc),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = [], b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table.append(sig + struct.pack(">II", offset + len(body), len(data)))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"APPL"
        + b"\0" * 4
        + b"\0" * 8
        + b"\0" * 8
        + struct.pack(">I", 0)
        + b"".join(_s15(v) for v in D50_XYZ)
        + b"lcms"
        + b"\0" * 16
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + body


def bayer_dng(rgb: np.ndarray, white: int = 4095, black: int = 64) -> bytes:
    """A linear RGB image in [0, 1] (H, W even) as an uncompressed 16-bit RGGB DNG that LibRaw
    reads: identity camera matrix, neutral white balance."""
    h, w = rgb.shape[:2]
    mosaic = np.empty((h, w), np.float64)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    pixels = (black + np.clip(mosaic, 0, 1) * (white - black)).round().astype("<u2").tobytes()
    SHORT, LONG, ASCII, BYTE, RATIONAL, SRATIONAL = 3, 4, 2, 1, 5, 10
    model = b"realsr test camera\0"
    xyz_to_cam = np.linalg.inv(SRGB)  # camera = linear sRGB
    entries = [
        (254, LONG, [0]),
        (256, LONG, [w]),
        (257, LONG, [h]),
        (258, SHORT, [16]),
        (259, SHORT, [1]),
        (262, SHORT, [32803]),
        (271, ASCII, b"realsr\0"),
        (272, ASCII, model),
        (273, LONG, [0]),
        (277, SHORT, [1]),
        (278, LONG, [h]),
        (279, LONG, [len(pixels)]),
        (284, SHORT, [1]),
        (33421, SHORT, [2, 2]),
        (33422, BYTE, [0, 1, 1, 2]),
        (50706, BYTE, [1, 4, 0, 0]),
        (50708, ASCII, model),
        (50714, LONG, [black]),
        (50717, LONG, [white]),
        (50721, SRATIONAL, [(int(round(v * 10000)), 10000) for v in xyz_to_cam.ravel()]),
        (50728, RATIONAL, [(1, 1)] * 3),
        (50778, SHORT, [21]),
    ]
    n = len(entries)
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * n + 4
    extra = b""
    packed = []
    for tag, typ, val in entries:
        if typ == ASCII:
            data, count = val, len(val)
        elif typ == BYTE:
            data, count = bytes(val), len(val)
        elif typ == SHORT:
            data, count = struct.pack(f"<{len(val)}H", *val), len(val)
        elif typ == LONG:
            data, count = struct.pack(f"<{len(val)}I", *val), len(val)
        else:
            data, count = b"".join(struct.pack("<ii" if typ == SRATIONAL else "<II", *r) for r in val), len(val)
        packed.append([tag, typ, count, data])
    for p in packed:
        if len(p[3]) > 4:
            p.append(extra_at + len(extra))
            extra += p[3] + b"\0" * (len(p[3]) % 2)
    strip_at = extra_at + len(extra)
    out = b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", n)
    for p in packed:
        tag, typ, count, data = p[:4]
        if tag == 273:
            data = struct.pack("<I", strip_at)
        field = struct.pack("<I", p[4]) if len(data) > 4 else data + b"\0" * (4 - len(data))
        out += struct.pack("<HHI", tag, typ, count) + field
    return out + struct.pack("<I", 0) + extra + pixels
