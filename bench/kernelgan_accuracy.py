"""KernelGAN accuracy and speed on synthetic kernels: our fast path against the reference's
algorithm (deep generator, 3000 steps, one image at a time) run inside this implementation.

Each HR image (shared/data/hr) is cropped, blurred with its own random anisotropic Gaussian
(random widths and angle, ~5 % multiplicative noise on the taps), downscaled x2 in our convention
(`models.degradation.degrade`) and given mild noise (sigma 1/255). KernelGAN sees only that LR
image. Metrics per image, against the true kernel:
- kernel error: L2 distance after the best integer alignment (shifts -2..2);
- PSNR (dB) between the HR degraded with the estimated kernel and with the true one, x2, and x4
  with both kernels made x4 analytically;
the bicubic kernel's figures are the floor. Every result is appended to
bench/results/kernelgan_accuracy.jsonl (with commit and machine) as it comes, and a rerun skips
what is there, so a long run can stop and resume and the table grows with more images:

    .venv/bin/python bench/kernelgan_accuracy.py --first 0 --images 8 --iterations 3000 --procs 2
    .venv/bin/python bench/kernelgan_accuracy.py --first 0 --images 8 --table

One-image runs use one process per core with 1 torch thread each; `batched` trains the selected
images together in this process (1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HR = ROOT.parent / "shared" / "data" / "hr"
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
MACHINE = f"{platform.machine()} {os.cpu_count()} cores, CPU"


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


def run_one(job):
    i, path, iterations, deep = job
    import torch

    torch.set_num_threads(1)
    from models.kernelgan import KernelGANConfig, estimate_kernel

    hr, lr, k_true = make_case(i, path)
    t = time.perf_counter()
    est = estimate_kernel(lr, KernelGANConfig(iterations=iterations, seed=0), deep=deep)
    secs = time.perf_counter() - t
    return {"image": i, "method": "baseline" if deep else "ours", "seconds": secs, **figures(hr, est.kernel, k_true), "kernel": _rounded(est.kernel)}


def run_batched(paths: list[Path], first: int, iterations: int) -> list[dict]:
    import torch

    from models.kernelgan import KernelGANConfig, estimate_kernels

    torch.set_num_threads(1)
    cases = [make_case(first + j, p) for j, p in enumerate(paths)]
    t = time.perf_counter()
    ests = estimate_kernels([c[1] for c in cases], KernelGANConfig(iterations=iterations, seed=0))
    secs = (time.perf_counter() - t) / len(cases)
    batch = f"{first}-{first + len(cases) - 1}"
    return [
        {"image": first + j, "method": f"batched {batch}", "seconds": secs, **figures(c[0], e.kernel, c[2]), "kernel": _rounded(e.kernel)}
        for j, (c, e) in enumerate(zip(cases, ests))
    ]


def _rounded(k: np.ndarray) -> list:
    return np.round(k, 7).tolist()


def load(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def save(results: Path, row: dict, iterations: int) -> None:
    row = {**row, "iterations": iterations, "commit": COMMIT, "machine": MACHINE, "date": time.strftime("%Y-%m-%d")}
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"image {row['image']} {row['method']}: {row['seconds']:.0f} s, error {row['kernel_err']:.4f}, x2 {row['psnr_x2']:.2f} dB, x4 {row['psnr_x4']:.2f} dB", flush=True)


def table(rows: list[dict], images: range, bicubic: list[dict]) -> None:
    """Mean figures per method over the selected images, each method on the images it has."""
    print(f"\n| method | images | s per image | kernel error (lower better) | PSNR x2 dB | PSNR x4 dB |")
    print("|---|---|---|---|---|---|")

    def line(name, got):
        m = {k: np.mean([g[k] for g in got]) for k in ("kernel_err", "psnr_x2", "psnr_x4")}
        secs = f"{np.mean([g['seconds'] for g in got]):.1f}" if "seconds" in got[0] else "-"
        print(f"| {name} | {len(got)} | {secs} | {m['kernel_err']:.4f} | {m['psnr_x2']:.2f} | {m['psnr_x4']:.2f} |")

    line("bicubic kernel (floor)", bicubic)
    names = {"baseline": "reference algorithm (deep G, one image)", "ours": "ours (composed-kernel G, one image)"}
    for method in sorted({r["method"] for r in rows}, key=lambda m: (m != "baseline", m != "ours", m)):
        got = [r for r in rows if r["method"] == method and r["image"] in images]
        if got:
            line(names.get(method, f"ours, images {method.split()[-1]} trained together"), got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8, help="how many Set14 images")
    ap.add_argument("--first", type=int, default=0, help="index of the first image")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=2, help="processes for the one-image runs")
    ap.add_argument("--methods", default="baseline,ours,batched", help="any of baseline, ours, batched")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "kernelgan_accuracy.jsonl")
    ap.add_argument("--table", action="store_true", help="only print the table of the results kept so far")
    args = ap.parse_args()
    from models.kernels import bicubic_kernel

    all_paths = sorted((HR / "set14").glob("*.png"))
    images = range(args.first, min(args.first + args.images, len(all_paths)))
    methods = args.methods.split(",")
    kept = [r for r in load(args.results) if r["iterations"] == args.iterations]
    have = {(r["image"], r["method"]) for r in kept}
    if not args.table:
        jobs = [(i, all_paths[i], args.iterations, m == "baseline") for m in ("ours", "baseline") if m in methods for i in images if (i, m) not in have]
        with ProcessPoolExecutor(args.procs) as pool:
            for row in pool.map(run_one, jobs):
                save(args.results, row, args.iterations)
        batch = f"batched {images.start}-{images.stop - 1}"
        if "batched" in methods and not any((i, batch) in have for i in images):
            for row in run_batched([all_paths[i] for i in images], images.start, args.iterations):
                save(args.results, row, args.iterations)
        kept = [r for r in load(args.results) if r["iterations"] == args.iterations]
    bicubic = []
    for i in images:
        hr, _, k_true = make_case(i, all_paths[i])
        bicubic.append(figures(hr, bicubic_kernel(2), k_true))
    print(f"\nSet14 images {images.start}-{images.stop - 1} (512 px HR crops -> 256 px LR), {args.iterations} steps; machine and commit per row in {args.results.name}")
    table(kept, images, bicubic)


if __name__ == "__main__":
    main()
