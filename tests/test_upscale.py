"""`realsr upscale`: odd inputs keep their layout, bad files fail alone, EXIF orientation, outscale."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from realsr.flows.cli import main
from realsr.steps.upscale import UpscaleOptions, upscale_paths
from realsr.storage.model_files import load_generator


def _inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "rgb.png": rng.integers(0, 256, (20, 28, 3), dtype=np.uint8),
        "gray.png": rng.integers(0, 256, (18, 22), dtype=np.uint8),
        "deep.png": rng.integers(0, 65536, (16, 20, 3), dtype=np.uint16),
        "alpha.png": np.dstack([rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))]),
        "dot.png": np.full((1, 1, 3), 128, np.uint8),
        "photo.jpg": rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
    }
    for name, a in files.items():
        assert cv2.imwrite(str(folder / name), a)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    assert cv2.imwrite(str(folder / "big.png"), np.zeros((40, 40, 3), np.uint8))  # over the pixel limit below
    return {n: folder / n for n in [*files, "corrupt.png", "big.png"]}


def test_a_folder_of_odd_inputs(tiny_model, tmp_path):
    files = _inputs(tmp_path / "in")
    gen = load_generator(tiny_model)
    paths = sorted(files.values())
    opts = UpscaleOptions(max_megapixels=1000 / 1e6, alpha="bicubic")  # 'big.png' (1600 px) is over it, the rest not
    report = upscale_paths(paths, tmp_path / "out", gen, opts, torch.device("cpu"), log=lambda m: None)
    failed = {Path(f["source"]).name: f["reason"] for f in report.failed}
    assert set(failed) == {"corrupt.png", "big.png"}
    assert "MP limit" in failed["big.png"] and "truncated PNG" in failed["corrupt.png"]
    read = lambda n: cv2.imread(str(tmp_path / "out" / n), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert read("rgb_out.png").shape == (80, 112, 3)
    assert read("gray_out.png").shape == (72, 88)  # gray stays gray
    deep = read("deep_out.png")
    assert deep.dtype == np.uint16 and deep.shape == (64, 80, 3) and deep.max() > 255  # 16-bit stays 16-bit
    alpha = read("alpha_out.png")
    assert alpha.shape == (64, 64, 4)
    ramp = alpha[32, :, 3].astype(float)  # the alpha ramp survives, upscaled on its own
    assert ramp[0] < 60 and ramp[-1] > 200 and np.all(np.diff(ramp[4:-4]) >= -8)
    assert read("dot_out.png").shape == (4, 4, 3)  # a 1x1 image works
    by_model = upscale_paths([files["alpha.png"]], tmp_path / "m", gen, UpscaleOptions(), torch.device("cpu"), log=lambda m: None)
    assert not by_model.failed and cv2.imread(str(tmp_path / "m" / "alpha_out.png"), cv2.IMREAD_UNCHANGED).shape == (64, 64, 4)
    assert read("photo_out.jpg").shape == (96, 96, 3)


def test_small_images_are_batched_with_the_output_of_one_at_a_time(tiny_model, tmp_path, monkeypatch):
    import realsr.steps.upscale as up

    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    sizes = [(16, 20), (16, 20), (16, 20), (16, 20), (16, 20), (12, 12), (16, 20)]  # 5 alike, another size, one alike
    for i, (h, w) in enumerate(sizes):
        assert cv2.imwrite(str(tmp_path / "in" / f"p{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert cv2.imwrite(str(tmp_path / "in" / "p2a.png"), np.dstack([rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), np.full((16, 20), 200, np.uint8)]))
    paths = sorted((tmp_path / "in").iterdir())
    gen = load_generator(tiny_model)
    calls = []
    real = up.run_batch
    monkeypatch.setattr(up, "run_batch", lambda net, arrays, *a: calls.append(len(arrays)) or real(net, arrays, *a))
    single = upscale_paths(paths, tmp_path / "one", gen, UpscaleOptions(batch=1), torch.device("cpu"), log=lambda m: None)
    assert calls == [] and len(single.written) == 8
    batched = upscale_paths(paths, tmp_path / "four", gen, UpscaleOptions(batch=4, alpha="bicubic"), torch.device("cpu"), log=lambda m: None)
    # sorted: p0 p1 p2 | p2a (alpha: alone) | p3 p4 | p5 (12x12: alone) | p6 -- runs of one go the usual way
    assert calls == [3, 2] and not batched.failed
    for p in paths:
        if p.name != "p2a.png":
            a, b = (cv2.imread(str(tmp_path / d / f"{p.stem}_out.png")).astype(int) for d in ("one", "four"))
            assert np.abs(a - b).max() <= 1  # the same pixels for each image, whatever its batch
    calls.clear()
    monkeypatch.setattr(
        up, "run_batch", lambda net, arrays, *a: (_ for _ in ()).throw(RuntimeError("out of memory")) if len(arrays) > 1 else real(net, arrays, *a)
    )
    logs = []
    retried = upscale_paths(paths[:3], tmp_path / "retry", gen, UpscaleOptions(batch=4), torch.device("cpu"), log=logs.append)
    assert len(retried.written) == 3 and not retried.failed and any("one at a time" in m for m in logs)


def test_exif_orientation_outscale_tiling_and_determinism(tiny_model, tmp_path):
    from PIL import Image, ImageOps

    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: viewers show it 32 high, 20 wide
    (tmp_path / "in").mkdir()
    im.save(tmp_path / "in" / "turned.jpg", exif=exif, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "in" / "turned.jpg")))
    args = ["upscale", "-i", str(tmp_path / "in" / "turned.jpg"), "--model", str(tiny_model), "--ext", "png"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    out = cv2.imread(str(tmp_path / "a" / "turned_out.png"))[..., ::-1]
    assert out.shape == (upright.shape[0] * 4, upright.shape[1] * 4, 3) == (128, 80, 3)
    from realsr.storage.images import read_image

    seen = read_image(tmp_path / "in" / "turned.jpg", upright=True)  # the pixels as a viewer shows them
    assert np.abs(seen.rgb * 255 - upright).max() <= 2 and "EXIF orientation 6 applied" in seen.notes
    assert main([*args, "-o", str(tmp_path / "b"), "-s", "2"]) == 0
    assert cv2.imread(str(tmp_path / "b" / "turned_out.png")).shape == (64, 40, 3)
    assert main([*args, "-o", str(tmp_path / "c"), "-t", "12", "--tile-pad", "24"]) == 0
    tiled = cv2.imread(str(tmp_path / "c" / "turned_out.png"))[..., ::-1]
    assert np.abs(tiled.astype(int) - out.astype(int)).max() <= 1  # seamless: within rounding
    assert main([*args, "-o", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "turned_out.png").read_bytes() == (tmp_path / "a" / "turned_out.png").read_bytes()


def test_cli_reports_failures_and_refuses_a_bad_checkpoint(tiny_model, tmp_path, capsys):
    files = _inputs(tmp_path / "in")
    files["big.png"].unlink()
    assert main(["upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--suffix", ""]) == 1
    err = capsys.readouterr().err
    assert "6 written, 1 failed" in err and "corrupt.png: truncated PNG" in err
    assert (tmp_path / "out" / "rgb.png").exists()
    (tmp_path / "bad.pth").write_bytes(tiny_model.read_bytes()[:100])
    assert main(["upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--model", str(tmp_path / "bad.pth")]) == 2
    assert "bad.pth: not a readable torch checkpoint" in capsys.readouterr().err


def _png(path: Path, seed: int = 0, size=(12, 10)) -> Path:
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def test_an_output_that_would_overwrite_an_input_is_refused_before_any_work(tiny_model, tmp_path, capsys):
    a = _png(tmp_path / "a.png")
    before = a.read_bytes()
    assert main(["upscale", "-i", str(a), "-o", str(a), "--model", str(tiny_model)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and a.read_bytes() == before
    _png(tmp_path / "b.png", 1)
    assert main(["upscale", "-i", str(tmp_path), "-o", str(tmp_path), "--suffix", "", "--model", str(tiny_model)]) == 2
    assert a.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_a_rerun_into_the_input_folder_does_not_upscale_its_own_outputs(tiny_model, tmp_path, capsys):
    _png(tmp_path / "a.png")
    args = ["upscale", "-i", str(tmp_path), "-o", str(tmp_path), "--model", str(tiny_model)]
    assert main(args) == 0 and (tmp_path / "a_out.png").exists()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 written, 0 failed, 1 skipped" in err and "a_out.png: the output of a.png from an earlier run" in err
    assert not (tmp_path / "a_out_out.png").exists()


def test_inputs_whose_outputs_would_collide_are_refused_with_the_list(tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("x.png", "x.PNG", "x.ppm"):
        _png(src / name)
    (src / "notes.txt").write_text("not an image")
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert "x.PNG, x.png, x.ppm -> x_out.png" in err and not list((tmp_path / "out").glob("*.png"))
    (src / "x.PNG").unlink()
    (src / "x.ppm").unlink()
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model)]) == 0
    assert "skipped" in (err := capsys.readouterr().err) and "notes.txt: not an image type (.txt)" in err


def test_an_output_folder_that_cannot_be_written_is_found_before_the_model_loads(tiny_model, tmp_path, capsys):
    _png(tmp_path / "a.png")
    (tmp_path / "file").write_text("a file, not a folder")
    bad_model = tmp_path / "never-read.pth"  # the check comes first: a bad model is not even reached
    assert main(["upscale", "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "file" / "sub" / "x.png"), "--model", str(bad_model)]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_a_file_upscale_did_not_write_is_never_overwritten(tiny_model, tmp_path, capsys):
    model = ["--model", str(tiny_model)]
    y = _png(tmp_path / "y.png")
    theirs = _png(tmp_path / "x.PNG", 5)  # the user's file, named as an output could be
    before = theirs.read_bytes()
    assert main(["upscale", "-i", str(y), "-o", str(theirs), *model]) == 2  # nothing written
    err = capsys.readouterr().err
    assert theirs.read_bytes() == before and "x.PNG exists and was not written by upscale (--overwrite replaces it)" in err
    assert main(["upscale", "-i", str(y), "-o", str(theirs), "--overwrite", *model]) == 0 and theirs.read_bytes() != before
    assert main(["upscale", "-i", str(y), "-o", str(theirs), *model]) == 0  # now upscale's own: replaced on a rerun
    _png(theirs, 6)  # the user saves over it: theirs again
    edited = theirs.read_bytes()
    assert main(["upscale", "-i", str(y), "-o", str(theirs), *model]) == 2 and theirs.read_bytes() == edited
    # a user's own y_out.png beside y.png is an image of theirs, not an earlier output
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "y.png")
    mine = _png(photos / "y_out.png", 7).read_bytes()
    capsys.readouterr()
    assert main(["upscale", "-i", str(photos), "-o", str(photos), *model]) == 1  # y_out.png upscaled, y.png held back
    err = capsys.readouterr().err
    assert (photos / "y_out.png").read_bytes() == mine and (photos / "y_out_out.png").exists()
    assert "1 written, 0 failed, 1 skipped" in err and "y.png: its output y_out.png is an input of this run (not overwritten)" in err


def test_earlier_outputs_are_known_by_the_record_not_by_their_name(tiny_model, tmp_path, capsys):
    _png(tmp_path / "a.png")
    args = ["upscale", "-i", str(tmp_path), "-o", str(tmp_path), "--model", str(tiny_model)]
    assert main(args) == 0
    out = (tmp_path / "a_out.png").read_bytes()
    (tmp_path / ".realsr-upscale.json").unlink()  # without the record, a_out.png is just a file of the user's
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (tmp_path / "a_out.png").read_bytes() == out and (tmp_path / "a_out_out.png").exists()
    assert "a.png: its output a_out.png is an input of this run" in err


def test_a_kill_between_record_and_write_leaves_the_file_upscales_own(tmp_path):
    from realsr.storage.output_record import OutputRecord

    rec = OutputRecord(tmp_path, ".rec.json")
    target = tmp_path / "a_out.png"
    rec.record(target, b"first", "a.png")
    target.write_bytes(b"first")
    rec.record(target, b"second", "a.png")  # killed here: the file still holds the first bytes
    again = OutputRecord(tmp_path, ".rec.json")
    assert again.owns(target) and not again.blocks(tmp_path / "new.png")
    target.write_bytes(b"the user's")
    assert not OutputRecord(tmp_path, ".rec.json").owns(target)
    (tmp_path / ".rec.json").write_text("{not json")
    damaged = OutputRecord(tmp_path, ".rec.json")
    assert damaged.problem and "cannot be read" in damaged.problem and damaged.blocks(target)


def test_upscale_says_what_it_leaves_out_and_what_it_did(tiny_model, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png")
    (src / "gone.png").symlink_to(src / "missing.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    (src / "sub").mkdir()
    frames = [Image.fromarray(np.full((8, 10, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    rng = np.random.default_rng(3)
    assert cv2.imwrite(str(src / "rgba.png"), np.dstack([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.full((8, 8), 128, np.uint8)]))
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--alpha", "bicubic"]) == 0
    err = capsys.readouterr().err
    assert "3 written, 0 failed, 3 skipped" in err
    assert "gone.png: a link that leads nowhere" in err and "loop.png: a link that leads nowhere (broken or a loop)" in err
    assert "sub: a subfolder (not read" in err
    assert "anim.gif: animated (2 frames): the first frame only" in err
    gif = cv2.imread(str(tmp_path / "out" / "anim_out.png"), cv2.IMREAD_UNCHANGED)
    assert gif.shape == (32, 40, 3)  # the first frame, as RGB: OpenCV's opaque alpha is not kept
    assert "rgba.png: alpha channel kept, upscaled on its own (bicubic)" in err and "noise patches" not in err
    assert cv2.imread(str(tmp_path / "out" / "rgba_out.png"), cv2.IMREAD_UNCHANGED).shape == (32, 32, 4)


def _png_header_bomb(path: Path, side: int) -> Path:
    """A few hundred bytes whose header says a side x side 1-bit gray PNG (its pixels are never there)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    return path


def test_memory_not_pixels_bounds_an_image(tiny_model, tmp_path, capsys):
    bomb = _png_header_bomb(tmp_path / "bomb.png", 12000)  # 144 MP, under the 200 MP default
    args = ["upscale", "-i", str(bomb), "-o", str(tmp_path / "out"), "--model", str(tiny_model)]
    assert main([*args, "--max-memory", "4"]) == 2
    err = capsys.readouterr().err
    assert "bomb.png: 12000x12000 x4, even tiled, needs about 9.5 GB of memory (image 2.3 GB, output 6.9 GB, network" in err
    assert "over the 4 GB limit (--max-memory)" in err and not (tmp_path / "out" / "bomb_out.png").exists()
    for bad in (["--max-memory", "0"], ["--max-megapixels", "-1"]):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 2 and "is not a positive number" in capsys.readouterr().err


def test_an_image_too_big_to_run_whole_is_tiled_with_progress_lines(tiny_model, tmp_path):
    import subprocess
    import sys

    a = _png(tmp_path / "a.png", size=(48, 64))
    realsr = Path(sys.executable).parent / "realsr"
    # tiny model: ~7 KB a pixel whole (22 MB for 48x64); a 32 px tile with 4 px of context fits in 15 MB
    run = subprocess.run(
        [str(realsr), "upscale", "-i", str(a), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--max-memory", "0.015", "--tile-pad", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "a.png: tiled at 32 px: whole it needs about" in run.stderr and "over the 0.015 GB limit (--max-memory)" in run.stderr
    assert "a.png: 64x48 in 6 tiles of 32 px" in run.stderr and "a_out.png (256x192" in run.stderr  # plain lines: stderr is no terminal
    assert cv2.imread(str(tmp_path / "out" / "a_out.png")).shape == (192, 256, 3)


def test_plain_progress_lines_per_tile_where_there_is_no_terminal():
    from realsr.steps.upscale import LogProgress

    lines = []
    p = LogProgress(lines.append, every=0)
    p.reset(total=3)
    p.set_description("big.png")
    for _ in range(3):
        p.update(1)
    assert lines[:2] == ["big.png: 1/3 tiles (0 s)", "big.png: 2/3 tiles (0 s)"] and len(lines) == 2
