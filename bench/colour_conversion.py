"""Display P3 photos read as sRGB: the reader's conversion against a reference, and its cost.

A real photo (../shared/data/camera_photos/flower.png, 3.4 MP, and a 16-bit one) is taken as Display
P3 values and tagged with a Display P3 ICC profile (tests/phone_files.py builds it); the reader's
sRGB pixels are compared with the reference conversion computed in float64 from the primaries
(not through LittleCMS), and with what OpenCV alone gives (the P3 values read as if sRGB).
Also random saturated colours, most of them outside sRGB (clipped: relative colorimetric).

    .venv/bin/python bench/colour_conversion.py
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from realsr.storage.images import decode_image  # noqa: E402
from tests.phone_files import display_p3_icc, p3_to_srgb  # noqa: E402
from tests.test_phone_formats import png_with_icc  # noqa: E402


def row(name: str, values: np.ndarray, scale: float) -> str:
    data = png_with_icc(values, display_p3_icc())
    t0 = time.perf_counter()
    img = decode_image(name, data)
    secs = time.perf_counter() - t0
    plain = decode_image(name, cv2.imencode(".png", np.ascontiguousarray(values[..., ::-1]))[1].tobytes())
    t1 = time.perf_counter()
    _ = decode_image(name, data, to_srgb=False)
    base = time.perf_counter() - t1
    ref = p3_to_srgb(values / scale)
    err = np.abs(img.rgb - ref) * 255
    wrong = np.abs(plain.rgb - ref) * 255
    mp = values.shape[0] * values.shape[1] / 1e6
    return f"| {name} | {values.dtype} | {mp:.2f} | {err.max():.3f} | {err.mean():.4f} | {wrong.max():.1f} | {wrong.mean():.2f} | {(secs - base) / mp:.3f} |"


def main() -> None:
    photos = HERE.parent.parent / "shared" / "data" / "camera_photos"
    flower = cv2.imread(str(photos / "flower.png"), cv2.IMREAD_COLOR)[..., ::-1]
    room = cv2.imread(str(photos / "hdr_room_16bit.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    rng = np.random.default_rng(0)
    print(f"\n{platform.node()}, {platform.processor() or platform.machine()}; OpenCV threads {cv2.getNumThreads()}\n")
    print("| image (as Display P3) | samples | MP | max error (levels of 255) | mean error | OpenCV alone: max | OpenCV alone: mean | conversion s/MP |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values, scale in [
        ("flower.png", np.ascontiguousarray(flower), 255.0),
        ("hdr_room_16bit.png", np.ascontiguousarray(room), 65535.0),
        ("random colours", (rng.random((512, 512, 3)) * 255).astype(np.uint8), 255.0),
        ("random colours 16-bit", (rng.random((512, 512, 3)) * 65535).astype(np.uint16), 65535.0),
    ]:
        print(row(name, values, scale))


if __name__ == "__main__":
    main()
