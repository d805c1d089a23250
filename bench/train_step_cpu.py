"""The `finetune` training step on this CPU beyond bf16 and channels_last (issue 33): torch.compile,
oneDNN's knobs, training part of G, threads and the loader's share of the cores.

Two groups, both with the `finetune` networks (Real-ESRGAN x4plus from the verified weight store,
the PatchGAN, the VGG19 conv5_4 loss) at `--precision auto` (bf16 autocast + channels_last here):

- `step`: one process, `--threads` threads, one real batch reused (no data cost). Every variant is
  built first (its compile time is the sum of its first `--warmup` steps less as many steady
  steps), then the timed steps run interleaved: step i of every variant before step i+1 of any, so
  load drift falls on all alike. The first step's losses of each variant are kept, from the same
  init, D seed and batch, to compare numerics with eager.
- `loop`: one process per setting of threads, workers and OMP_WAIT_POLICY: `steps.train_data.batches` (the on-the-fly
  degradation of a degrade-flow run, `--run`) feeding `Trainer.step`, as `realsr train` loops.

    REALSR_WEIGHTS_DIR=... .venv/bin/python bench/train_step_cpu.py --run RUN [--batch 4] [--hr-size 128] [--warmup 5] [--steps 10]

Results: one JSON line per variant in bench/results/train_step_cpu.jsonl, with the load average and
the other processes that took CPU when it started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_VARIANTS = ("eager", "compile", "compile max-autotune", "fp32 + oneDNN bf16 fpmath", "partial G", "partial G + frozen part compiled (freezing)")
LOOP_VARIANTS = {  # name: (intra-op threads of the training process, DataLoader workers, OMP_WAIT_POLICY or "" for libgomp's default)
    "threads 1, workers 2, passive (realsr train --preset finetune today)": (1, 2, "PASSIVE"),
    "threads 1, workers 1, passive": (1, 1, "PASSIVE"),
    "threads 2, workers 0, passive": (2, 0, "PASSIVE"),
    "threads 2, workers 1, passive": (2, 1, "PASSIVE"),
    "threads 2, workers 0, default wait": (2, 0, ""),
    "threads 2, workers 1, default wait": (2, 1, ""),
}
TRAINABLE_BLOCKS = 3  # partial G: body.20..22, conv_body and the upsampler learn


def other_load() -> dict:
    """The load average and the other processes above 10 % CPU, as this run starts."""
    ps = subprocess.run(["ps", "-eo", "pcpu=,pid=,comm="], capture_output=True, text=True).stdout.split("\n")
    me = {os.getpid(), os.getppid()}
    busy = [line.split(None, 2) for line in ps if line.strip()]
    busy = [f"{c} {p} {n}" for c, p, n in busy if float(c) > 10 and int(p) not in me]
    return {"loadavg": open("/proc/loadavg").read().split()[:3], "busy_processes": busy}


def networks(lr_batch, cl: bool):
    """G (x4plus), D (seed 1) and the VGG19 loss, as `steps.train.set_up` builds them."""
    import torch

    from realsr.models.discriminators import DiscriminatorConfig, build_discriminator
    from realsr.models.rrdbnet import RRDBConfig
    from realsr.steps.train_setup import build_generator, build_perceptual

    g, _ = build_generator("realesrgan-x4plus", RRDBConfig(scale=4), 0)
    perceptual = build_perceptual(None)
    torch.manual_seed(1)
    d = build_discriminator(DiscriminatorConfig())
    if cl:
        for net in (g, d, perceptual):
            net.to(memory_format=torch.channels_last)
    return g, d, perceptual


def partial_g(g, trainable: int, compile_frozen: bool):
    """G whose conv_first and body[:-trainable] are frozen and run under no_grad (no graph, no
    backward through them); with `compile_frozen` that part is compiled with inductor's freezing
    (weights as constants: oneDNN's prepacked, fused convolutions), which applies to it alone."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_first, self.body = g.conv_first, g.body[: len(g.body) - trainable]

        def forward(self, x):
            f0 = self.conv_first(x)
            return f0, self.body(f0)

    class PartialG(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = g
            self.frozen = Frozen()
            for p in self.frozen.parameters():
                p.requires_grad_(False)
            self.run_frozen = torch.compile(self.frozen, options={"freezing": True}) if compile_frozen else self.frozen

        def forward(self, x):
            g = self.g
            with torch.no_grad():
                f0, h = self.run_frozen(x)
            feat = f0 + g.conv_body(g.body[len(g.body) - trainable :](h))
            feat = g.lrelu(g.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
            feat = g.lrelu(g.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
            return g.conv_last(g.lrelu(g.conv_hr(feat)))

    return PartialG()


class FpMath:
    """oneDNN's fp32 math mode for convolutions (`torch.backends.mkldnn.conv.fp32_precision`): 'bf16'
    lets fp32 convolutions compute in bf16 internally; set around this variant's steps only."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        import torch

        self.old = torch.backends.mkldnn.conv.fp32_precision
        torch.backends.mkldnn.conv.fp32_precision = self.mode

    def __exit__(self, *exc):
        import torch

        torch.backends.mkldnn.conv.fp32_precision = self.old


def build_step_variant(name: str, lr, hr):
    """(trainer, context for its steps, (lr, hr) in its layout)."""
    from contextlib import nullcontext

    import torch

    from realsr.flows.train_settings import train_spec
    from realsr.models.training import Trainer

    amp, cl = (None, True) if name.startswith("fp32") else (torch.bfloat16, True)
    g, d, perceptual = networks(lr, cl)
    if name.startswith("partial G"):
        g = partial_g(g, TRAINABLE_BLOCKS, "compiled" in name)
    r = train_spec(lr_g=5e-5).recipe  # the paper's losses, the fine-tune's G learning rate
    trainer = Trainer(g, d, perceptual, r.losses, r.schedule, r.ema_decay, "cpu", amp)
    if name.startswith("compile"):
        mode = "max-autotune-no-cudagraphs" if "max-autotune" in name else None
        trainer.g, trainer.d, trainer.perceptual = (torch.compile(m, mode=mode) for m in (g, d, perceptual))
    ctx = FpMath("bf16") if "fpmath" in name else nullcontext()
    if cl:
        lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
    return trainer, ctx, (lr, hr)


def real_batch(run: Path | None, batch: int, hr_size: int, seed: int = 0):
    """Batch 1 of the data path on `run`, else uniform noise of the same shape."""
    import torch

    if run is None:
        torch.manual_seed(0)
        return torch.rand(batch, 3, hr_size // 4, hr_size // 4), torch.rand(batch, 3, hr_size, hr_size), "uniform noise"
    data = dataset(run, hr_size, seed)
    from realsr.steps.train_data import batches

    with batches(data, batch, 0, 1, 0) as it:
        lr, hr = next(it)
    return lr, hr, f"batch 1 of {run}"


def dataset(run: Path, hr_size: int, seed: int):
    from realsr.flows.train_settings import train_spec
    from realsr.steps.train_data import DegradedCrops, run_scale, training_images
    from realsr.storage.run_dir import RunDir

    rd = RunDir(run)
    scale = run_scale(rd)
    found = training_images(rd, hr_size, 16, 0, seed)
    return DegradedCrops(rd, found.train, train_spec(scale=scale, hr_size=hr_size, seed=seed).data)


def step_group(args) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    start = other_load()
    lr, hr, source = real_batch(args.run, args.batch, args.hr_size)
    built, failed, rows = {}, {}, []
    for name in args.variants:
        t0 = time.perf_counter()
        try:
            trainer, ctx, batch = build_step_variant(name, lr, hr)
            warm, first_logs = [], None
            for _ in range(args.warmup):
                t = time.perf_counter()
                with ctx:
                    logs = trainer.step(*batch)
                warm.append(time.perf_counter() - t)
                first_logs = first_logs or logs
            built[name] = (trainer, ctx, batch, warm, first_logs, time.perf_counter() - t0)
            print(f"{name}: built and warmed up in {time.perf_counter() - t0:.1f} s (first step {warm[0]:.1f} s)", file=sys.stderr, flush=True)
        except Exception as e:  # a variant this torch cannot run: said, and the others go on
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"{name}: FAILED {failed[name]}", file=sys.stderr, flush=True)
    times = {n: [] for n in built}
    for _ in range(args.steps):
        for name, (trainer, ctx, batch, *_rest) in built.items():
            t = time.perf_counter()
            with ctx:
                trainer.step(*batch)
            times[name].append(time.perf_counter() - t)
    end = other_load()
    for name in args.variants:
        row = {"group": "step", "variant": name, "threads": args.threads, "batch_source": source}
        if name in failed:
            rows.append({**row, "error": failed[name]})
            continue
        _, _, _, warm, first_logs, setup_s = built[name]
        ts = sorted(times[name])
        med = ts[len(ts) // 2]
        row.update(
            median_s=round(med, 3),
            min_s=round(ts[0], 3),
            max_s=round(ts[-1], 3),
            first_s=round(warm[0], 2),
            warmup_s=[round(w, 2) for w in warm],
            compile_s=round(sum(warm) - len(warm) * med, 1),
            setup_s=round(setup_s, 1),
            first_step_losses={k: round(v, 6) for k, v in first_logs.items()},
        )
        rows.append(row)
    for r in rows:
        r.update(load_start=start, load_end=end)
    return rows


def loop_one(args, name: str) -> dict:
    """One thread/worker setting: `--warmup` iterations, then `--steps` timed, data and step."""
    import torch

    threads, workers, _ = LOOP_VARIANTS[name]
    torch.set_num_threads(threads)
    from realsr.flows.train_settings import train_spec
    from realsr.models.training import Trainer
    from realsr.steps.train_data import batches

    start = other_load()
    data = dataset(args.run, args.hr_size, 0)
    g, d, perceptual = networks(None, True)
    r = train_spec(lr_g=5e-5).recipe
    trainer = Trainer(g, d, perceptual, r.losses, r.schedule, r.ema_decay, "cpu", torch.bfloat16)
    t_data = 0.0
    stamps = []
    with batches(data, args.batch, 0, args.warmup + args.steps, workers) as it:
        t = time.perf_counter()
        for i, (lr, hr) in enumerate(it):
            got = time.perf_counter()
            if i >= args.warmup:
                t_data += got - t
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
            trainer.step(lr, hr)
            t = time.perf_counter()
            stamps.append(t)
    span = stamps[-1] - stamps[args.warmup - 1]
    return {
        "group": "loop",
        "variant": name,
        "threads": threads,
        "workers": workers,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "s_per_it": round(span / args.steps, 3),
        "it_s": round(args.steps / span, 3),
        "waiting_for_data_s_per_it": round(t_data / args.steps, 3),
        "load_start": start,
        "load_end": other_load(),
    }


def loop_env(threads: int, workers: int, wait: str) -> dict:
    """The environment of a loop variant's process: `realsr` sets OMP_NUM_THREADS=1 and
    OMP_WAIT_POLICY=PASSIVE for itself (flows/runtime.py WORKER_ENV), so its training runs so."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if wait:
        env["OMP_WAIT_POLICY"] = wait
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a degrade-flow run folder: the data path for the loop group and the step group's batch")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hr-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="the step group's intra-op threads")
    ap.add_argument("--variants", nargs="*", default=list(STEP_VARIANTS), choices=STEP_VARIANTS)
    ap.add_argument("--loops", nargs="*", default=list(LOOP_VARIANTS), choices=list(LOOP_VARIANTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: 'step' or a loop variant
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "train_step_cpu.jsonl")
    args = ap.parse_args()
    if args.one:
        rows = step_group(args) if args.one == "step" else [loop_one(args, args.one)]
        print(json.dumps(rows))
        return
    common = [
        "--batch",
        str(args.batch),
        "--hr-size",
        str(args.hr_size),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    common += ["--run", str(args.run)] if args.run else []
    jobs = [("step", None)] if args.variants else []
    if args.run:
        jobs += [(name, loop_env(*LOOP_VARIANTS[name])) for name in args.loops]
    rows = []
    for one, env in jobs:
        cmd = [sys.executable, __file__, "--one", one, *common, "--variants", *args.variants]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env or None)  # its progress on stderr, as it goes
        if out.returncode:
            sys.exit(f"{one}: exit {out.returncode}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    stamp = {
        "batch": args.batch,
        "hr_size": args.hr_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "torch": torch.__version__,
        "commit": commit,
        "cpu": platform.processor() or platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"finetune step, batch {args.batch} of {args.hr_size} px, bf16 autocast + channels_last unless named; {args.warmup} warm-up + {args.steps} timed steps"
    )
    steps = [r for r in rows if r["group"] == "step"]
    if steps:
        base = next((r["median_s"] for r in steps if r["variant"] == "eager" and "median_s" in r), None)
        print(
            (
                f"\nstep group ({args.threads} threads, one batch reused, interleaved)\n| variant | s/step (median) | min-max | it/s | vs eager | compile s "
                f"| first-step losses |\n|---|---|---|---|---|---|---|"
            )
        )
        for r in steps:
            if "error" in r:
                print(f"| {r['variant']} | failed: {r['error']} | | | | | |")
                continue
            vs = f"{base / r['median_s']:.2f}x" if base else ""
            losses = ", ".join(f"{k} {v:.4g}" for k, v in r["first_step_losses"].items() if k in ("l_pix", "l_percep", "l_g_gan", "l_d"))
            print(
                (
                    f"| {r['variant']} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {1 / r['median_s']:.3f} | {vs} | {r['compile_s']:.0f} | "
                    f"{losses} |"
                )
            )
    loops = [r for r in rows if r["group"] == "loop"]
    if loops:
        print("\nloop group (data path + step, one process per row)\n| threads, workers | s/it | it/s | waiting for data s/it |\n|---|---|---|---|")
        for r in loops:
            print(f"| {r['variant']} | {r['s_per_it']:.2f} | {r['it_s']:.3f} | {r['waiting_for_data_s_per_it']:.2f} |")
    print(f"\nload at start {rows[0]['load_start']['loadavg']}, busy others {rows[0]['load_start']['busy_processes']}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, **stamp}) + "\n")


if __name__ == "__main__":
    main()
