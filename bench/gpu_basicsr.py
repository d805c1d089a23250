"""The reference trainer of `bench/gpu.py`'s fine-tune rows: BasicSR's RealESRGANModel, in its own process.

Its `feed_data` (the second-order degradation on the device: blur, resize, noise, DiffJPEG, the
training-pair queue) and `optimize_parameters` (G: L1 + VGG19 perceptual + vanilla GAN; D: the
U-Net with spectral norm; EMA 0.999), with Real-ESRGAN's `finetune_realesrgan_x4plus.yml`
options, at our batch and crop; fp32, as it trains. The data dict holds HR crops and fixed
Gaussian kernels (its dataset's CPU work is not timed, as our "step alone" row). Networks are
randomly initialised (speed does not depend on the weights).

Made to run here with two stand-ins that change no arithmetic: `torchvision.transforms.
functional_tensor` (gone since torchvision 0.17) is `torchvision.transforms.functional`, and on a
CPU `.cuda()` (hard-coded in RealESRGANModel) returns its tensor or module as it is; and its
`filter2D` gets a contiguous copy of its input (its `.view()` fails on the layout today's resize
can return). BasicSR's
VGG19 would download ImageNet weights: it is pointed at a file of torchvision's randomly
initialised VGG19 instead. The last stdout line is the row (JSON).

    python bench/gpu_basicsr.py --device cuda --batch 8 --hr-size 128 --warmup 3 --steps 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

QUEUE = 160  # the training-pair queue: Real-ESRGAN's is 180 at batch 12; it must be a multiple of the batch


def options(device: str, batch: int, hr_size: int, blocks: int = 23) -> dict:
    """finetune_realesrgan_x4plus.yml's model and training options (datasets, paths and logging left out)."""
    adam = {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]}
    layers = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    return {
        "name": "bench",
        "model_type": "RealESRGANModel",
        "scale": 4,
        "num_gpu": 1 if device == "cuda" else 0,
        "is_train": True,
        "dist": False,
        "rank": 0,
        "world_size": 1,
        "manual_seed": 0,
        "l1_gt_usm": True,
        "percep_gt_usm": True,
        "gan_gt_usm": False,
        "high_order_degradation": True,
        "resize_prob": [0.2, 0.7, 0.1],
        "resize_range": [0.15, 1.5],
        "gaussian_noise_prob": 0.5,
        "noise_range": [1, 30],
        "poisson_scale_range": [0.05, 3],
        "gray_noise_prob": 0.4,
        "jpeg_range": [30, 95],
        "second_blur_prob": 0.8,
        "resize_prob2": [0.3, 0.4, 0.3],
        "resize_range2": [0.3, 1.2],
        "gaussian_noise_prob2": 0.5,
        "noise_range2": [1, 25],
        "poisson_scale_range2": [0.05, 2.5],
        "gray_noise_prob2": 0.4,
        "jpeg_range2": [30, 95],
        "gt_size": hr_size,
        "queue_size": QUEUE,
        "network_g": {"type": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": blocks, "num_grow_ch": 32},
        "network_d": {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 64, "skip_connection": True},
        "path": {"pretrain_network_g": None, "pretrain_network_d": None, "resume_state": None},
        "train": {
            "ema_decay": 0.999,
            "optim_g": dict(adam),
            "optim_d": dict(adam),
            "scheduler": {"type": "MultiStepLR", "milestones": [400000], "gamma": 0.5},
            "total_iter": 400000,
            "warmup_iter": -1,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
            "perceptual_opt": {
                "type": "PerceptualLoss",
                "layer_weights": layers,
                "vgg_type": "vgg19",
                "use_input_norm": True,
                "perceptual_weight": 1.0,
                "style_weight": 0,
                "range_norm": False,
                "criterion": "l1",
            },
            "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0, "loss_weight": 0.1},
            "net_d_iters": 1,
            "net_d_init_iters": 0,
        },
        "val": None,
        "logger": {"print_freq": 10**9},
    }


def stand_ins(device: str, tmp: Path) -> None:
    """The shims that let BasicSR 1.4.2 run with today's torchvision, offline, and on a CPU."""
    import torchvision.transforms.functional as tf

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tf)
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
    import basicsr.archs.vgg_arch as vgg_arch
    from torchvision.models import vgg19

    path = tmp / "vgg19_random.pth"
    torch.save(vgg19(weights=None).state_dict(), path)
    vgg_arch.VGG_PRETRAIN_PATH = str(path)


def data(batch: int, hr_size: int, dev: torch.device, seed: int) -> dict:
    """A batch as RealESRGANDataset gives it: HR crops in [0, 1] and 21x21 blur kernels (fixed Gaussians here)."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(21, dtype=torch.float32) - 10
    k = torch.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * 1.5**2))
    k = (k / k.sum()).expand(batch, 21, 21).contiguous()
    sinc = torch.zeros(batch, 21, 21)
    sinc[:, 10, 10] = 1  # Real-ESRGAN's "no final sinc filter" pulse
    return {"gt": torch.rand(batch, 3, hr_size, hr_size, generator=g), "kernel1": k, "kernel2": k.clone(), "sinc_kernel": sinc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hr-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=23, help="G's RRDB blocks (23: x4plus; fewer only for the CPU dry run)")
    args = ap.parse_args()
    fail = lambda why: print(json.dumps({"value": None, "unit": "it/s", "note": why}))  # noqa: E731
    if importlib.util.find_spec("basicsr") is None:
        return fail("not available here: basicsr is not installed (`pip install --no-deps basicsr==1.4.2`; bench/gpu.sh carries it)")
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        stand_ins(args.device, Path(tmp))
        import basicsr
        import basicsr.models.realesrgan_model as rm

        plain = rm.filter2D
        rm.filter2D = lambda img, kernel: plain(
            img.contiguous(), kernel
        )  # its .view() needs a contiguous input (torch 2.14's resize can hand over another layout)
        RealESRGANModel = rm.RealESRGANModel

        torch.manual_seed(0)
        model = RealESRGANModel(options(args.device, args.batch, args.hr_size, args.blocks))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    batches = [data(args.batch, args.hr_size, dev, i) for i in range(4)]
    t0 = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        model.feed_data(batches[i % len(batches)])
        model.optimize_parameters(i + 1)
        model.get_current_log()  # its losses to host floats, as its training loop's logger reads them
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    secs = time.perf_counter() - t0
    its = args.steps / secs
    mpx = its * args.batch * args.hr_size**2 / 1e6
    cuda = dev.type == "cuda"
    peak = (
        f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MB (CUDA, allocated)"
        if cuda
        else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (RSS, its process)"
    )
    note = f"basicsr {basicsr.__version__}, fp32, its on-device degradation in feed_data, queue {QUEUE}; {args.steps} steps timed; {mpx:.2f} HR Mpx/s"
    print(json.dumps({"value": its, "unit": "it/s", "hr_mpx_s": mpx, "peak": peak, "note": note}))


if __name__ == "__main__":
    main()
