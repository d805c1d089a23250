"""Training's degradation as batched tensor operations (`degrade_on device`) against today's
per-sample path (issue 38): exact where the operations are exact, statistically on many samples
(noise level per brightness bin, the JPEG quality read back, the blur's second moments on white
noise), and a short training run end to end. All on the CPU.

The run folder is made by hand (no degrade run): clean HR photos, anisotropic Gaussian kernels,
and a noise bank whose noise level rises with brightness, so a brightness match that reads the
wrong brightness shows as the wrong level.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from realsr.flows.train_settings import TrainSettings, train_spec
from realsr.models.degradation import degrade, to_uint8
from realsr.models.degradation_batched import aligned_stack, blur_subsample, jpeg, lr_mean_weights, noise_fields
from realsr.models.jpeg import recompress
from realsr.models.kernels import bicubic_kernel
from realsr.models.noise import assemble_noise, crop_brightness, noise_cells
from realsr.steps.degrade_kernels import kernel_set
from realsr.steps.train import train
from realsr.steps.train_data import DegradedCrops, TrainImage, training_images
from realsr.steps.train_device import CleanCrops, DeviceDegradation, degrade_samples, where_to_degrade
from realsr.storage.banks import write_kernel_bank, write_noise_bank
from realsr.storage.images import jpeg_quality
from realsr.storage.run_dir import RunDir
from tests.conftest import textured, write_rgb

QUALITY, PATCH = 70, 16


def gaussian(size: int, sy: float, sx: float, angle: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    u, v = c * yy + s * xx, -s * yy + c * xx
    k = np.exp(-0.5 * (u**2 / sy**2 + v**2 / sx**2))
    return k / k.sum()


def level(brightness):
    """The bank's noise std (0-255 levels) at a brightness: 1.5 in the dark to 7.5 in the light."""
    return 1.5 + 6.0 * np.asarray(brightness) / 255.0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder at x2: 4 textured photos (two JPEG sources at QUALITY), 3 kernels, 64 noise patches."""
    root = tmp_path_factory.mktemp("batched") / "run"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        img = (textured(160, 160, i).astype(np.float32) * 0.3 + (20, 70, 120, 160)[i]).astype(np.uint8)  # a brightness each, none clipped
        write_rgb(root / "clean_hr" / f"p{i}-0000000{i}.png", img)
        src = f"/photos/p{i}.{'jpg' if i % 2 else 'png'}"
        rows.append(
            {"name": f"p{i}-0000000{i}", "source": src, "kernel_index": i % 3, "kernel_id": f"k{i % 3}", "source_jpeg_quality": QUALITY if i % 2 else None}
        )
    kernels = [gaussian(13, 1.6, 0.7, 30), gaussian(13, 0.9, 0.9, 0), gaussian(13, 1.3, 0.6, 100)]
    write_kernel_bank(root / "kernels.zarr", [kernel_set(2, kernels, ["a", "b", "c"], ["1" * 64] * 3, ["test"] * 3)], {"kernel_source": "test"}, {})
    n = 64
    gray = np.linspace(20, 235, n)
    noise = rng.normal(0, 1, (n, PATCH, PATCH, 3))
    noise -= noise.mean((1, 2), keepdims=True)
    noise *= (level(gray) / noise.reshape(n, -1).std(1))[:, None, None, None]
    table = {
        "noise": noise.astype(np.float16),
        "source": np.array(["x.png"] * n),
        "source_sha256": np.array([f"{i:064d}" for i in range(n)]),
        "position": np.stack([np.arange(n), np.zeros(n)], 1).astype(np.int32),
        "gray_mean": gray.astype(np.float32),
        "gray_var": (level(gray) ** 2).astype(np.float32),
        "channel_mean": np.repeat(gray[:, None], 3, 1).astype(np.float32),
        "channel_var": np.repeat(level(gray)[:, None] ** 2, 3, 1).astype(np.float32),
        "noise_level": level(gray).astype(np.float32),
    }
    patches = np.clip(np.rint(gray[:, None, None, None] + noise), 0, 255).astype(np.uint8)
    write_noise_bank(root / "noise.zarr", patches, table, {"patch_size": PATCH, "rule": "adaptive"})
    (root / "pairs").mkdir()
    (root / "pairs" / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "run.json").write_text(json.dumps({"settings": {"scale": 2}}))
    return root


def crops(run: Path, hr_size: int = 32, seed: int = 0, images=None, **over) -> DegradedCrops:
    found = training_images(RunDir(run), hr_size, 0).train
    return DegradedCrops(RunDir(run), images or found, train_spec(scale=2, hr_size=hr_size, seed=seed, **over).data)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def test_blur_and_subsampling_equal_degrade_to_float_rounding_and_a_sample_ignores_its_batch():
    rng = np.random.default_rng(1)
    for scale, size, hr_size in ((2, 13, 32), (3, 13, 48), (4, 25, 64)):
        ks = [bicubic_kernel(2, 13) if scale == 2 else gaussian(size, 2.0, 1.0, 20)] + [
            gaussian(size, *rng.uniform(0.5, 2.5, 2), rng.uniform(0, 180)) for _ in range(3)
        ]
        hr = rng.random((4, hr_size, hr_size, 3), dtype=np.float32)
        aligned, anchor = aligned_stack(np.stack(ks), scale)
        got = blur_subsample(torch.from_numpy(hr).permute(0, 3, 1, 2), aligned, anchor, scale)
        want = np.stack([degrade(h, k, scale) for h, k in zip(hr, ks)])
        assert got.shape == (4, 3, hr_size // scale, hr_size // scale)
        assert np.abs(nhwc(got) - want).max() < 2e-6, scale  # float32 sums in another order than OpenCV's: not bitwise
        alone = blur_subsample(torch.from_numpy(hr[2:3]).permute(0, 3, 1, 2), aligned[2:3], anchor, scale)
        assert torch.equal(alone[0], got[2])  # bitwise: the rest of the batch changes nothing
    with pytest.raises(ValueError, match="multiple of the scale"):
        blur_subsample(torch.zeros(1, 3, 33, 32), aligned[:1], anchor, 4)


def test_the_brightness_read_off_the_hr_is_the_blurred_lrs_and_the_noise_crops_are_the_banks():
    rng = np.random.default_rng(2)
    k = gaussian(13, 1.5, 0.8, 60)
    aligned, anchor = aligned_stack(k[None], 2)
    hr = rng.random((64, 64, 3), dtype=np.float32)
    lr = degrade(hr, k, 2)  # 32 px: one 32 px patch covers it, 16 px patches tile it 2 x 2
    for patch in (32, 16):
        cells = [(0, 0)] if patch >= 32 else noise_cells(32, patch)
        maps = lr_mean_weights(aligned[0], anchor, 2, 64, cells, min(patch, 32))
        got = 255 * np.einsum("chw,hw->c", maps, hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        assert np.abs(got - crop_brightness(lr, patch)).max() < 1e-3
    bank = rng.normal(0, 6, (5, 16, 16, 3)).astype(np.float16)
    one = noise_fields(torch.from_numpy(bank), torch.tensor([[3], [1]]), torch.tensor([[2, 5], [0, 0]]), 8)
    crop = bank[3, 2:10, 5:13].astype(np.float32) / 255.0
    assert np.abs(nhwc(one)[0] - (crop - crop.mean((0, 1)))).max() < 1e-7
    mosaic = noise_fields(torch.from_numpy(bank), torch.tensor([[4, 0, 2, 1]]), torch.zeros(1, 2, dtype=torch.long), 24)
    assert np.abs(nhwc(mosaic)[0] - assemble_noise([bank[i] for i in (4, 0, 2, 1)], 24)).max() < 1e-7


def test_jpeg_on_the_cpu_is_opencvs_to_the_byte_at_each_samples_quality():
    rng = np.random.default_rng(3)
    img = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (5, 5), 1.0) for _ in range(4)])
    qualities = [35, 0, 90, 35]
    out, coded = jpeg(torch.from_numpy(img).permute(0, 3, 1, 2), qualities)
    for i, q in enumerate(qualities):
        if not q:
            assert coded[i] is None and np.array_equal(nhwc(out)[i], img[i])
            continue
        assert jpeg_quality(coded[i].numpy().tobytes()) == {"quality": q, "table_error": 0.0}
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[i][..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        assert coded[i].numpy().tobytes() == buf.tobytes()
        assert np.array_equal(nhwc(out)[i], to_uint8(recompress(img[i].astype(np.float32) / 255, q)))


@pytest.mark.parametrize("hr_size", [32, 64])  # a noise patch per crop, and a 2 x 2 mosaic of them
def test_a_sample_gets_the_same_draws_and_lr_on_both_paths(run, hr_size):
    data = crops(run, hr_size, kernel_per="sample")
    ns = range(48)
    want = [data.sample(n) for n in ns]
    lr, hr, items = degrade_samples(data, ns)
    assert np.array_equal(nhwc(hr), np.stack([w[1] for w in want]))
    for w, it in zip(want, items):
        assert it[1] == w[2]["kernel_index"] and it[4] == (w[2]["jpeg_quality"] or 0)
        assert "+".join(data.bank().patch_id(int(i)) for i in it[2]) == w[2]["noise_id"]
    diff = np.abs(nhwc(lr) - np.stack([w[0] for w in want]))
    assert diff.max() <= 1 / 255 + 1e-7 and (diff > 0).mean() < 1e-3  # the same pixels; a rounding at .5 may flip
    assert {it[4] for it in items} > {0} and len({it[1] for it in items}) == 3  # JPEG and every kernel were drawn


def test_noise_level_per_brightness_matches_the_per_sample_path_on_other_draws(run):
    """Seeds 0 and 1: other crops and draws on each path, the same noise level (residual std, in
    levels) per bin of the LR's brightness; and the bank's level there, which rises with it."""
    edges = np.array([40, 90, 140, 190, 235])
    levels = []
    for path, seed in (("loader", 0), ("device", 1)):
        data = crops(run, 32, seed, jpeg="off")
        if path == "loader":
            got = [data.sample(n) for n in range(160)]
            lr, hr, ks = np.stack([g[0] for g in got]), np.stack([g[1] for g in got]), [g[2]["kernel_index"] for g in got]
        else:
            t_lr, t_hr, items = degrade_samples(data, range(160))
            lr, hr, ks = nhwc(t_lr), nhwc(t_hr), [it[1] for it in items]
        clean = np.stack([degrade(h, data.kernels[k], 2) for h, k in zip(hr, ks)])
        var = (((lr - clean) * 255) ** 2).mean((1, 2, 3))  # per crop
        which = np.digitize((clean @ np.array([0.299, 0.587, 0.114])).mean((1, 2)) * 255, edges)
        assert all((which == b).sum() >= 20 for b in range(1, len(edges))), np.bincount(which)
        levels.append(np.sqrt([var[which == b].mean() for b in range(1, len(edges))]))
    loader, device = levels
    expect = np.sqrt(level((edges[:-1] + edges[1:]) / 2) ** 2 + 1 / 12)  # the bank's level and the 8-bit rounding
    assert np.all(np.abs(device / loader - 1) < 0.1), (loader, device)
    assert np.all(np.abs(device / expect - 1) < 0.15), (device, expect)


def test_the_jpeg_quality_read_back_is_the_drawn_one_on_both_paths(run):
    data = crops(run, 32, 5, noise=False)
    items = [CleanCrops(data)[n] for n in range(96)]
    device = DeviceDegradation(data, torch.device("cpu"))
    device(*default_collate(items))
    drawn = [it[4] for it in items]
    back = [jpeg_quality(c.numpy().tobytes())["quality"] if c is not None else 0 for c in device.coded]
    assert back == drawn and set(drawn) - {0} <= set(range(QUALITY - 5, QUALITY + 6))
    assert [data.sample(n)[2]["jpeg_quality"] or 0 for n in range(96)] == drawn  # the same draws as the per-sample path
    seed6 = CleanCrops(crops(run, 32, 6, noise=False))
    other = [seed6[n][4] for n in range(96)]
    a, b = np.array([q for q in drawn if q]), np.array([q for q in other if q])
    assert 30 < len(a) < 66 and 30 < len(b) < 66  # half the photos are JPEGs
    assert abs(a.mean() - b.mean()) < 1.5 and a.std() > 2 and b.std() > 2  # the same jitter around the source's quality


def test_heic_sources_go_through_the_heic_codec_per_sample(run):
    images = [replace(im, source=im.source.rsplit(".", 1)[0] + ".heic", jpeg_quality=None, heic_quality=60) for im in training_images(RunDir(run), 32, 0).train]
    data = crops(run, 32, 2, images=images)
    lr, _, items = degrade_samples(data, range(3))
    want = [data.sample(n) for n in range(3)]
    assert [it[5] for it in items] == [True] * 3 and [it[4] for it in items] == [w[2]["heic_quality"] for w in want]
    assert np.abs(nhwc(lr) - np.stack([w[0] for w in want])).max() <= 1 / 255  # x265 on the same 8-bit LR (bitwise here)


def _moments(k: np.ndarray, centre: tuple[int, int], r: int = 4) -> np.ndarray:
    """Centre of mass (y, x) and second central moments (yy, xx, yx) of a kernel, in px, over
    the (2r+1)^2 window around `centre` (an estimate's far taps hold only its noise)."""
    cy, cx = centre
    w = k[cy - r : cy + r + 1, cx - r : cx + r + 1]
    w = w / w.sum()
    yy, xx = np.indices(w.shape)
    my, mx = (w * yy).sum(), (w * xx).sum()
    return np.array([cy - r + my, cx - r + mx, (w * (yy - my) ** 2).sum(), (w * (xx - mx) ** 2).sum(), (w * (yy - my) * (xx - mx)).sum()])


def _kernel_from_white_noise(lr: torch.Tensor, hr: torch.Tensor, ka: int, anchor: int, s: int = 2) -> np.ndarray:
    """The LR's cross-correlation with the HR at each tap offset, over the LR pixels whose taps all
    fall inside the crop: the kernel, where the HR is white noise."""
    x, y = (hr - hr.mean()).double(), (lr - lr.mean()).double()
    i0 = -(-anchor // s)  # the first LR pixel (o = 0 at x2) whose first tap is inside
    start = s * i0 - anchor
    taps = F.unfold(x.reshape(-1, 1, *x.shape[-2:])[:, :, start:, start:], ka, stride=s)  # (B*3, ka*ka, n*n)
    n = int(round(taps.shape[-1] ** 0.5))
    inner = y.reshape(-1, *y.shape[-2:])[:, i0 : i0 + n, i0 : i0 + n].reshape(len(taps), 1, -1)
    return ((taps * inner).sum((0, 2)) / (x.var() * taps.shape[0] * taps.shape[-1])).reshape(ka, ka).numpy()


def test_the_blur_measured_on_white_noise_is_the_kernels_on_both_paths(run, tmp_path):
    """White noise in: the blur's centre, widths and orientation measured from the LR equal the
    bank kernel's (1.6 x 0.7 px at 30 degrees, after the half-pixel alignment) on both paths."""
    photo = tmp_path / "white-00000000.png"
    write_rgb(photo, np.random.default_rng(4).integers(64, 192, (384, 384, 3), dtype=np.uint8))  # large: crops that overlap little; unclipped
    data = crops(run, 64, 7, images=[TrainImage("white", str(photo), "white.png", 0, None, (384, 384))], noise=False, jpeg="off")
    aligned, anchor = aligned_stack(data.kernels[:1], 2)
    kernel = aligned[0].numpy().astype(np.float64)
    centre = np.unravel_index(np.argmax(kernel), kernel.shape)
    true = _moments(kernel, centre)
    got = [data.sample(n) for n in range(128)]
    loader = _kernel_from_white_noise(*(torch.from_numpy(np.stack([g[i] for g in got])).permute(0, 3, 1, 2) for i in (0, 1)), len(kernel), anchor)
    lr, hr, _ = degrade_samples(data, range(128))
    device = _kernel_from_white_noise(lr, hr, len(kernel), anchor)
    for est in (_moments(loader, centre), _moments(device, centre)):
        assert np.abs(est[:2] - true[:2]).max() < 0.1, (est, true)  # the same centre
        assert np.abs(est[2:] - true[2:]).max() < 0.15, (est, true)  # the same widths and orientation
    assert abs(true[2] - true[3]) > 0.8 and true[4] > 0.5  # a tilted kernel: a transposed or turned blur would fail the line above


def test_where_the_degradation_runs():
    assert where_to_degrade("auto", torch.device("cuda"))[0] == "device" and where_to_degrade("auto", torch.device("cpu"))[0] == "loader"
    assert where_to_degrade("device", torch.device("cpu"))[0] == "device" and where_to_degrade("loader", torch.device("cuda"))[0] == "loader"
    assert TrainSettings.from_preset("test-tiny", run_dir="r", out="o").spec().degrade_on == "auto"


def test_a_short_training_run_degrades_on_the_device_end_to_end(run, tmp_path):
    """test-tiny on the batched path with a loader worker process: it trains and logs where the
    LR are made; its G ends where the per-sample path's does (the same LR, up to a rare rounding)."""
    lines, out = [], {}
    for where in ("device", "loader"):
        spec = TrainSettings.from_preset(
            "test-tiny", run_dir=run, out=tmp_path / where, degrade_on=where, perceptual_weight=0.0, val_crops=0, iterations=3, workers=1
        ).spec()
        summary = train(spec, log=lines.append, bar=False)
        out[where] = torch.load(summary["latest"], weights_only=True)["params"]
        assert summary["iterations"] == 3 and summary["degrade_on"] == where
    assert any("degradation in batches on cpu (degrade_on device)" in line for line in lines)
    assert any("degradation in the loader workers (degrade_on loader)" in line for line in lines)
    for name, p in out["device"].items():
        assert torch.allclose(p, out["loader"][name], rtol=1e-4, atol=1e-6), name
