"""Phone and camera files on the way in: HEIC, AVIF, DNG, and ICC profiles converted to sRGB."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from realsr.storage import image_formats
from realsr.storage.images import BadImageError, decode_image, list_images
from tests.conftest import small_photo
from tests.phone_files import bayer_dng, display_p3_icc, p3_to_srgb

pillow_heif = pytest.importorskip("pillow_heif")
pillow_heif.register_heif_opener()


def heic_bytes(rgb: np.ndarray, quality: int = 90, **info) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "HEIF", quality=quality, **info)
    return buf.getvalue()


def png_with_icc(rgb: np.ndarray, icc: bytes) -> bytes:
    """OpenCV's PNG (8 or 16 bits) with an iCCP chunk after IHDR."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    data = buf.tobytes()
    body = b"P3\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return data[:33] + chunk + data[33:]


RNG = np.random.default_rng(0)
SATURATED = (RNG.random((48, 64, 3)) * 255).astype(np.uint8)  # many colours outside sRGB's gamut


def test_display_p3_is_converted_to_srgb_as_the_reference_conversion_within_one_level():
    img = decode_image("p3.png", png_with_icc(SATURATED, display_p3_icc()))
    assert img.srgb_from == "Display P3" and "converted to sRGB from its ICC profile: Display P3" in img.notes
    assert np.abs(img.rgb - p3_to_srgb(SATURATED / 255.0)).max() <= 1 / 255
    deep = (RNG.random((32, 40, 3)) * 65535).astype(np.uint16)
    img16 = decode_image("p3-16.png", png_with_icc(deep, display_p3_icc()))
    assert img16.bit_depth == 16 and np.abs(img16.rgb - p3_to_srgb(deep / 65535.0)).max() <= 1 / 255
    kept = decode_image("p3.png", png_with_icc(SATURATED, display_p3_icc()), to_srgb=False)  # upscale --profile keep
    assert kept.srgb_from is None and kept.icc == display_p3_icc() and np.array_equal((kept.rgb * 255).round(), SATURATED)


def test_an_srgb_profile_or_none_leaves_the_pixels_alone():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for data in (png_with_icc(SATURATED, srgb), cv2.imencode(".png", SATURATED[..., ::-1])[1].tobytes()):
        img = decode_image("s.png", data)
        assert img.srgb_from is None and np.array_equal((img.rgb * 255).round(), SATURATED)


def test_heic_and_avif_are_read_with_their_profile_and_exif():
    photo = small_photo(3, 64, 96)
    exif = Image.Exif()
    exif[0x010F] = "Apple"
    img = decode_image("IMG_0001.HEIC", heic_bytes(photo, 95, icc_profile=display_p3_icc(), exif=exif.tobytes()))
    assert img.rgb.shape == (64, 96, 3) and img.srgb_from == "Display P3" and img.icc == display_p3_icc()
    parsed = Image.Exif()
    parsed.load(img.exif)
    assert parsed[0x010F] == "Apple"
    as_stored = decode_image("IMG_0001.HEIC", heic_bytes(photo, 95, icc_profile=display_p3_icc()), to_srgb=False).rgb
    assert np.abs(img.rgb - p3_to_srgb(as_stored)).max() <= 1 / 255  # HEVC is lossy: the conversion is exact
    assert np.abs(as_stored - photo / 255.0).mean() < 8 / 255
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "AVIF", quality=95)
    avif = decode_image("a.avif", buf.getvalue())
    assert avif.rgb.shape == (64, 96, 3) and np.abs(avif.rgb - photo / 255.0).mean() < 8 / 255


def test_a_dng_is_developed_as_a_clean_hr_source(tmp_path):
    linear = np.zeros((64, 96, 3))
    linear[:, :48] = [0.5, 0.2, 0.1]
    linear[:, 48:] = [0.1, 0.2, 0.5]
    img = decode_image(tmp_path / "IMG_0002.DNG", bayer_dng(linear))
    assert img.raw and img.bit_depth == 16 and img.rgb.shape[:2] == (64, 96) and image_formats.RAW_NOTE in img.notes
    left, right = img.rgb[8:-8, 8:40].mean((0, 1)), img.rgb[8:-8, 56:-8].mean((0, 1))
    assert left[0] > left[1] > left[2] and right[2] > right[1] > right[0]  # developed in the right colours


def test_damaged_or_unreadable_files_are_one_line_naming_the_file(tmp_path, monkeypatch):
    good = heic_bytes(small_photo(1, 64, 64))
    for name, data, reason in [
        ("cut.heic", good[: len(good) // 2], "cannot decode HEIF"),
        ("junk.heic", good[:40] + bytes(200), "cannot decode HEIF"),
        ("junk.dng", b"II*\0" + bytes(300), "cannot decode DNG"),
    ]:
        with pytest.raises(BadImageError, match=reason) as e:
            decode_image(tmp_path / name, data)
        assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    with pytest.raises(BadImageError, match=r"x\.heic: HEIC/HEIF needs pillow-heif \(pip install 'realsr-pipeline\[heic\]'\)"):
        decode_image("x.heic", good)
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(BadImageError, match=r"y\.dng: DNG needs rawpy \(pip install 'realsr-pipeline\[raw\]'\)"):
        decode_image("y.dng", bayer_dng(np.full((8, 8, 3), 0.5)))


def test_a_folder_lists_phone_formats_and_names_raw_it_cannot_read(tmp_path):
    for name in ("a.heic", "b.HEIF", "c.avif", "d.dng", "e.cr2", "f.nef"):
        (tmp_path / name).write_bytes(b"x")
    images, left = list_images(tmp_path)
    assert [p.name for p in images] == ["a.heic", "b.HEIF", "c.avif", "d.dng"]
    assert [(p.name, why) for p, why in left] == [
        ("e.cr2", "a camera RAW (.cr2): only DNG is read (through rawpy); convert it to DNG"),
        ("f.nef", "a camera RAW (.nef): only DNG is read (through rawpy); convert it to DNG"),
    ]


def test_heic_recompression_is_measured_against_the_sources():
    """With HEIC sources the re-compression is chosen by measurement: heavily compressed sources
    pull it to a low quality, and the choice is said with its numbers."""
    from types import SimpleNamespace

    from realsr.steps.train_heic import choose_heic_quality

    photo = small_photo(2, 256, 256).astype(np.float32) / 255

    class Data:
        cfg = SimpleNamespace(hr_size=64, scale=2)

        def degrade(self, hr, k, q, rng, jitter):
            return cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA), {}

    half = cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA)

    def phone(quality):  # the source photos as a phone writes them at `quality`
        data = heic_bytes((half * 255).round().astype(np.uint8), quality)
        return lambda path: np.asarray(Image.open(io.BytesIO(data))).astype(np.float32) / 255

    images = [SimpleNamespace(source="IMG_1.HEIC", clean_hr="", kernel_index=0)]
    import realsr.steps.train_data as td

    orig = td._clean_hr
    td._clean_hr = lambda p: (photo * 255).round().astype(np.uint8)
    try:
        q_heavy, why = choose_heic_quality(Data(), images, 0, phone(25))
        q_light, _ = choose_heic_quality(Data(), images, 0, phone(95))
        q_none, why_none = choose_heic_quality(
            Data(), images, 0, lambda path: half + np.float32(0.01) * np.random.default_rng(1).standard_normal(half.shape, np.float32)
        )
    finally:
        td._clean_hr = orig
    assert q_heavy in (30, 40, 50) and why.startswith(
        f"HEIC sources (1 measured): re-compression the HEIC encoder at quality {q_heavy}, its LR's detail survival under a q30 HEIC encoding nearest"
    )
    assert q_light in (None, 90)  # near-lossless: none, or the encoder's lightest touch
    assert q_none is None and why_none.startswith("HEIC sources (1 measured): re-compression none, its LR's detail survival")  # noisier than any re-encode


@pytest.mark.slow
def test_a_folder_of_heic_photos_runs_through_the_pipeline(tmp_path):
    """HEIC (one Display P3), a DNG beside them, a damaged HEIC and a RAW type not read: the
    pipeline runs with no step by hand, and the summaries say what happened to each."""
    from realsr.flows.cli import main

    src = tmp_path / "iphone"
    src.mkdir()
    for i in range(3):
        info = {"icc_profile": display_p3_icc()} if i == 0 else {}
        (src / f"IMG_{i:04d}.HEIC").write_bytes(heic_bytes(small_photo(i, 128, 160), 60, **info))
    (src / "IMG_0009.HEIC").write_bytes(heic_bytes(small_photo(9, 128, 160))[:300])
    (src / "IMG_0010.DNG").write_bytes(bayer_dng(small_photo(10, 128, 160) / 255.0))
    (src / "IMG_0011.CR2").write_bytes(b"raw")
    out = tmp_path / "pipe"
    code = main(["pipeline", "--source", str(src), "--out", str(out), "--preset", "test-tiny", "--workers", "1"])
    assert code == 1  # the damaged HEIC failed alone
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["colour"] == {"converted_to_srgb": 1, "profiles": {"Display P3": 1}, "raw_sources": 1}
    assert [Path(s["source"]).name for s in summary["skipped"]] == ["IMG_0009.HEIC"] and summary["skipped"][0]["reason"].endswith(
        "cannot decode HEIF (damaged, or not a HEIF file)"
    )
    assert [Path(x["file"]).name for x in summary["ignored_files"]] == ["IMG_0011.CR2"]
    dng = [r for r in summary["converted"] if r["source"].endswith("IMG_0010.DNG")]
    assert dng and image_formats.RAW_NOTE in dng[0]["notes"]
    assert (out / "trained.pth").is_file()
    notes = json.loads(next((out / "train").rglob("summary.json")).read_text())["notes"]
    assert any(n.startswith("HEIC sources (3 measured): re-compression ") for n in notes)


def test_a_tiff_with_an_orientation_is_turned_upright_once():
    """OpenCV's TIFF decoder applies the orientation tag itself; the reader must not turn it again."""
    from realsr.storage.images import apply_orientation

    stored = (RNG.random((16, 24, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "TIFF", exif=exif.tobytes())
    img = decode_image("turned.tif", buf.getvalue(), upright=True)
    assert np.array_equal((img.rgb * 255).round().astype(np.uint8), apply_orientation(stored, 6))


def test_colour_as_stored_keeps_a_wide_gamut_cameras_values(tmp_path):
    """`--colour as-stored`: the clean HR of a Display P3 photo is made from its values as stored
    (as an untagged copy's is); by default they are converted to sRGB first."""
    from realsr.flows.cli import main

    photo = small_photo(5, 128, 160)
    runs = {}
    for name, data, flags in [
        ("p3", png_with_icc(photo, display_p3_icc()), []),
        ("p3-as-stored", png_with_icc(photo, display_p3_icc()), ["--colour", "as-stored"]),
        ("untagged", cv2.imencode(".png", photo[..., ::-1])[1].tobytes(), []),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "photo.png").write_bytes(data)
        out = tmp_path / f"run-{name}"
        assert main(["degrade", "--source", str(tmp_path / name), "--out", str(out), "--kernels", "bicubic", "--workers", "0", *flags]) == 0
        runs[name] = cv2.imread(str(next((out / "clean_hr").glob("*.png"))))
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["colour"] == ("as-stored" if flags else "srgb")
    assert np.array_equal(runs["p3-as-stored"], runs["untagged"])
    assert np.abs(runs["p3"].astype(int) - runs["untagged"]).max() > 10
