"""Upscaling speed of RRDB (23 blocks, x4) and how close tiled output is to untiled.

Variants, each on the same natural LR crop (the flower photo, INTER_AREA-downscaled by 4, so
it looks like a photo to upscale), in one process:
- `plain`: `torch.no_grad()`, eager fp32, NCHW, whole image (what a user's first script does);
- `inference`: `torch.inference_mode()` and channels_last (`models.tiling.run_network`);
- `tiled T/P`: `models.tiling.upscale` with tiles of T px and P px of context.
- `batch B`: `--small N` images of 64x64 (`--small-size`), B at a time through `run_batch`.
Reported: seconds, LR megapixels per second, the max and 99.99th percentile absolute difference
to `plain` (batches: to batch 1) in 1/255 units, and the process's peak RSS after each variant:
they run smallest memory first (batches, tiled, inference, plain), so each peak is its own. The
first call of each shape is a warm-up, not timed. `--variants` picks some.

    OMP_NUM_THREADS=2 .venv/bin/python bench/upscale_speed.py --size 256 --tiles 128/48,256/48
    OMP_NUM_THREADS=2 .venv/bin/python bench/upscale_speed.py --size 1000x750 --tiles 256/48 --variants tiled,plain
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realsr.models.tiling import run_batch, upscale  # noqa: E402
from realsr.storage.images import read_image  # noqa: E402
from realsr.storage.model_files import load_rrdb  # noqa: E402


def lr_image(w: int, h: int) -> np.ndarray:
    flower = read_image(ROOT.parent / "shared" / "data" / "camera_photos" / "flower.png").rgb
    small = cv2.resize(flower, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    reps = (-(-h // small.shape[0]), -(-w // small.shape[1]), 1)
    return np.ascontiguousarray(np.tile(small, reps)[:h, :w])


def timed(fn, repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256", help="LR WxH or S for SxS")
    ap.add_argument("--tiles", default="128/48,256/48", help="comma list of TILE/PAD")
    ap.add_argument("--model", default="realesrgan-x4plus")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", default="plain,inference,tiled", help="comma list of plain, inference, tiled, batch")
    ap.add_argument("--small", type=int, default=8, help="images for the batch variants")
    ap.add_argument("--small-size", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "upscale_speed.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in (args.size.split("x") if "x" in args.size else (args.size, args.size)))
    img = lr_image(w, h)
    net = load_rrdb(args.model).model
    mp = w * h / 1e6
    rows = []

    def plain():
        with torch.no_grad():
            x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
            return net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()

    variants = args.variants.split(",")
    upscale(net, img[:32, :32], 4)  # warm-up: first-call allocations, thread pool
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (MB, peak so far)
    # smallest memory first, so each row's peak RSS so far is its own
    if "batch" in variants:
        n = args.small_size
        smalls = [np.ascontiguousarray(img[(i * n) % (h - n + 1) :][:n, (i * 37) % (w - n + 1) :][:, :n]) for i in range(args.small)]
        net.to(memory_format=torch.channels_last)
        run_batch(net, smalls[:1], torch.device("cpu"), torch.float32, True)
        for b in (int(v) for v in args.batches.split(",")):
            fn = lambda: np.concatenate(
                [np.concatenate(run_batch(net, smalls[i : i + b], torch.device("cpu"), torch.float32, True)) for i in range(0, len(smalls), b)]
            )  # noqa: E731
            secs, out = timed(fn, args.repeat)
            rows.append((f"batch {b} ({len(smalls)} of {n}x{n})", secs, out, len(smalls) * n * n / 1e6, rss()))
        net.to(memory_format=torch.contiguous_format)
    if "tiled" in variants:
        for spec in args.tiles.split(","):
            tile, pad = (int(v) for v in spec.split("/"))
            secs, out = timed(lambda: upscale(net, img, 4, tile=tile, pad=pad), args.repeat)
            rows.append((f"tiled {tile}/{pad}", secs, out, mp, rss()))
    if "inference" in variants:
        net_cl = net.to(memory_format=torch.channels_last)
        secs, out = timed(lambda: upscale(net_cl, img, 4, channels_last=True), args.repeat)
        rows.append(("inference+channels_last", secs, out, mp, rss()))
        net.to(memory_format=torch.contiguous_format)
        secs, out = timed(lambda: upscale(net, img, 4), args.repeat)
        rows.append(("inference", secs, out, mp, rss()))
    ref = None
    if "plain" in variants:
        secs, ref = timed(plain, args.repeat)
        rows.insert(0, ("plain", secs, ref, mp, rss()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"RRDB 23 blocks x4 ({args.model}), LR {w}x{h}, torch threads {torch.get_num_threads()}, load {load}, commit {commit}")
    print("| variant | seconds | LR MP/s | vs the first of its kind | max diff (1/255) | p99.99 diff | peak RSS so far, MB |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    with args.results.open("a") as f:
        for name, secs, out, size, peak in rows:
            kind = name.split()[0] == "batch"
            base.setdefault(kind, (secs, out))
            against = ref if not kind and ref is not None else base[kind][1]
            d = np.abs(out - against) * 255
            print(f"| {name} | {secs:.1f} | {size / secs:.4f} | {base[kind][0] / secs:.2f}x | {d.max():.3f} | {np.percentile(d, 99.99):.3f} | {peak:.0f} |")
            f.write(
                json.dumps(
                    {
                        "variant": name,
                        "lr": [w, h],
                        "seconds": secs,
                        "lr_mp_per_s": size / secs,
                        "max_diff_255": float(d.max()),
                        "peak_rss_mb_so_far": peak,
                        "threads": torch.get_num_threads(),
                        "load": load,
                        "commit": commit,
                        "machine": platform.node(),
                        "date": time.strftime("%Y-%m-%d %H:%M"),
                    }
                )
                + "\n"
            )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
