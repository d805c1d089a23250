"""Behaviour pinned bitwise across refactors: a fixed degrade run's banks and pairs, and one
fine-tune step from its run folder.

A refactor (issue 36: settings, records, renames) must change no number: the kernel and noise
banks' content digests and the pairs of a fixed degrade run (bicubic and a fixed Gaussian kernel
bank, the adaptive noise rule, seed 0), and the generator after training steps fed by that run
folder (DegradedCrops: kernels, noise, JPEG re-compression, and the Trainer), are recorded in
tests/data/golden_behaviour.json. On the torch build and CPU capability the file was written with
they must match to the bit; elsewhere the digests (pure numpy and OpenCV) still must, and the step
to a tolerance. A change that moves them is a decision: record it in BENCHMARKS.md and regenerate:

    python tests/test_behaviour_golden.py --write
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).with_name("data") / "golden_behaviour.json"
# the banks record their sources' paths, so the run is made in one fixed folder
ROOT = Path(tempfile.gettempdir()) / "realsr-golden-behaviour"


def _photos(folder: Path) -> Path:
    from tests.conftest import small_photo, write_rgb

    for i in range(3):
        write_rgb(folder / f"photo_{i}.png", small_photo(i, 160, 192))
    write_rgb(folder / "photo_3.jpg", small_photo(3, 160, 192), (1, 80))  # cv2.IMWRITE_JPEG_QUALITY: re-compression in training
    return folder


def _degrade(root: Path) -> dict:
    from realsr.flows.cli import main

    run = root / "run"
    assert main(
        [
            "degrade",
            "--source",
            str(_photos(root / "photos")),
            "--out",
            str(run),
            "--scale",
            "2",
            "--pair-hr-size",
            "64",
            "--workers",
            "0",
            "--kernels",
            "bicubic",
        ]
    ) in (0, 1)
    from realsr.storage.banks import open_kernel_bank, open_noise_bank

    pairs = hashlib.sha256()
    for p in sorted((run / "pairs").rglob("*.png")):
        pairs.update(p.relative_to(run).as_posix().encode() + p.read_bytes())
    return {
        "kernel_bank": open_kernel_bank(run / "kernels.zarr")[0]["digest"],
        "noise_bank": open_noise_bank(run / "noise.zarr").digest,
        "pairs": pairs.hexdigest(),
        "run": run,
    }


def _step(run: Path) -> dict:
    """Two fine-tune steps of a small G and D on crops drawn from the run folder, one thread."""
    from realsr.flows.train_settings import train_spec
    from realsr.models.discriminators import DiscriminatorConfig, build_discriminator
    from realsr.models.rrdbnet import RRDBConfig, RRDBNet
    from realsr.models.training import Trainer
    from realsr.steps.train_data import DegradedCrops, training_images
    from realsr.storage.run_dir import RunDir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = training_images(RunDir(run), 32, 0)
        data = DegradedCrops(RunDir(run), found.train, train_spec(scale=2, hr_size=32, seed=0).data)
        batch = [data[n] for n in range(4)]
        lr, hr = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        torch.manual_seed(0)
        g = RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=8, scale=2))
        torch.manual_seed(1)
        d = build_discriminator(DiscriminatorConfig(num_feat=8))
        r = train_spec(perceptual_weight=0.0).recipe  # the paper's losses and schedule (the presets declare them)
        t = Trainer(g, d, None, r.losses, r.schedule, r.ema_decay)
        logs = [t.step(lr, hr) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    h = hashlib.sha256()
    for p in g.state_dict().values():
        h.update(p.detach().numpy().tobytes())
    return {
        "batch_sha256": hashlib.sha256(lr.numpy().tobytes() + hr.numpy().tobytes()).hexdigest(),
        "g_sha256": h.hexdigest(),
        "g_sum": float(sum(p.detach().double().abs().sum() for p in g.parameters())),
        "losses": {k: float(v) for k, v in logs[-1].items() if isinstance(v, (int, float))},
    }


def _environment() -> dict:
    return {"torch": torch.__version__, "numpy": np.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def compute() -> dict:
    shutil.rmtree(ROOT, ignore_errors=True)
    try:
        degrade = _degrade(ROOT)
        return {"degrade": {k: v for k, v in degrade.items() if k != "run"}, "step": _step(degrade["run"])}
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


def test_a_fixed_degrade_run_and_a_training_step_are_unchanged():
    want = json.loads(GOLDEN.read_text())
    got = compute()
    assert got["degrade"] == want["degrade"]  # numpy and OpenCV: the same everywhere
    assert got["step"]["batch_sha256"] == want["step"]["batch_sha256"]
    if _environment() == want["environment"]:
        assert got["step"] == want["step"]
    else:
        assert got["step"]["g_sum"] == pytest.approx(want["step"]["g_sum"], rel=1e-4)


if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out = {"about": "tests/test_behaviour_golden.py: regenerate with --write, and record why in BENCHMARKS.md", "environment": _environment(), **compute()}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out, indent=1))
