"""degrade-flow throughput against the I/O floor, with 1 and 2 Dask workers, and peak memory.

Source set: N images of 1-2 MP written as PNG, from the real camera photos in
shared/data/camera_photos: even-numbered ones are random crops (with flips) of flower.png (3.4 MP),
odd-numbered ones are 2x2 mosaics of flipped 500 px sky/water photos (*_srgb8.png), which have the
flat areas that noise extraction looks for. The floor is a plain single-process loop of OpenCV decode + PNG
encode of every source image. Run from the repo root:

    .venv/bin/python bench/degrade_throughput.py --images 25 50 --workers 1 2

Noise patches are 64 px here (--noise-patch-size): real 1-2 MP photos rarely hold a 256 px patch
with luma variance < 20, and the bank should be exercised. Rows:
- floor: decode + PNG encode of every source, one process (the I/O floor);
- stages, no orchestration: the same per-image code in one process, no Prefect, no Dask;
- degrade-flow with 1 and 2 Dask worker processes (1 thread each), Prefect embedded.
The marginal cost per image (difference between the two set sizes) removes the fixed costs
(API server, cluster start, worker imports).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "camera_photos"


def make_sources(folder: Path, n: int, seed: int = 0) -> float:
    """n crops of 1-2 MP with random flips; returns the total megapixels."""
    rng = np.random.default_rng(seed)
    photo = cv2.imread(str(SHARED / "flower.png"), cv2.IMREAD_COLOR)
    skies = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(SHARED.glob("*_srgb8.png"))]
    h, w = photo.shape[:2]
    folder.mkdir(parents=True, exist_ok=True)
    mp = 0.0
    for i in range(n):
        if i % 2 == 1:
            tiles = [skies[int(rng.integers(len(skies)))][:: int(rng.choice([-1, 1])), :: int(rng.choice([-1, 1]))] for _ in range(4)]
            crop = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
            cv2.imwrite(str(folder / f"sky_{i:03d}.png"), np.ascontiguousarray(crop))
            mp += crop.shape[0] * crop.shape[1] / 1e6
            continue
        area = rng.uniform(1.0e6, 2.0e6)
        ch = int(min(h, np.sqrt(area / 1.4)))
        cw = int(min(w, area / ch))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = photo[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        cv2.imwrite(str(folder / f"crop_{i:03d}.png"), np.ascontiguousarray(crop))
        mp += ch * cw / 1e6
    return mp


def io_floor(folder: Path) -> float:
    cv2.setNumThreads(1)
    t = time.perf_counter()
    for p in sorted(folder.glob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        ok, _ = cv2.imencode(".png", img)
    return time.perf_counter() - t


class PeakRSS:
    """Peak summed RSS of this process and its children (Dask workers, API server), sampled at 20 Hz."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def stages_only(settings) -> tuple[float, dict]:
    """The per-image stages called in a plain loop: the cost of the work itself."""
    from realsr.steps import degrade as stages
    from realsr.storage.images import list_images
    from realsr.storage.run_dir import RunDir, claim_run_dir

    shutil.rmtree(settings.out, ignore_errors=True)
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    run = RunDir(claim_run_dir(settings.out, {}))
    k = stages.build_kernel_bank(run, settings)
    records = [stages.prepare_source(p, run, settings) for p in list_images(settings.source)[0]]
    t1 = time.perf_counter()
    n = stages.build_noise_bank(records, run, settings)
    t2 = time.perf_counter()
    pairs = [stages.make_pairs(r, run, settings, k["digest"], n["digest"]) for r in records]
    stages.write_manifest(run, pairs)
    t3 = time.perf_counter()
    return t3 - t0, {"clean-up + noise extraction": t1 - t0, "pairs": t3 - t2, "noise patches": n["count"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[50])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--noise-patch-size", type=int, default=64)
    args = ap.parse_args()

    from realsr.flows.cli_degrade import run_degrade
    from realsr.flows.runtime import apply_env_defaults, prefect_api
    from realsr.flows.settings import DegradeSettings

    apply_env_defaults()
    base = Path(args.keep or tempfile.mkdtemp(prefix="realsr-bench-"))
    rows = []
    with prefect_api():
        for n in args.images:
            src = base / f"src{n}"
            if src.exists():
                shutil.rmtree(src)
            mp = make_sources(src, n)
            floor = min(io_floor(src) for _ in range(2))
            rows.append((n, "floor: cv2 decode+PNG encode, 1 process", floor, floor, mp, None, {}))
            p = args.noise_patch_size
            make = lambda out: DegradeSettings(source=src, out=out, noise_patch_size=p, noise_stride=p)
            direct, tm = stages_only(make(base / f"direct{n}"))
            rows.append((n, "stages, no orchestration, 1 process", direct, direct, mp, None, tm))
            for w in args.workers:
                out = base / f"run{n}_w{w}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                with PeakRSS() as mem:
                    summary = run_degrade(make(out), workers=w)
                wall = time.perf_counter() - t
                tm = {**summary["timings_s"], "noise patches": summary["noise_bank"]["count"]}
                rows.append((n, f"degrade-flow, {w} Dask worker(s)", wall, summary["timings_s"]["total"], mp, mem.peak, tm))
    print(f"\nmachine: {os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, 1 thread per worker\n")
    print("| images | MP | run | wall s (all) | in-flow s | images/s | MP/s | x floor | clean-up+noise img/s | pairs img/s | noise patches | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, name, wall, inflow, mp, peak, tm in rows:
        floor = next(r[3] for r in rows if r[0] == n and r[1].startswith("floor"))
        prep = f"{n / tm['clean-up + noise extraction']:.2f}" if tm else ""
        pairs = f"{n / tm['pairs']:.2f}" if tm else ""
        print(
            f"| {n} | {mp:.0f} | {name} | {wall:.1f} | {inflow:.1f} | {n / inflow:.2f} | {mp / inflow:.1f} | "
            f"{inflow / floor:.2f} | {prep} | {pairs} | {tm.get('noise patches', '')} | {'' if peak is None else f'{peak / 1e9:.2f}'} |"
        )
    sizes = sorted({r[0] for r in rows})
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        print(f"\nmarginal cost per image between {a} and {b} images (fixed costs removed):\n")
        print("| run | s per image | x floor |")
        print("|---|---|---|")
        for name in dict.fromkeys(r[1] for r in rows):
            ta = next(r[3] for r in rows if r[0] == a and r[1] == name)
            tb = next(r[3] for r in rows if r[0] == b and r[1] == name)
            fa = next(r[3] for r in rows if r[0] == a and r[1].startswith("floor"))
            fb = next(r[3] for r in rows if r[0] == b and r[1].startswith("floor"))
            per, floor_per = (tb - ta) / (b - a), (fb - fa) / (b - a)
            print(f"| {name} | {per:.3f} | {per / floor_per:.2f} |")


if __name__ == "__main__":
    main()
