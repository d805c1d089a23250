"""The `finetune` training step by precision and memory layout on this machine's CPU (issue 33).

Each configuration runs in a fresh process: Real-ESRGAN x4plus as G, the PatchGAN, the VGG19
perceptual loss, one batch reused (no data cost), `--steps` steps of which the first is left out
(oneDNN's kernel selection); the median of the rest is the figure.

    .venv/bin/python bench/train_step_precision.py [--batch 4] [--hr-size 128] [--steps 5] [--threads 2]

Configurations: fp32, fp32 + channels_last, bf16 autocast, bf16 autocast + channels_last
(what `--precision auto` picks on a CPU with AVX512-BF16 or AMX). Results are appended to
bench/results/train_step_precision.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"fp32": (False, False), "fp32 + channels_last": (False, True), "bf16 autocast": (True, False), "bf16 autocast + channels_last": (True, True)}


def one(config: str, batch: int, hr_size: int, steps: int, threads: int) -> dict:
    import torch
    from train_step_cpu import networks  # bench/ is this script's folder: the same G, D and loss

    from realsr.flows.train_settings import train_spec
    from realsr.models.devices import cpu_flags
    from realsr.models.training import Trainer

    torch.set_num_threads(threads)
    bf16, cl = CONFIGS[config]
    g, d, perceptual = networks(None, cl)
    r = train_spec(lr_g=5e-5).recipe  # the paper's losses, the fine-tune's G learning rate
    trainer = Trainer(g, d, perceptual, r.losses, r.schedule, r.ema_decay, "cpu", torch.bfloat16 if bf16 else None)
    torch.manual_seed(0)
    lr, hr = torch.rand(batch, 3, hr_size // 4, hr_size // 4), torch.rand(batch, 3, hr_size, hr_size)
    if cl:
        lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.step(lr, hr)
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    bf16_flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return {
        "config": config,
        "batch": batch,
        "hr_size": hr_size,
        "threads": threads,
        "first_s": round(times[0], 3),
        "median_s": round(rest[len(rest) // 2], 3),
        "min_s": round(rest[0], 3),
        "max_s": round(rest[-1], 3),
        "torch": torch.__version__,
        "cpu_bf16_flags": bf16_flags,
        "cpu": platform.processor() or platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hr-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "train_step_precision.jsonl")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.batch, args.hr_size, args.steps, args.threads)))
        return
    rows = []
    for config in CONFIGS:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            config,
            "--batch",
            str(args.batch),
            "--hr-size",
            str(args.hr_size),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]["median_s"]
    load = open("/proc/loadavg").read().split()[:3]
    print(
        (
            f"finetune step, batch {args.batch} of {args.hr_size} px, {args.threads} threads, load {' '.join(load)}, CPU bf16 flags "
            f"{rows[0]['cpu_bf16_flags'] or 'none'}"
        )
    )
    print("| configuration | s/step (median) | min-max | it/s | vs fp32 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {1 / r['median_s']:.3f} | {base / r['median_s']:.2f}x |")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, "load": load, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


if __name__ == "__main__":
    main()
