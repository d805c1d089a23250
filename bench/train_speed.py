"""Training speed: iterations/s and images/s of a preset, and the data loader alone beside it.

On a degrade-flow run folder (make one with `realsr degrade`), in one process:
- `loader`: batches from `steps.train_data.loader` alone (the on-the-fly degradation);
- `step`: `models.training.Trainer.step` alone, on one batch reused (no data cost);
- `train`: both, as `realsr train` runs them.
Peak RSS is the process's (run one preset per process for its own figure).

    OMP_NUM_THREADS=2 .venv/bin/python bench/train_speed.py runs/demo/run --preset cpu-small --iterations 20
    OMP_NUM_THREADS=2 .venv/bin/python bench/train_speed.py runs/demo/run --preset finetune --batch-size 4 --iterations 5
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realsr.flows.train_settings import TrainSettings  # noqa: E402
from realsr.models.discriminators import build_discriminator  # noqa: E402
from realsr.models.training import Trainer  # noqa: E402
from realsr.steps.train_data import DegradedCrops, loader, run_scale, training_images  # noqa: E402
from realsr.steps.train_setup import build_generator, build_perceptual  # noqa: E402
from realsr.storage.run_dir import RunDir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--hr-size", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "train_speed.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = TrainSettings.from_preset(
        args.preset, run_dir=args.run_dir, out=Path("/tmp/unused"), batch_size=args.batch_size, hr_size=args.hr_size, workers=args.workers
    )
    run = RunDir(args.run_dir)
    scale = run_scale(run)
    images = training_images(run, s.hr_size, s.val_crops, s.val_images, s.seed).train
    spec = s.spec(scale)
    data = DegradedCrops(run, images, spec.data)
    n = args.iterations
    rows = {}

    t = time.perf_counter()
    batches = list(loader(data, s.batch_size, 0, n, s.workers))
    rows["loader"] = time.perf_counter() - t

    nets, r = spec.nets, spec.recipe
    g, desc = build_generator(nets.init, nets.g_shape(scale), s.seed)
    d = build_discriminator(nets.d)
    trainer = Trainer(g, d, build_perceptual(s.vgg19_weights), r.losses, r.schedule, r.ema_decay)  # the preset's losses and schedule
    lr, hr = batches[0]
    trainer.step(lr, hr)  # warm-up: first-call allocations
    t = time.perf_counter()
    for _ in range(n):
        trainer.step(lr, hr)
    rows["step"] = time.perf_counter() - t

    t = time.perf_counter()
    for lr, hr in loader(data, s.batch_size, n, 2 * n, s.workers):
        trainer.step(lr, hr)
    rows["train"] = time.perf_counter() - t

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = open("/proc/loadavg").read().split()[0]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        (
            f"preset {s.preset}: {desc}; batch {s.batch_size} of {s.hr_size} px, {s.workers} loader workers, torch threads {torch.get_num_threads()}, load "
            f"{load}, commit {commit}"
        )
    )
    print("| part | iterations | seconds | it/s | HR crops/s |")
    print("|---|---|---|---|---|")
    with args.results.open("a") as f:
        for part, secs in rows.items():
            print(f"| {part} | {n} | {secs:.2f} | {n / secs:.3f} | {n * s.batch_size / secs:.2f} |")
            f.write(
                json.dumps(
                    {
                        "preset": s.preset,
                        "part": part,
                        "iterations": n,
                        "seconds": secs,
                        "batch": s.batch_size,
                        "hr_size": s.hr_size,
                        "workers": s.workers,
                        "threads": torch.get_num_threads(),
                        "load": load,
                        "peak_rss_mb": rss,
                        "commit": commit,
                        "machine": platform.node(),
                        "date": time.strftime("%Y-%m-%d %H:%M"),
                    }
                )
                + "\n"
            )
    print(f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
