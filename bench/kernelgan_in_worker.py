"""KernelGAN's speed in this process, in a Dask worker as Dask starts it, and in a worker with
the environment degrade-flow gives its local cluster (`flows.runtime.WORKER_ENV`).

Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers, which turns off glibc's adaptive mmap
threshold; this measures what that costs a training loop that frees and reallocates buffers of a
few MB every step, and what MALLOC_MMAP_THRESHOLD_ gives back. Per setting: ms per image-step,
user and system CPU seconds, minor page faults of the training alone.

    .venv/bin/python bench/kernelgan_in_worker.py --images 10 --iterations 100 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(images: int, iterations: int) -> dict:
    """Time `estimate_kernels` on synthetic photos; CPU and faults from getrusage."""
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    from realsr.models.kernelgan import KernelGANConfig, estimate_kernels
    from realsr.models.synthetic import camera_photo

    imgs = [camera_photo(i, 200, 200) for i in range(images)]
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    estimate_kernels(imgs, KernelGANConfig(iterations=iterations))
    secs, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms_per_image_step": 1000 * secs / (images * iterations),
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "faults": r1.ru_minflt - r0.ru_minflt,
    }


def in_cluster(workers: int, env: dict, images: int, iterations: int) -> list[dict]:
    """One training per worker, all at once, on a fresh local process cluster."""
    from distributed import Client, LocalCluster

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the nanny's workers inherit this process's environment
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c, Client(c) as client:
            return client.gather([client.submit(train, images, iterations, pure=False) for _ in range(workers)])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10, help="images trained together")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    from realsr.flows.runtime import WORKER_ENV

    threads = {k: v for k, v in WORKER_ENV.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    print(f"{args.images} images trained together, {args.iterations} steps, {os.cpu_count()} cores, 1 torch thread per process\n")
    print("| where | workers | ms per image-step | user s | sys s | minor faults |")
    print("|---|---|---|---|---|---|")

    def row(where, n, r):
        print(f"| {where} | {n} | {r['ms_per_image_step']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['faults']:,} |", flush=True)

    row("this process (no Dask)", "-", train(args.images, args.iterations))
    for n in args.workers:
        for where, env in (("Dask worker, Dask's defaults", threads), ("Dask worker, degrade-flow's WORKER_ENV", WORKER_ENV)):
            for r in in_cluster(n, env, args.images, args.iterations):
                row(where, n, r)


if __name__ == "__main__":
    main()
