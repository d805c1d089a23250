"""Contact sheets: labelled tiles on a white grid, written as PNG (inspect, evaluate)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realsr.storage.atomic import write_bytes


def label(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[: tile.shape[1] // 6], (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, bar], 0)


def grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = t
    return sheet


def write_sheet(path: Path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    write_bytes(path, buf.tobytes())


def preview(path: Path, max_side: int = 1024, max_bytes: int = 400_000) -> tuple[str, bytes]:
    """An image file as a small web picture (mime type, bytes): a PNG no wider than `max_side`,
    or a JPEG when the PNG would weigh more than `max_bytes` (a Prefect artifact is a database row)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    side = max(img.shape[:2])
    if side > max_side:
        f = max_side / side
        img = cv2.resize(img, (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    if len(buf) <= max_bytes:
        return "image/png", buf.tobytes()
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "image/jpeg", buf.tobytes()
