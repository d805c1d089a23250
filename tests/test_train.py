"""train-flow: losses, discriminators, EMA, on-the-fly degradation, JPEG quality, init, refusal,
resume = uninterrupted (bitwise), and a tiny train -> evaluate on the CPU."""

import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realsr.flows.cli import main
from realsr.flows.train_settings import TrainSettings, train_spec
from realsr.models.degradation import degrade
from realsr.models.discriminators import PatchGAN, VGGStyleDiscriminator128
from realsr.models.jpeg import estimate_quality
from realsr.models.losses import PerceptualLoss, ragan_d_loss, ragan_g_loss, vgg19_features
from realsr.models.training import EMA, Trainer
from realsr.steps.train import TrainSpec, train
from realsr.steps.train_data import DegradedCrops, TrainingDataError, loader, training_images
from realsr.steps.train_setup import build_generator
from realsr.storage.banks import KernelSet, open_kernel_bank, write_kernel_bank
from realsr.storage.run_dir import RunDir
from realsr.storage.train_checkpoints import load_checkpoint
from realsr.storage.weights import require
from tests.conftest import flat_noisy, textured, write_rgb

QUALITY = 80


@pytest.fixture(scope="module")
def degrade_run(tmp_path_factory, prefect_server) -> Path:
    """A degrade-flow run on 4 JPEG photos (quality 80, noise sigma 4 levels), bicubic kernels, 64 px pairs."""
    root = tmp_path_factory.mktemp("train")
    for i in range(4):
        img = textured(192, 256, i)
        img[:96] = flat_noisy(96, 256, 110 + 10 * i, 4.0, i)
        write_rgb(root / "photos" / f"photo_{i}.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert main(["degrade", "--source", str(root / "photos"), "--out", str(root / "run"), "--pair-hr-size", "64", "--workers", "1"]) == 0
    return root / "run"


def _tiny(run: Path, out: Path, **over) -> TrainSpec:
    return TrainSettings.from_preset("test-tiny", run_dir=run, out=out, **over).spec()  # VGG19: the verified `vgg19` weights


def test_ragan_and_perceptual_losses_on_known_inputs():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])  # means 1 and 0
    bce = lambda x, y: float(F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y)))  # noqa: E731
    d = (bce([2.0, 0.0], [1.0, 1.0]) + bce([-2.0, 0.0], [0.0, 0.0])) / 2  # real - mean(fake), fake - mean(real)
    g = (bce([2.0, 0.0], [0.0, 0.0]) + bce([-2.0, 0.0], [1.0, 1.0])) / 2
    assert float(ragan_d_loss(real, fake)) == pytest.approx(d) and float(ragan_g_loss(real, fake)) == pytest.approx(g)
    assert float(ragan_d_loss(torch.tensor([9.0]), torch.tensor([-9.0]))) < 1e-6  # D sure and right: no loss
    loss = PerceptualLoss(vgg19_features(require("vgg19")))
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((1, 3, 32, 32), dtype=np.float32))
    assert float(loss(a, a)) == 0.0
    b = (a + 0.1).clamp(0, 1)
    norm = lambda x: (x - loss.mean) / loss.std  # noqa: E731
    assert float(loss(b, a)) == pytest.approx(float(F.l1_loss(loss.trunk(norm(b)), loss.trunk(norm(a)))), rel=1e-6) and float(loss(b, a)) > 0
    assert len(loss.trunk) == 35 and isinstance(loss.trunk[34], torch.nn.Conv2d)  # ends at conv5_4, before its ReLU


def test_discriminator_shapes_and_receptive_field():
    d = PatchGAN(3, 8, 3).eval()
    assert d.receptive_field == 70
    assert d(torch.zeros(2, 3, 128, 128)).shape == (2, 1, 14, 14)
    x = torch.zeros(1, 3, 160, 160, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)))
    assert int(rows.max() - rows.min() + 1) == 70  # one logit sees a 70 px window
    v = VGGStyleDiscriminator128(3, 8)
    assert v(torch.zeros(2, 3, 128, 128)).shape == (2, 1)
    with pytest.raises(ValueError, match="128x128"):
        v(torch.zeros(1, 3, 64, 64))


def test_ema_follows_the_average():
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(net.weight, 1.0)
    ema = EMA(net, decay=0.9)
    torch.nn.init.constant_(net.weight, 3.0)
    ema.update(net)
    assert torch.allclose(ema.net.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    assert not ema.net.weight.requires_grad
    assert EMA(net, 0.999).decay_at(1) == pytest.approx(2 / 11) and EMA(net, 0.999).decay_at(10**6) == 0.999  # ramps up
    ema.update(net, iteration=0)  # decay 0.1 at the first update: the average moves to G at once
    assert torch.allclose(ema.net.weight, torch.full((1, 2), 0.1 * 1.2 + 0.9 * 3))


def test_jpeg_quality_from_files_at_known_qualities(tmp_path):
    from PIL import Image

    from realsr.storage.images import jpeg_quality

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for q in (20, 55, 75, 95):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert jpeg_quality(buf.tobytes()) == {"quality": q, "table_error": 0.0}
        b = io.BytesIO()
        Image.fromarray(img).save(b, "JPEG", quality=q)
        assert jpeg_quality(b.getvalue())["quality"] == q
    ok, png = cv2.imencode(".png", img)
    assert jpeg_quality(png.tobytes()) is None
    assert estimate_quality({0: [1] * 64})[0] == 100


def test_on_the_fly_degradation_applies_the_kernel_noise_and_jpeg(degrade_run):
    run = RunDir(degrade_run)
    found = training_images(run, 32, 8)
    images = found.train
    assert len(images) == 3 and len(found.held) == 1 and all(im.jpeg_quality == QUALITY for im in images)
    _, sets = open_kernel_bank(run.kernels)
    plain = DegradedCrops(run, images, train_spec(scale=4, hr_size=32, seed=3, noise=False, jpeg="off").data)
    lr, hr, info = plain.sample(7)
    assert lr.shape == (8, 8, 3) and hr.shape == (32, 32, 3) and info["jpeg_quality"] is None
    expect = np.rint(np.clip(degrade(hr, sets[4].kernels[info["kernel_index"]].astype(np.float64), 4), 0, 1) * 255) / 255
    assert np.abs(lr - expect).max() < 1e-6  # the image's kernel, applied after the flips and turns
    noisy = DegradedCrops(run, images, train_spec(scale=4, hr_size=32, seed=3, noise=True, jpeg="off").data)
    diffs = np.stack([noisy.sample(n)[0] - plain.sample(n)[0] for n in range(40)])
    assert diffs.std() > 1 / 255 and abs(diffs.mean()) < 0.5 / 255  # real noise, zero-mean
    squeezed = DegradedCrops(run, images, train_spec(scale=4, hr_size=32, seed=3, noise=False, jpeg="auto", jpeg_range=5).data)
    qs = {squeezed.sample(n)[2]["jpeg_quality"] for n in range(30)}
    assert qs <= set(range(QUALITY - 5, QUALITY + 6)) and len(qs) > 3
    assert np.array_equal(plain.sample(7)[0], lr)  # sample n is the same every time it is drawn
    one = [b[0] for b in loader(plain, 2, 0, 3, 0)]
    two = [b[0] for b in loader(plain, 2, 0, 3, 2)]  # worker processes: the same batches
    assert all(torch.equal(a, b) for a, b in zip(one, two)) and len(one) == 3


def test_init_from_both_released_generators(tmp_path):
    for name in ("realsr-df2k", "realesrgan-x4plus"):
        nets = TrainSettings.from_preset("finetune", run_dir=tmp_path, out=tmp_path / "o", init=name).spec().nets
        g, desc = build_generator(nets.init, nets.g_shape(4), 0)
        assert "23 blocks" in desc and name.split("-")[0] in desc.lower().replace("_", "")
    r = train_spec().recipe
    trainer = Trainer(g, PatchGAN(3, 8, 3), None, r.losses, r.schedule, r.ema_decay)
    before = g.conv_last.weight.detach().clone()
    logs = trainer.step(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32))
    assert set(logs) >= {"l_pix", "l_g_gan", "l_d"} and not torch.equal(before, g.conv_last.weight)


def test_a_bank_without_a_valid_kernel_is_refused_before_training(degrade_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(degrade_run, run)
    attrs, sets = open_kernel_bank(run / "kernels.zarr")
    broken = [
        KernelSet(k.scale, k.kernels, k.source, k.source_sha256, k.method, {**k.checks, "valid": np.zeros(len(k), bool)}, k.reason) for k in sets.values()
    ]
    write_kernel_bank(run / "kernels.zarr", broken, {k: v for k, v in attrs.items() if k not in ("kind", "schema_version", "digest", "scales", "versions")}, {})
    with pytest.raises(TrainingDataError, match="no valid x4 kernel"):
        train(_tiny(run, tmp_path / "t"), log=lambda m: None, bar=False)
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_a_killed_run_resumes_to_the_same_weights(degrade_run, tmp_path):
    whole = train(_tiny(degrade_run, tmp_path / "whole"), log=lambda m: None, bar=False)
    assert whole["resumed_from"] == 0 and (tmp_path / "whole" / "models" / "net_g_6.pth").exists()

    def kill(it, logs):
        if it == 4:  # after the checkpoint at 3, before the one at 6
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_tiny(degrade_run, tmp_path / "killed"), log=lambda m: None, bar=False, on_iteration=kill)
    with pytest.raises(TrainingDataError, match="resume it"):
        train(_tiny(degrade_run, tmp_path / "killed"), log=lambda m: None, bar=False)
    relative = Path(os.path.relpath(degrade_run))  # the same run folder, named another way
    resumed = train(_tiny(relative, tmp_path / "killed", resume="auto"), log=lambda m: None, bar=False)
    assert resumed["resumed_from"] == 3 and not [n for n in resumed["notes"] if "other settings" in n]
    a, b = load_checkpoint(tmp_path / "whole", 6), load_checkpoint(tmp_path / "killed", 6)
    for part in (1, 2, 3):  # G, EMA of G, D: bitwise
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    rows = (tmp_path / "killed" / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]  # the redone iteration 4 logged once


def test_tiny_train_then_upscale_and_evaluate(degrade_run, tmp_path, capsys):
    args = ["train", str(degrade_run), "--out", str(tmp_path / "t"), "--preset", "test-tiny", "--runtime", "local", "--iterations", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "net_g_latest.pth" in out and (tmp_path / "t" / "validation.csv").exists() and list((tmp_path / "t" / "samples").glob("*.png"))
    model = tmp_path / "t" / "models" / "net_g_latest.pth"
    lr_dir, hr_dir = degrade_run / "pairs" / "lr", degrade_run / "pairs" / "hr"
    assert main(["upscale", "-i", str(sorted(lr_dir.iterdir())[0]), "-o", str(tmp_path / "up"), "--model", str(model)]) == 0
    assert cv2.imread(str(next((tmp_path / "up").glob("*.png")))).shape == (64, 64, 3)
    (tmp_path / "lr").mkdir()
    for p in sorted(lr_dir.iterdir())[:2]:
        (tmp_path / "lr" / p.name).write_bytes(p.read_bytes())
    assert main(["evaluate", "--lr", str(tmp_path / "lr"), "--hr", str(hr_dir), "--model", str(model), "--out", str(tmp_path / "ev")]) == 0
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "bicubic" in table and "net_g_latest" in table
    assert main([*args[:4], "--preset", "test-tiny", "--lr-g", "5"]) == 2  # out of bounds: a clear refusal
    assert "lr_g" in capsys.readouterr().err


def test_the_log_and_summary_say_which_precision_ran_and_why(degrade_run, tmp_path, monkeypatch):
    import realsr.models.devices as devices

    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512f"})  # a CPU without native bf16
    logs = []
    summary = train(_tiny(degrade_run, tmp_path / "t", iterations=2, val_every=2, save_every=2), log=logs.append, bar=False)
    assert summary["precision"] == "fp32" and any("precision fp32 (auto: the CPU has no native bf16" in m for m in logs), logs[:3]
    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # realsr's default for its workers, which the command set ...
    monkeypatch.setenv("REALSR_USER_THREADS", "")  # ... where the user had set none: training takes every core
    torch.set_num_threads(1)
    summary = train(_tiny(degrade_run, tmp_path / "t2", iterations=2, val_every=2, save_every=2), log=logs.append, bar=False)
    assert summary["precision"] == "bf16" and any("precision bf16 autocast (auto: the CPU has avx512_bf16)" in m for m in logs)
    cores = len(os.sched_getaffinity(0))
    assert summary["threads"] == cores and any(f"{cores} CPU threads" in m for m in logs)
    assert devices.compute_threads({"REALSR_USER_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3  # the user's own count wins
    assert devices.compute_threads({"OMP_NUM_THREADS": "1"}) == 1  # not started by the command: the environment's


def test_a_damaged_newest_state_is_skipped_and_nothing_to_resume_is_refused(degrade_run, tmp_path):
    train(_tiny(degrade_run, tmp_path / "t"), log=lambda m: None, bar=False)
    state = tmp_path / "t" / "training_states" / "6.state"
    state.write_bytes(state.read_bytes()[:100])  # torn: as if the disk filled up while writing
    logs = []
    again = train(_tiny(degrade_run, tmp_path / "t", resume="require"), log=logs.append, bar=False)
    assert again["resumed_from"] == 3 and any("skipping iteration 6" in m for m in logs)
    with pytest.raises(TrainingDataError, match="nothing to resume"):
        train(_tiny(degrade_run, tmp_path / "empty", resume="require"), log=lambda m: None, bar=False)


def test_sigkill_of_train_leaves_no_process_and_the_rerun_ends_as_an_uninterrupted_run(degrade_run, tmp_path):
    from tests.test_flow import left_behind, process_tree

    flags = ["--preset", "test-tiny", "--iterations", "60", "--save-every", "10", "--val-every", "1000", "--workers", "1"]
    mark = uuid.uuid4().hex
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "REALSR_TEST_RUN": mark}  # its own API server
    cmd = [sys.executable, "-m", "realsr.flows", "train", str(degrade_run), "--out", str(tmp_path / "killed"), *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = tmp_path / "killed" / "training_states"
    deadline = time.time() + 180
    while time.time() < deadline and not (states.exists() and list(states.glob("*.state"))):
        time.sleep(0.02)
    tree = process_tree(proc.pid)
    assert len(tree) >= 3, "the command, its API server and a data-loader worker"
    proc.kill()
    proc.wait()
    done = sorted(int(p.stem) for p in states.glob("*.state"))
    assert done and done[-1] < 60, "the kill should land mid-run"
    deadline = time.time() + 15
    while left_behind(tree, f"REALSR_TEST_RUN={mark}") and time.time() < deadline:
        time.sleep(0.2)
    assert left_behind(tree, f"REALSR_TEST_RUN={mark}") == []
    assert subprocess.run([*cmd, "--auto-resume", "--runtime", "local"], env=env, capture_output=True).returncode == 0
    whole = _tiny(degrade_run, tmp_path / "whole", iterations=60, save_every=10, val_every=1000, workers=1)
    train(whole, log=lambda m: None, bar=False)
    a, b = load_checkpoint(tmp_path / "whole", 60), load_checkpoint(tmp_path / "killed", 60)
    for part in (1, 2, 3):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_real_esrgans_losses_with_ldl_on_gs_tail_train_from_the_cli(degrade_run, tmp_path, capsys):
    from realsr.models.losses import REALESRGAN_LAYERS
    from realsr.models.rrdbnet import RRDBConfig

    out = tmp_path / "t"
    args = [
        "train",
        str(degrade_run),
        "--out",
        str(out),
        "--preset",
        "test-tiny",
        "--runtime",
        "local",
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--log-every",
        "1",
        "--perceptual-layers",
        REALESRGAN_LAYERS,
        "--gan-type",
        "vanilla",
        "--pixel-weight",
        "1",
        "--gan-weight",
        "0.1",
        "--artifact-weight",
        "1",
    ]
    assert main([*args, "--train-blocks", "2"]) == 2 and "train_blocks" in capsys.readouterr().err  # test-tiny's G has one RRDB
    assert not out.exists()
    assert main([*args, "--train-blocks", "1"]) == 0
    header, *rows = (out / "losses.csv").read_text().splitlines()
    assert "l_artifacts" in header.split(",") and len(rows) == 2 and all(r.split(",")[header.split(",").index("l_artifacts")] for r in rows)
    _, g, ema, _ = load_checkpoint(out, 2)
    fresh = build_generator(None, RRDBConfig(scale=4, num_feat=8, num_block=1, num_grow_ch=8), 0)[0].state_dict()
    assert torch.equal(g["conv_first.weight"], fresh["conv_first.weight"]) and torch.equal(
        ema["conv_first.weight"], fresh["conv_first.weight"]
    )  # the frozen head did not move
    assert not torch.equal(g["conv_last.weight"], fresh["conv_last.weight"])
