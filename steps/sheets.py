"""Contact sheets: labelled tiles on a white grid, written as PNG (inspect, evaluate)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realsr.storage.atomic import write_bytes

MIN_TILE = 128  # px: narrower tiles are enlarged (nearest, pixels stay sharp) so a label fits and a sheet is no thumbnail
FONT, FONT_SCALE, LINE = cv2.FONT_HERSHEY_PLAIN, 0.8, 14


def text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def wrap(text: str, width: int) -> list[str]:
    """Words on lines at most `width` px wide; a word wider than a line is split, never cut off."""
    lines: list[str] = []
    for word in text.split():
        while len(word) > 1 and text_width(word) > width:
            cut = max((i for i in range(1, len(word)) if text_width(word[:i]) <= width), default=1)
            lines.append(word[:cut])
            word = word[cut:]
        if lines and text_width(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def label(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile (enlarged by a whole factor below MIN_TILE px) over its whole label, wrapped."""
    factor = -(-MIN_TILE // tile.shape[1])
    if factor > 1:
        tile = cv2.resize(tile, (tile.shape[1] * factor, tile.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    lines = wrap(text, tile.shape[1] - 4)
    bar = np.full((LINE * len(lines), tile.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (2, 11 + LINE * i), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, bar], 0)


def grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles on a white grid, each cell as large as the largest tile (labels may wrap to more lines)."""
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 4) : r * (h + 4) + t.shape[0], c * (w + 4) : c * (w + 4) + t.shape[1]] = t
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
