"""Evaluation throughput of the metrics alone (PSNR/SSIM on Y and RGB, LPIPS-alex), images per second.

On pairs of a degrade-flow run or any SR/HR folders with the same file names:

    .venv/bin/python bench/metrics_speed.py --sr runs/eval/sr/realsr-df2k --hr runs/s14/pairs/hr
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realsr.models.metrics import psnr, ssim  # noqa: E402
from realsr.steps.evaluate import lpips_metric  # noqa: E402
from realsr.storage.images import read_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--crop", type=int, default=4)
    args = ap.parse_args()
    pairs = [(p, args.hr / p.name) for p in sorted(args.sr.glob("*.png")) if (args.hr / p.name).exists()]
    imgs = [(read_image(a).rgb, read_image(b).rgb) for a, b in pairs]
    lp = lpips_metric(None)
    lp(*imgs[0])  # warm-up
    for name, fn in [
        ("PSNR-Y", lambda s, h: psnr(s, h, args.crop)),
        ("SSIM-Y", lambda s, h: ssim(s, h, args.crop)),
        ("PSNR-RGB", lambda s, h: psnr(s, h, args.crop, y=False)),
        ("SSIM-RGB", lambda s, h: ssim(s, h, args.crop, y=False)),
        ("LPIPS-alex", lp),
    ]:
        t = time.perf_counter()
        for s, h in imgs:
            fn(s, h)
        secs = time.perf_counter() - t
        print(f"| {name} | {len(imgs)} | {imgs[0][0].shape[1]}x{imgs[0][0].shape[0]} | {len(imgs) / secs:.1f} |")
    print(f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
