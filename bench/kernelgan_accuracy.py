"""KernelGAN accuracy and speed on synthetic kernels: our fast path against the reference's
algorithm (deep generator, 3000 steps, one image at a time) run inside this implementation.

Each HR image (shared/data/hr) is cropped, blurred with its own random anisotropic Gaussian
(random widths and angle, ~5 % multiplicative noise on the taps), downscaled x2 in our convention
(`models.degradation.degrade`) and given mild noise (sigma 1/255). KernelGAN sees only that LR
image. Metrics per image, against the true kernel:
- kernel error: L2 distance after the best integer alignment (shifts -2..2);
- PSNR (dB) between the HR degraded with the estimated kernel and with the true one, x2, and x4
  with both kernels made x4 analytically;
the bicubic kernel's figures are the floor. One process per core, 1 torch thread each:

    .venv/bin/python bench/kernelgan_accuracy.py --images 4 --iterations 3000 --procs 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HR = ROOT.parent / "shared" / "data" / "hr"


def true_kernel(rng: np.random.Generator) -> np.ndarray:
    from models.kernels import centre_kernel
    from models.synthetic import gaussian_kernel

    k = gaussian_kernel(rng.uniform(0.7, 2.2), rng.uniform(0.7, 2.2), rng.uniform(0, np.pi), 13)
    k = k * (1 + 0.05 * rng.normal(size=k.shape))
    return centre_kernel(np.clip(k, 0, None))


def make_case(i: int, path: Path, crop: int = 512):
    import cv2

    from models.degradation import degrade

    rng = np.random.default_rng(1000 + i)
    hr = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    h, w = hr.shape[:2]
    c = min(crop, h - h % 4, w - w % 4)
    y, x = (h - c) // 2, (w - c) // 2
    hr = np.ascontiguousarray(hr[y : y + c, x : x + c])
    k = true_kernel(rng)
    lr = degrade(hr, k, 2) + rng.normal(0, 1 / 255, (c // 2, c // 2, 3)).astype(np.float32)
    return hr, np.clip(lr, 0, 1).astype(np.float32), k


def kernel_error(est: np.ndarray, true: np.ndarray) -> float:
    best = np.inf
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            best = min(best, float(np.linalg.norm(np.roll(est, (dy, dx), (0, 1)) - true)))
    return best


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def figures(hr, k_est, k_true) -> dict:
    from models.degradation import degrade
    from models.kernels import analytic_x4

    return {
        "kernel_err": kernel_error(k_est, k_true),
        "psnr_x2": psnr(degrade(hr, k_est, 2), degrade(hr, k_true, 2)),
        "psnr_x4": psnr(degrade(hr, analytic_x4(k_est), 4), degrade(hr, analytic_x4(k_true), 4)),
    }


def run_one(args):
    i, path, iterations, fast = args
    import torch

    torch.set_num_threads(1)
    from models.kernelgan import KernelGANConfig, estimate_kernel

    hr, lr, k_true = make_case(i, path)
    t = time.perf_counter()
    est = estimate_kernel(lr, KernelGANConfig(iterations=iterations, seed=0), deep=not fast)
    return i, fast, time.perf_counter() - t, figures(hr, est.kernel, k_true)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--batched-only", action="store_true", help="only the images trained together, in this process")
    args = ap.parse_args()
    from models.kernels import bicubic_kernel

    paths = sorted((HR / "set14").glob("*.png"))[: args.images]
    if args.batched_only:
        import torch

        from models.kernelgan import KernelGANConfig, estimate_kernels

        torch.set_num_threads(1)
        cases = [make_case(i, p) for i, p in enumerate(paths)]
        t = time.perf_counter()
        ests = estimate_kernels([c[1] for c in cases], KernelGANConfig(iterations=args.iterations, seed=0))
        secs = (time.perf_counter() - t) / len(cases)
        figs = [figures(c[0], e.kernel, c[2]) for c, e in zip(cases, ests)]
        for i, f in enumerate(figs):
            print(f"image {i} batched: {f}")
        m = {k: np.mean([f[k] for f in figs]) for k in figs[0]}
        print(f"| ours, {len(cases)} images trained together (1 process, 1 thread) | {secs:.1f} | {m['kernel_err']:.4f} | {m['psnr_x2']:.2f} | {m['psnr_x4']:.2f} |")
        return
    jobs = [(i, p, args.iterations, True) for i, p in enumerate(paths)]
    if not args.skip_baseline:
        jobs += [(i, p, args.iterations, False) for i, p in enumerate(paths)]
    rows = {}
    with ProcessPoolExecutor(args.procs) as pool:
        for i, fast, secs, fig in pool.map(run_one, jobs):
            rows[(i, fast)] = (secs, fig)
            print(f"image {i} {'fast' if fast else 'baseline'}: {secs:.0f} s {fig}", flush=True)
    bic = []
    for i, p in enumerate(paths):
        hr, _, k_true = make_case(i, p)
        bic.append(figures(hr, bicubic_kernel(2), k_true))
    print(f"\n{len(paths)} images (set14, 512 px HR crops -> 256 px LR), {args.iterations} steps, "
          f"{os.cpu_count()} cores, {args.procs} processes x 1 torch thread\n")
    print("| method | s per image | kernel error (lower better) | PSNR x2 dB | PSNR x4 dB |")
    print("|---|---|---|---|---|")

    def line(name, secs, figs):
        m = {k: np.mean([f[k] for f in figs]) for k in figs[0]}
        s = f"{np.mean(secs):.1f}" if secs else "-"
        print(f"| {name} | {s} | {m['kernel_err']:.4f} | {m['psnr_x2']:.2f} | {m['psnr_x4']:.2f} |")

    line("bicubic kernel (floor)", None, bic)
    for fast, name in ((False, "reference algorithm (deep G, one image)"), (True, "ours (composed-kernel G)")):
        got = [rows[(i, fast)] for i in range(len(paths)) if (i, fast) in rows]
        if got:
            line(name, [g[0] for g in got], [g[1] for g in got])


if __name__ == "__main__":
    main()
