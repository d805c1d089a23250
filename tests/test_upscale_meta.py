"""`realsr upscale` writes the photo's EXIF (orientation reset) and an ICC profile: sRGB by
default, the input's own with --profile keep; --format png, jpg, webp, heic.

The Display P3 profile is the tests' own (tests/phone_files.py: P3 primaries, sRGB tone curve)."""

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from realsr.flows.cli import main
from realsr.steps.upscale import UpscaleOptions, upscale_paths
from realsr.storage.image_formats import to_srgb
from realsr.storage.image_write import encode_image, jpeg_with_meta, png_with_meta, srgb_icc, upright_exif
from realsr.storage.images import jpeg_quality
from realsr.storage.model_files import load_generator
from tests.phone_files import display_p3_icc

MAKE, MODEL, ORIENTATION, EXIF_IFD, PIXEL_X = 0x010F, 0x0110, 0x0112, 0x8769, 0xA002


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[ORIENTATION], ex[MAKE], ex[MODEL] = orientation, "Acme", "Phone 1"
    ex.get_ifd(EXIF_IFD)[PIXEL_X] = 24
    return ex.tobytes()


def _turned_jpeg(path: Path) -> Path:
    """24x16 as stored, EXIF orientation 6 (turn 90 degrees clockwise to view): 16x24 upright."""
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, "JPEG", quality=95, exif=_exif(6))
    return path


def _open(path: Path) -> Image.Image:
    if path.suffix == ".heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    return Image.open(path)


def test_every_format_keeps_the_exif_upright_and_writes_an_srgb_profile(tiny_model, tmp_path, capsys):
    src = _turned_jpeg(tmp_path / "turned.jpg")
    for fmt, pil in (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("heic", "HEIF")):
        out = tmp_path / f"out.{fmt}"
        assert main(["upscale", "-i", str(src), "-o", str(out), "--model", str(tiny_model), "--format", fmt]) == 0
        with _open(out) as im:
            ex = im.getexif()
            assert (im.format, im.size) == (pil, (64, 96)), fmt  # upright 16x24, x4
            assert (ex[ORIENTATION], ex[MAKE], ex[MODEL]) == (1, "Acme", "Phone 1"), fmt
            assert ex.get_ifd(EXIF_IFD)[PIXEL_X] == 64, fmt  # the size the EXIF states is the output's
            assert im.info["icc_profile"] == srgb_icc(), fmt  # untagged input: sRGB said out loud
    err = capsys.readouterr().err
    assert "EXIF kept (orientation reset)" in err and "EXIF orientation 6 applied" in err
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "old"), "--model", str(tiny_model), "--ext", "webp"]) == 0  # the old name
    assert Image.open(tmp_path / "old" / "turned_out.webp").format == "WEBP"
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "q.jpg"), "--model", str(tiny_model), "--quality", "30"]) == 0
    assert jpeg_quality((tmp_path / "q.jpg").read_bytes())["quality"] == 30


def _p3_png(path: Path, deep: bool = False) -> tuple[Path, np.ndarray]:
    """Saturated colours, where Display P3 and sRGB differ, in a PNG tagged Display P3."""
    rng = np.random.default_rng(1)
    rgb = np.stack([rng.integers(150, 256, (12, 14)), rng.integers(0, 60, (12, 14)), rng.integers(0, 256, (12, 14))], -1)
    rgb = (rgb * 257).astype(np.uint16) if deep else rgb.astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    path.write_bytes(png_with_meta(buf.tobytes(), display_p3_icc(), None))
    return path, rgb


def test_profile_keep_carries_the_inputs_bytes_and_leaves_the_colours(tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    src, rgb = _p3_png(tmp_path / "in" / "p3.png")
    gen, cpu = load_generator(tiny_model), torch.device("cpu")
    keep = upscale_paths([src], tmp_path / "keep", gen, UpscaleOptions(profile="keep"), cpu, log=lambda m: None)
    srgb = upscale_paths([src], tmp_path / "srgb", gen, UpscaleOptions(), cpu, log=lambda m: None)
    assert Image.open(tmp_path / "keep" / "p3_out.png").info["icc_profile"] == display_p3_icc()
    assert "input profile kept (Display P3)" in keep.written[0]["notes"]
    assert Image.open(tmp_path / "srgb" / "p3_out.png").info["icc_profile"] == srgb_icc()
    assert "sRGB profile written (converted from Display P3)" in srgb.written[0]["notes"]
    # the same pixels untagged give keep's output; converted to sRGB first, the default's
    (tmp_path / "plain").mkdir()
    assert cv2.imwrite(str(tmp_path / "plain" / "as_is.png"), rgb[..., ::-1])
    assert cv2.imwrite(str(tmp_path / "plain" / "converted.png"), to_srgb(rgb, display_p3_icc())[..., ::-1])
    upscale_paths(sorted((tmp_path / "plain").iterdir()), tmp_path / "ref", gen, UpscaleOptions(), cpu, log=lambda m: None)
    read = lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert np.array_equal(read(tmp_path / "keep" / "p3_out.png"), read(tmp_path / "ref" / "as_is_out.png"))
    assert np.array_equal(read(tmp_path / "srgb" / "p3_out.png"), read(tmp_path / "ref" / "converted_out.png"))
    assert not np.array_equal(read(tmp_path / "keep" / "p3_out.png"), read(tmp_path / "srgb" / "p3_out.png"))


def test_16_bit_stays_16_bit_with_its_profile_and_formats_that_cannot_hold_it_turn_png(tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    src, _ = _p3_png(tmp_path / "in" / "deep.png", deep=True)
    gen, cpu = load_generator(tiny_model), torch.device("cpu")
    upscale_paths([src], tmp_path / "keep", gen, UpscaleOptions(profile="keep"), cpu, log=lambda m: None)
    out = tmp_path / "keep" / "deep_out.png"
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert Image.open(out).info["icc_profile"] == display_p3_icc()
    for fmt in ("webp", "heic", "jpg"):
        report = upscale_paths([src], tmp_path / fmt, gen, UpscaleOptions(ext=fmt), cpu, log=lambda m: None)
        out = tmp_path / fmt / "deep_out.png"
        assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).dtype == np.uint16 and Image.open(out).info["icc_profile"] == srgb_icc()
        assert f"written as PNG: {fmt.upper()} holds no 16 bits" in report.written[0]["notes"]
    rgba = np.dstack([np.full((10, 12, 3), 90, np.uint8), np.tile(np.linspace(0, 255, 12).astype(np.uint8), (10, 1))])
    Image.fromarray(rgba).save(tmp_path / "in" / "glass.png")
    upscale_paths([tmp_path / "in" / "glass.png"], tmp_path / "w", gen, UpscaleOptions(ext="webp", alpha="bicubic"), cpu, log=lambda m: None)
    assert Image.open(tmp_path / "w" / "glass_out.webp").mode == "RGBA"  # WebP holds alpha: stays WebP


def test_heic_without_pillow_heif_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` raises ImportError
    src = _turned_jpeg(tmp_path / "a.jpg")
    code = main(["upscale", "-i", str(src), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "no-such-model.pth"), "--format", "heic"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'realsr-pipeline[heic]'" in err and "no-such-model" not in err
    assert not (tmp_path / "out").exists()


def test_jpeg_segments_split_a_large_profile_and_refuse_a_large_exif():
    big_icc = srgb_icc() + bytes(range(256)) * 400  # 103 KB: two APP2 chunks
    jpg = encode_image(np.zeros((8, 8, 3), np.uint8), "jpg")[0]
    with Image.open(io.BytesIO(jpeg_with_meta(jpg, big_icc, None))) as im:
        assert im.info["icc_profile"] == big_icc
    huge = upright_exif(_exif(1) + b"\0" * 70_000)[0]
    data, lost = encode_image(np.zeros((8, 8, 3), np.uint8), "jpg", exif=huge)
    assert "over a JPEG segment" in lost["exif"] and Image.open(io.BytesIO(data)).format == "JPEG"
    assert upright_exif(b"not exif") is None
    tiff_ifd = Image.Exif()  # a TIFF input's EXIF: its whole first IFD, with its own size and strips
    tiff_ifd[256], tiff_ifd[257], tiff_ifd[273], tiff_ifd[MAKE], tiff_ifd[ORIENTATION] = 24, 16, 8, "Acme", 8
    kept, turned = upright_exif(tiff_ifd.tobytes())
    back = Image.Exif()
    back.load(kept)
    assert turned == 8 and dict(back) == {MAKE: "Acme", ORIENTATION: 1}


def test_webp_stays_lossless_unless_a_quality_is_given():
    """upscale wrote lossless WebP (OpenCV's default) before it took --quality; it still does."""
    from realsr.storage.image_write import encode_image

    rgb = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    for quality, exact in ((None, True), (100, True), (60, False)):
        data, _ = encode_image(rgb, ".webp", quality)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb) is exact
