"""Fine-tune rows of `bench/gpu.py`: today's `finetune` training step, alone and fed by today's
CPU loader, beside BasicSR's RealESRGANModel (`bench/gpu_basicsr.py`, its own process).

Prefect-, Zarr- and pydantic-free, for the GPU machine: the networks are built from `models`
directly with the `finetune` preset's values (`FINETUNE`, checked against
`flows.train_settings` by tests/test_gpu_script.py), and the loader is `steps.train_data`'s
per-sample degradation (kernel, subsampling, brightness-matched noise, 8 bits, JPEG, the same
`models` functions in the same order) over photos, kernels and noise made in memory instead of a
degrade-flow run folder, whose banks need Zarr.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
# the `finetune` preset (flows/train_settings.py PRESETS["finetune"] over PAPER), as train-flow builds it
FINETUNE = {
    "losses": {"pixel": 1.0, "perceptual": 1.0, "gan": 0.1, "gan_type": "vanilla", "artifacts": 0.0},
    "schedule": {"lr_g": 5e-5, "lr_d": 1e-4, "milestones": (2500, 4000)},
    "perceptual_layers": "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1",
    "discriminator": "unet",
    "ema_decay": 0.999,
    "jpeg_range": 5,
}


class Sampler:
    """Samples, in a thread while a block runs: the GPU's busy % (nvidia-smi, when present) and
    this process's resident memory (the peak on the CPU, where there is no device counter)."""

    def __init__(self, every_s: float = 0.2):
        self.every, self.util, self.rss_peak = every_s, [], 0
        self.smi = shutil.which("nvidia-smi") if torch.cuda.is_available() else None

    def _run(self):
        while not self.stop.wait(self.every):
            self.rss_peak = max(self.rss_peak, rss_mb())
            if self.smi:
                got = subprocess.run([self.smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True)
                if got.returncode == 0 and got.stdout.strip().isdigit():
                    self.util.append(int(got.stdout.strip()))

    def __enter__(self):
        self.stop, self.rss_peak = threading.Event(), rss_mb()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def busy(self) -> str:
        if not self.smi:
            return "n/a (no GPU / nvidia-smi)"
        return f"{np.mean(self.util):.0f} % (mean of {len(self.util)})" if self.util else "no samples"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_memory(dev: torch.device, sampler: Sampler) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MB (CUDA, allocated)"
    return f"{sampler.rss_peak:.0f} MB (RSS, this process)"


def networks(weights: dict):
    """G (x4plus, or a random RRDBNet of its shape), the U-Net D, the VGG19 loss at the preset's layers."""
    from realsr.models.discriminators import DiscriminatorConfig, build_discriminator
    from realsr.models.losses import VGG19_LAYERS, PerceptualLoss, parse_layers

    layers = parse_layers(FINETUNE["perceptual_layers"])
    g = weights["g"]().train()
    torch.manual_seed(1)
    d = build_discriminator(DiscriminatorConfig(arch=FINETUNE["discriminator"]))
    trunk = weights["vgg19"](max(layers, key=VGG19_LAYERS.__getitem__))
    return g, d, PerceptualLoss(trunk, layers)


def trainer(dev: torch.device, weights: dict):
    """Today's Trainer as `steps.train.set_up` makes it on `dev` (precision auto, NHWC where it pays)."""
    from realsr.models.devices import training_precision
    from realsr.models.training import LossWeights, Schedule, Trainer

    g, d, perceptual = networks(weights)
    amp, why = training_precision(dev, "auto")
    cl = dev.type == "cuda" or amp is not None  # steps.train.channels_last
    for net in (g, d, perceptual):
        net.to(dev)
        if cl:
            net.to(memory_format=torch.channels_last)
    s = FINETUNE["schedule"]
    t = Trainer(g, d, perceptual, LossWeights(**FINETUNE["losses"]), Schedule(s["lr_g"], s["lr_d"], s["milestones"]), FINETUNE["ema_decay"], dev, amp)
    return t, cl, why


class MemoryBank:
    """A noise bank in memory with `storage.banks.NoiseBank`'s reading interface (what `draw_noise` uses)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.patches = rng.normal(0, 0.01, (n, size, size, 3)).astype(np.float32)
        self.count, self.patch_size = n, size
        self.gray = np.linspace(0.1, 0.9, n)

    def column(self, name: str) -> np.ndarray:
        return {"gray_mean": self.gray}[name]

    def noise(self, idx) -> list[np.ndarray]:
        return [self.patches[int(i)] for i in idx]

    def patch_id(self, i: int) -> str:
        return f"mem{i}"


class Crops(torch.utils.data.Dataset):
    """`steps.train_data.DegradedCrops` over photos, kernels and noise in memory: sample n is an HR
    crop (flipped, turned) and its LR made by the same per-sample operations in the same order."""

    def __init__(self, hr_size: int, scale: int = 4, n_photos: int = 8, seed: int = 0):
        from gpu_kernelgan import photos  # bench/ is on the path: the script's folder

        from realsr.models.kernels import analytic_x4, bicubic_kernel

        self.photos = [(p * 255).round().astype(np.uint8) for p in photos(n_photos, max(256, 2 * hr_size), max(192, 2 * hr_size), seed)]
        self.kernels = [analytic_x4(bicubic_kernel(2))] if scale == 4 else [bicubic_kernel(scale)]
        self.bank, self.size, self.scale, self.seed = MemoryBank(64, 64), hr_size, scale, seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, n: int):
        from realsr.models.degradation import degrade, inject_noise, to_uint8
        from realsr.models.jpeg import recompress
        from realsr.models.noise import draw_noise

        rng = np.random.default_rng([self.seed, int(n)])
        full = self.photos[int(rng.integers(len(self.photos)))]
        s, size = self.scale, self.size
        y = int(rng.integers(0, (full.shape[0] - size) // s + 1)) * s
        x = int(rng.integers(0, (full.shape[1] - size) // s + 1)) * s
        hr = full[y : y + size, x : x + size].astype(np.float32) / 255.0
        flip, turns = rng.integers(2), int(rng.integers(4))
        hr = np.ascontiguousarray(np.rot90(hr[:, ::-1] if flip else hr, turns))
        lr = degrade(hr, self.kernels[0], s)
        field, _ = draw_noise(self.bank, rng, [lr], True)[0]
        lr = to_uint8(inject_noise(lr, field)).astype(np.float32) / 255
        quality = int(np.clip(90 + rng.integers(-FINETUNE["jpeg_range"], FINETUNE["jpeg_range"] + 1), 10, 100))
        lr = recompress(lr, quality)
        return torch.from_numpy(lr.transpose(2, 0, 1).copy()), torch.from_numpy(hr.transpose(2, 0, 1).copy())


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # as steps.train_data's workers


def loader(data: Crops, batch: int, steps: int, workers: int, pin: bool):
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        sampler=range(steps * batch),
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None,
        pin_memory=pin,
    )


def timed_steps(t, batches, cl: bool, dev: torch.device, warmup: int) -> tuple[float, int]:
    """Steps on `batches` (an iterable of (lr, hr)); the seconds of those after `warmup`."""
    n, t0 = 0, None
    for i, (lr, hr) in enumerate(batches):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        lr, hr = lr.to(dev, non_blocking=True), hr.to(dev, non_blocking=True)
        if cl:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        t.step(lr, hr)  # as steps.train from a released G: no warm-up, fixed EMA decay; losses back as floats (host syncs), as today
        n += i >= warmup
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, n


def ours(dev: torch.device, weights: dict, sizes, fed: bool) -> dict:
    """Today's step at the row's batch and crop: one batch reused (`fed` False) or today's CPU loader."""
    b, hr = sizes.ft_batch, sizes.ft_hr
    t, cl, why = trainer(dev, weights)
    data = Crops(hr)
    steps = sizes.ft_warmup + sizes.ft_steps
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with Sampler() as smp:
        if fed:
            secs, n = timed_steps(t, loader(data, b, steps, sizes.ft_workers, dev.type == "cuda"), cl, dev, sizes.ft_warmup)
        else:
            one = next(iter(loader(data, b, 1, 0, False)))
            secs, n = timed_steps(t, [one] * steps, cl, dev, sizes.ft_warmup)
    its = n / secs
    src = f"today's CPU loader, {sizes.ft_workers} workers" if fed else "one batch reused (no data cost)"
    return {
        "value": its,
        "unit": "it/s",
        "busy": smp.busy(),
        "peak": peak_memory(dev, smp),
        "hr_mpx_s": its * b * hr * hr / 1e6,
        "note": f"{src}; {why}; {n} steps timed; {its * b * hr * hr / 1e6:.2f} HR Mpx/s",
    }


def basicsr(dev: torch.device, sizes) -> dict:
    """BasicSR's RealESRGANModel in its own process (`bench/gpu_basicsr.py`), whose last line is its row."""
    cmd = [sys.executable, str(BENCH / "gpu_basicsr.py"), "--device", dev.type, "--batch", str(sizes.ft_batch), "--hr-size", str(sizes.ft_hr)]
    cmd += ["--warmup", str(sizes.ft_warmup), "--steps", str(sizes.ft_steps)]
    cmd += ["--blocks", str(sizes.ft_blocks)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"value": None, "unit": "it/s", "note": f"failed: exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def rows(args, sizes, dev: torch.device, weights: dict, spent) -> list[dict]:
    group = f"finetune batch {sizes.ft_batch} of {sizes.ft_hr} px"
    out = []
    for what, fn in (
        ("ours (today), step alone", functools.partial(ours, dev, weights, sizes, False)),
        ("ours (today), fed by its loader", functools.partial(ours, dev, weights, sizes, True)),
        ("BasicSR RealESRGANModel", functools.partial(basicsr, dev, sizes)),
    ):
        row = {
            "section": "finetune",
            "group": group,
            "what": what,
            "setting": f"batch {sizes.ft_batch}, {sizes.ft_hr} px",
            "reference": what.startswith("BasicSR"),
        }
        left = spent()
        out.append({**row, **({"value": None, "unit": "it/s", "note": left} if left else fn())})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    for r in out[:2]:
        r["note"] += f"; {weights['note']}"
    return out
