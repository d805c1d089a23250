"""JPEG quality: read back from a file's quantisation tables, and re-applied to training LR.

Real source photos are JPEGs and so are the photos users upscale; training on LR re-compressed
at the camera's own quality teaches the model that camera's block artefacts too. Encoders that
follow libjpeg (cameras, phones, OpenCV, PIL) scale the two tables of the JPEG standard's Annex K
by one quality factor, so the quality is the one whose scaled table is nearest the stored one.
"""

from __future__ import annotations

import cv2
import numpy as np

from realsr.models.degradation import to_uint8

# Annex K luminance and chrominance tables, in natural (row-major) order
_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=np.float64,
)
_CHROMA = np.array(
    [
        17,
        18,
        24,
        47,
        99,
        99,
        99,
        99,
        18,
        21,
        26,
        66,
        99,
        99,
        99,
        99,
        24,
        26,
        56,
        99,
        99,
        99,
        99,
        99,
        47,
        66,
        99,
        99,
        99,
        99,
        99,
        99,
        *([99] * 32),
    ],
    dtype=np.float64,
)


def _zigzag() -> np.ndarray:
    """Natural index of each zig-zag position (tables are stored in zig-zag order in the file)."""
    order = sorted(((r, c) for r in range(8) for c in range(8)), key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else p[1]))
    return np.array([r * 8 + c for r, c in order])


ZIGZAG = _zigzag()


def scaled_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's `jpeg_quality_scaling` applied to a base table (baseline: clamped to 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q  # integer arithmetic, as libjpeg's
    return np.clip((base.astype(np.int64) * scale + 50) // 100, 1, 255).astype(np.float64)


def estimate_quality(tables: dict[int, list[int]] | list) -> tuple[int, float]:
    """The libjpeg quality (1-100) nearest the file's tables, and the mean absolute table error
    at that quality (0: the file was written by a libjpeg-style encoder at exactly that quality).

    `tables`: PIL's `Image.quantization` ({0: luma, 1: chroma}, 64 values each, in the order PIL
    gives them: natural order in current Pillow, zig-zag in old releases; both are tried).
    """
    items = tables.items() if isinstance(tables, dict) else enumerate(tables)
    found = {int(i): np.asarray(t, dtype=np.float64) for i, t in items}
    if 0 not in found or found[0].size != 64:
        raise ValueError("no 8x8 luminance quantisation table")
    best = (0, float("inf"))
    for order in (np.arange(64), ZIGZAG):  # natural, and zig-zag read back into natural order
        for q in range(1, 101):
            err = [np.abs(found[0][order] - scaled_table(_LUMA, q)).mean()]
            if 1 in found and found[1].size == 64:
                err.append(np.abs(found[1][order] - scaled_table(_CHROMA, q)).mean())
            e = float(np.mean(err))
            if e < best[1]:
                best = (q, e)
    return best


def recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """RGB float32 in [0, 1] through a JPEG encode/decode at `quality` (OpenCV's libjpeg, 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(to_uint8(image)[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]).astype(np.float32) / 255.0


def heic_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """RGB float32 in [0, 1] through a HEIC encode/decode at `quality` (pillow-heif's x265, 4:2:0):
    the artefacts of the phones that write HEIC, for sources whose quality no table records."""
    import io

    import pillow_heif

    heif = pillow_heif.from_bytes(mode="RGB", size=(image.shape[1], image.shape[0]), data=np.ascontiguousarray(to_uint8(image)).tobytes())
    buf = io.BytesIO()
    heif.save(buf, quality=int(quality))
    back = pillow_heif.open_heif(io.BytesIO(buf.getvalue()), convert_hdr_to_8bit=True)
    return np.asarray(back[0]).astype(np.float32) / 255.0
