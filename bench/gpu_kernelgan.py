"""KernelGAN rows of `bench/gpu.py`: photos per minute of each engine, and of the official code.

Our engines run `estimate_kernels` (the one the degrade flow calls) on a batch of photos, for a
number of steps the row's time budget allows after a short calibration run, and the rate is
scaled to `TARGET_STEPS` steps per seed (the product's default: 3 seeds x 1000). x4 is the same
training plus the analytic x4 kernel, as `steps.degrade_kernels` makes it. Retries are off, so a
row times exactly one training per seed (a short run's kernels may collapse and would retrain).

The official sefibk/KernelGAN runs one process per photo as its users run it
(`bench/official_kernelgan.py`), on the same device; its rate counts the process's start-up.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

BENCH = Path(__file__).resolve().parent
TARGET_STEPS = 1000  # per seed: the product's default (3 seeds x 1000), the goal's
OFFICIAL_DEFAULT = 3000  # the reference's own max_iters
FUSED_MODULE = "realsr.models.kernelgan_fused"  # the batched engine of issue 38: its estimate_kernels_fused(images, cfg, device)


def photos(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """n photo-like float32 RGB images in [0, 1]: smooth shading, edges and texture, each blurred
    by its own Gaussian (so each has a kernel to find). Made here: the device has no photo folder."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img = cv2.resize(rng.random((height // 32 + 2, width // 32 + 2, 3), dtype=np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(24):
            c = tuple(float(v) for v in rng.random(3))
            x, y = int(rng.integers(width)), int(rng.integers(height))
            if rng.random() < 0.5:
                cv2.circle(img, (x, y), int(rng.integers(4, width // 6)), c, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(img, (x, y), (x + int(rng.integers(4, width // 4)), y + int(rng.integers(4, height // 4))), c, -1)
        img += rng.normal(0, 0.04, img.shape).astype(np.float32)
        sigma = float(rng.uniform(0.6, 1.8))
        out.append(np.clip(cv2.GaussianBlur(img, (0, 0), sigma), 0, 1).astype(np.float32))
    return out


def engines(names: list[str]) -> dict[str, object]:
    """name -> `estimate_kernels`, or a string saying why that engine is not here."""
    out: dict[str, object] = {}
    for name in names:
        if name == "today":
            from realsr.models.kernelgan import estimate_kernels

            out[name] = estimate_kernels
            continue
        module = FUSED_MODULE if name == "fused" else name
        try:
            found = importlib.import_module(module)
        except ImportError as e:
            out[name] = f"not available here: {module} does not import ({e})"
            continue
        fn = getattr(found, "estimate_kernels_fused", None) or getattr(found, "estimate_kernels", None)
        out[name] = fn or f"not available here: {module} has no estimate_kernels_fused / estimate_kernels(images, cfg, device)"
    return out


def finish_x4(estimates) -> None:
    """The analytic x4 kernels of the estimates, as `steps.degrade_kernels.kernelgan_sets` makes them."""
    from realsr.models.kernelgan_post import x4_base
    from realsr.models.kernels import analytic_x4

    for e in estimates:
        if e.ok:
            analytic_x4(x4_base(e.raw))


def timed_estimate(fn, images, cfg, device: str, scale: int, sync) -> float:
    t = time.perf_counter()
    estimates = fn(images, cfg, device=device)
    if scale == 4:
        finish_x4(estimates)
    sync()
    return time.perf_counter() - t


def ours(fn, images: list[np.ndarray], scale: int, seeds: int, device: str, budget_s: float, steps: tuple[int, int], sync) -> dict:
    """One engine's row: a calibration run of `steps[0]` steps (also the warm-up), then as many
    steps (within `steps`) as `budget_s` allows; photos per minute at TARGET_STEPS per seed."""
    from realsr.models.kernelgan import KernelGANConfig

    lo, hi = steps
    cfg = KernelGANConfig(iterations=lo, seeds=seeds, retries=0)
    first = timed_estimate(fn, images, cfg, device, scale, sync)
    n = int(min(hi, max(lo, budget_s / max(first / lo, 1e-6))))
    secs = timed_estimate(fn, images, replace(cfg, iterations=n), device, scale, sync)
    per_photo_s = secs / len(images) * TARGET_STEPS / n
    return {
        "value": 60 / per_photo_s,
        "unit": "photos/min",
        "steps_timed": n,
        "seconds": round(secs, 3),
        "calibration_s": round(first, 3),
        "note": f"{n} steps/seed timed ({secs:.1f} s), scaled to {TARGET_STEPS}",
    }


def official_repo(given: str | None) -> Path | None:
    """The checkout of sefibk/KernelGAN: `--kernelgan-repo`, $KERNELGAN_REPO or bench/out/KernelGAN
    (where `bench/gpu.sh pack` copies it for the device); None when there is none."""
    for cand in (given, os.environ.get("KERNELGAN_REPO"), str(BENCH / "out" / "KernelGAN")):
        if cand and (Path(cand) / "kernelGAN.py").is_file():
            return Path(cand)
    return None


def official(repo: Path | None, image: np.ndarray, scale: int, device: str, iterations: int, threads: int) -> dict:
    """The official code on one photo in its own process, as its users run it: the process's wall
    time less its training, plus the training scaled to TARGET_STEPS iterations."""
    if repo is None:
        return {"value": None, "unit": "photos/min", "note": "not available here: no sefibk/KernelGAN checkout (--kernelgan-repo, $KERNELGAN_REPO)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.png"
        cv2.imwrite(str(path), cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
        cmd = [sys.executable, str(BENCH / "official_kernelgan.py"), "--repo", str(repo), "--image", str(path), "--out", tmp]
        cmd += ["--iterations", str(iterations), "--threads", str(threads), "--device", device] + (["--x4"] if scale == 4 else [])
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
        wall = time.perf_counter() - t
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            return {"value": None, "unit": "photos/min", "note": f"failed: exit {done.returncode}: {tail}"}
        train_s = float((Path(tmp) / "seconds").read_text())
    per_photo_s = (wall - train_s) + train_s * TARGET_STEPS / iterations
    return {
        "value": 60 / per_photo_s,
        "unit": "photos/min",
        "seconds": round(wall, 3),
        "note": (
            f"1 process per photo: {iterations} iterations timed, scaled to {TARGET_STEPS} (its default is {OFFICIAL_DEFAULT}); "
            f"start-up {wall - train_s:.1f} s counted"
        ),
    }


def rows(args, sizes, device: str, sync, spent) -> list[dict]:
    """Every KernelGAN row: each engine at each scale, seeds and batch, then the official code's."""
    found = engines(args.engines)
    imgs = photos(max(sizes.kg_batches), *sizes.kg_photo)
    out = []
    for scale in (2, 4):
        for seeds in (1, 3):
            group = f"kernelgan x{scale}, {seeds} seed{'s' if seeds > 1 else ''}"
            for name, fn in found.items():
                if isinstance(fn, str):  # one row says why, for all its batches
                    out.append(
                        {
                            "section": "kernelgan",
                            "group": group,
                            "what": f"ours ({name})",
                            "setting": "every batch",
                            "value": None,
                            "unit": "photos/min",
                            "note": fn,
                        }
                    )
                    continue
                for b in sizes.kg_batches:
                    row = {"section": "kernelgan", "group": group, "what": f"ours ({name})", "setting": f"batch {b}"}
                    if (left := spent()) is not None:
                        out.append({**row, "value": None, "unit": "photos/min", "note": left})
                    else:
                        out.append({**row, **ours(fn, imgs[:b], scale, seeds, device, sizes.kg_budget_s, sizes.kg_steps, sync)})
                    print(json.dumps(out[-1]), file=sys.stderr, flush=True)
            ref = {"section": "kernelgan", "group": group, "what": "official sefibk/KernelGAN", "setting": "1 process per photo", "reference": True}
            if seeds == 1:
                left = spent()
                got = {"value": None, "unit": "photos/min", "note": left} if left else official(repo(args), imgs[0], scale, device, sizes.official_iters, 2)
                out.append({**ref, **got})
            else:  # the reference has no seeds: 3 seeds are 3 runs of it, one after the other
                single = next(r for r in out if r.get("reference") and r["group"] == f"kernelgan x{scale}, 1 seed")
                v = single["value"] / 3 if single["value"] else None
                out.append({**ref, "value": v, "unit": "photos/min", "note": "3 runs per photo: the 1-seed rate / 3 (derived, not rerun)"})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def repo(args) -> Path | None:
    return official_repo(args.kernelgan_repo)
