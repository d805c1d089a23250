"""What train-flow trains and validates on: every clean HR image large enough for a crop (not
only those degrade-flow cut pairs from), and validation crops of held-out photos degraded as
training degrades them, the same at every validation."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from realsr.flows.cli import main
from realsr.flows.train_settings import TrainSettings, train_spec
from realsr.models.degradation import degrade, to_uint8
from realsr.models.jpeg import recompress
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.steps.train import train
from realsr.steps.train_data import DegradedCrops, training_images, validation_crops
from realsr.storage.banks import open_kernel_bank
from realsr.storage.model_files import read_checkpoint, save_generator
from realsr.storage.run_dir import RunDir
from tests.conftest import flat_noisy, textured, write_rgb

QUALITY = 80


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, prefect_server) -> Path:
    """Two photos that clean up to 96x128 (too small for degrade's 128 px pairs) and two to 160x160."""
    root = tmp_path_factory.mktemp("mixed")
    for i, (h, w) in enumerate([(192, 256), (192, 256), (320, 320), (320, 320)]):
        img = textured(h, w, i)
        img[: h // 2] = flat_noisy(h // 2, w, 110 + 10 * i, 4.0, i)
        write_rgb(root / "photos" / f"photo_{i}.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert main(["degrade", "--source", str(root / "photos"), "--out", str(root / "run"), "--pair-hr-size", "128", "--workers", "1"]) == 0
    return root / "run"


def test_every_clean_hr_image_trains_whatever_the_pair_size(mixed_run, tmp_path):
    run = RunDir(mixed_run)
    index = [json.loads(line) for line in run.images_index.read_text().splitlines()]
    assert sorted(r["pairs"] for r in index) == [0, 0, 1, 1] and all(r["source_jpeg_quality"] == QUALITY for r in index)
    found = training_images(run, 64, 4)
    assert len(found.train) + len(found.held) == 4 and len(found.held) == 1  # a quarter held out
    assert not [n for n in found.notes if "left out" in n]
    assert {im.kernel_index for im in found.train} | {h.image.kernel_index for h in found.held} <= set(r["kernel_index"] for r in index)
    big = training_images(run, 128, 0)
    assert len(big.train) == 2 and big.held == []
    assert any(n.startswith("2 of 4 clean HR images left out, smaller than 128 px") for n in big.notes)
    old = tmp_path / "old"  # a run folder from before the image index: its pairs' images, with a note
    shutil.copytree(mixed_run, old)
    (old / "pairs" / "images.jsonl").unlink()
    before = training_images(RunDir(old), 64, 0)
    assert len(before.train) == 2 and any("images.jsonl" in n and "rerun degrade" in n for n in before.notes)


def test_validation_crops_are_held_out_fixed_and_degraded_with_their_own_kernel(mixed_run):
    run = RunDir(mixed_run)
    found = training_images(run, 32, 16, seed=5)
    held = found.held[0].image
    assert held.name not in {im.name for im in found.train}
    assert found.val_crops == min(16, (held.size[0] // 32) * (held.size[1] // 32))
    assert training_images(run, 32, 16, seed=5).held == found.held  # the same photos and crops on a resume
    plain = DegradedCrops(run, found.train, train_spec(scale=4, hr_size=32, seed=5, noise=False, jpeg="off").data)
    crops = validation_crops(plain, found.held)
    assert len(crops) == found.val_crops and len({name for name, _, _ in crops}) == len(crops)
    kernel = open_kernel_bank(run.kernels)[1][4].kernels[held.kernel_index].astype(np.float64)
    for _, lr, hr in crops:
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
        np.testing.assert_array_equal(lr, to_uint8(degrade(hr, kernel, 4)).astype(np.float32) / 255)
    squeezed = validation_crops(DegradedCrops(run, found.train, train_spec(scale=4, hr_size=32, seed=5, noise=False, jpeg="auto").data), found.held)
    np.testing.assert_array_equal(squeezed[0][1], recompress(crops[0][1], QUALITY))  # the photo's own quality, no jitter
    noisy = DegradedCrops(run, found.train, train_spec(scale=4, hr_size=32, seed=5, noise=True, jpeg="off").data)
    a, b = validation_crops(noisy, found.held), validation_crops(noisy, found.held)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))  # drawn once: every validation sees the same LR
    assert np.mean([np.abs(x[1] - p[1]).mean() for x, p in zip(a, crops)]) > 0.5 / 255  # with the bank's noise


def test_train_writes_its_validation_set_and_records_its_init(mixed_run, tmp_path):
    init = tmp_path / "init.pth"
    save_generator(init, RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=8)))
    logs = []
    spec = TrainSettings.from_preset("test-tiny", run_dir=mixed_run, out=tmp_path / "t", init=str(init), val_crops=6).spec()
    summary = train(spec, log=logs.append, bar=False)
    assert summary["training_images"] + summary["held_out_images"] == 4 and summary["validation_crops"] == 6
    assert any(f"{summary['training_images']} training images, 6 validation crops from {summary['held_out_images']} held-out photos" in m for m in logs)
    val = tmp_path / "t" / "val"
    assert len(list((val / "lr").glob("*.png"))) == len(list((val / "hr").glob("*.png"))) == 6
    _, meta = read_checkpoint(tmp_path / "t" / "models" / "net_g_latest.pth")
    assert meta["init"] == str(init.resolve())
    lr = sorted((val / "lr").iterdir())[0]
    for name, flags in (("init", ["--model", str(init)]), ("blend0", ["--model", str(summary["latest"]), "--blend", "0"])):
        assert main(["upscale", "-i", str(lr), "-o", str(tmp_path / name), *flags]) == 0
    assert (tmp_path / "init" / f"{lr.stem}_out.png").read_bytes() == (tmp_path / "blend0" / f"{lr.stem}_out.png").read_bytes()
