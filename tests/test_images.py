"""Odd and bad inputs: each is converted with a note or refused with a message naming the file."""

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from realsr.storage.images import BadImageError, decode_image, list_images, read_image
from tests.conftest import SHARED, small_photo, write_rgb


def _pil_bytes(img: Image.Image, fmt: str) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


RGB = Image.fromarray(small_photo(0, 48, 64))


@pytest.mark.parametrize(
    "name,data,depth,note",
    [
        ("rgb.png", _pil_bytes(RGB, "PNG"), 8, None),
        ("gray.png", _pil_bytes(RGB.convert("L"), "PNG"), 8, "gray"),
        ("palette.png", _pil_bytes(RGB.convert("P"), "PNG"), 8, None),
        ("cmyk.jpg", _pil_bytes(RGB.convert("CMYK"), "JPEG"), 8, None),
        ("alpha.png", _pil_bytes(RGB.convert("RGBA"), "PNG"), 8, "alpha"),
        ("bilevel.png", _pil_bytes(RGB.convert("1"), "PNG"), 8, "gray"),
        ("photo.webp", _pil_bytes(RGB, "WEBP"), 8, None),
    ],
)
def test_odd_formats_become_rgb_float(name, data, depth, note):
    img = decode_image(name, data)
    assert img.rgb.shape == (48, 64, 3) and img.rgb.dtype == np.float32
    assert 0.0 <= img.rgb.min() and img.rgb.max() <= 1.0
    assert img.bit_depth == depth
    assert (note is None and not img.notes) or any(note in n for n in img.notes)


def test_16bit_keeps_its_precision(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 48 * 3).reshape(48, 64, 3)).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), ramp)
    img = read_image(path)
    assert img.bit_depth == 16 and any("16-bit" in n for n in img.notes)
    np.testing.assert_allclose(img.rgb, ramp[..., ::-1] / 65535.0, atol=1e-7)


def test_alpha_marks_transparent_pixels(tmp_path):
    rgba = np.dstack([small_photo(1, 32, 32), np.full((32, 32), 255, np.uint8)])
    rgba[0, 0, 3] = 10
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), rgba)
    img = read_image(path)
    assert img.opaque is not None and not img.opaque[0, 0] and img.opaque[1:, 1:].all()


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty.png", b"", "empty file"),
        ("garbage.jpg", b"this is not an image" * 50, "not a readable image"),
        ("half.jpg", _pil_bytes(RGB, "JPEG")[:400], "truncated JPEG"),
        ("half.png", _pil_bytes(RGB, "PNG")[:300], "truncated PNG"),
    ],
)
def test_bad_files_are_refused_with_their_name(name, data, reason):
    with pytest.raises(BadImageError) as e:
        decode_image(f"/photos/{name}", data)
    assert name in str(e.value) and reason in str(e.value)


def test_a_motion_photo_with_video_after_the_jpeg_decodes():
    data = _pil_bytes(RGB, "JPEG") + b"ftypmp42" + bytes(range(256)) * 20
    assert decode_image("motion.jpg", data).rgb.shape == (48, 64, 3)


def test_huge_images_are_refused_before_use(tmp_path):
    path = write_rgb(tmp_path / "big.png", small_photo(2, 100, 100))
    with pytest.raises(BadImageError, match="MP limit"):
        read_image(path, max_pixels=5000)


def test_unreadable_path_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_list_images_separates_other_files(tmp_path):
    write_rgb(tmp_path / "b.png", small_photo(0, 8, 8))
    write_rgb(tmp_path / "sub" / "a.JPG", small_photo(1, 8, 8))
    (tmp_path / "notes.txt").write_text("hi")
    images, others = list_images(tmp_path)
    assert [p.name for p in images] == ["b.png", "a.JPG"] or [p.name for p in images] == ["a.JPG", "b.png"]
    assert [(p.name, why) for p, why in others] == [("notes.txt", "not an image type (.txt)")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")


@pytest.mark.skipif(not (SHARED / "data" / "odd_inputs").exists(), reason="shared data not on this machine")
def test_shared_odd_inputs_all_decode():
    images, _ = list_images(SHARED / "data" / "odd_inputs")
    for p in images:
        img = read_image(p)
        assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding():
    import struct
    import zlib

    from realsr.storage.images import decode_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # 20000 x 20000 gray, 400 MP, in a few hundred bytes (the pixel data is never reached)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(BadImageError, match=r"20000x20000 is over the 200 MP limit \(--max-megapixels\)"):
        decode_image("bomb.png", png)


def test_an_animated_gif_says_it_keeps_the_first_frame(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img = read_image(tmp_path / "anim.gif")
    assert "animated (2 frames): the first frame only" in img.notes


def test_list_images_names_links_that_loop_or_lead_nowhere(tmp_path):
    write_rgb(tmp_path / "sub" / "a.png", small_photo(0, 8, 8))
    (tmp_path / "sub" / "back").symlink_to(tmp_path)  # a loop
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    images, others = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png"]
    reasons = {p.name: why for p, why in others}
    assert "loop" in reasons["back"] and "leads nowhere" in reasons["gone.png"]


def test_list_images_names_a_subfolder_it_cannot_read(tmp_path, monkeypatch):
    write_rgb(tmp_path / "a.png", small_photo(0, 8, 8))
    write_rgb(tmp_path / "locked" / "b.png", small_photo(1, 8, 8))
    real_scandir = os.scandir

    def scandir(path="."):  # as a folder without read permission behaves for a user who is not root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    images, others = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png"]
    assert [(p.name, why) for p, why in others] == [("locked", "folder not readable (Permission denied)")]
