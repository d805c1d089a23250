"""degrade-flow throughput against the I/O floor, with 1 and 2 Dask workers, and peak memory.

Source set: N images of 1-2 MP written as PNG, from the real camera photos in
shared/data/camera_photos: even-numbered ones are random crops (with flips) of flower.png (3.4 MP),
odd-numbered ones are 2x2 mosaics of flipped 500 px sky/water photos (*_srgb8.png), which have the
flat areas that noise extraction looks for. The floor is a plain single-process loop of OpenCV decode + PNG
encode of every source image. Run from the repo root:

    .venv/bin/python bench/degrade_throughput.py --images 50 --workers 1 2
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[50])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()

    from flows.cli import run_degrade
    from flows.runtime import apply_env_defaults, prefect_api
    from flows.settings import DegradeSettings

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
            for w in args.workers:
                out = base / f"run{n}_w{w}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                with PeakRSS() as mem:
                    summary = run_degrade(DegradeSettings(source=src, out=out), workers=w)
                wall = time.perf_counter() - t
                rows.append((n, f"degrade-flow, {w} Dask worker(s)", wall, summary["timings_s"]["total"], mp, mem.peak, summary["timings_s"]))
    print(f"\nmachine: {os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, 1 thread per worker\n")
    print("| images | MP | run | wall s (incl. cluster start) | in-flow s | images/s | MP/s | x floor | clean-up+noise img/s | pairs img/s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, name, wall, inflow, mp, peak, tm in rows:
        floor = next(r[3] for r in rows if r[0] == n and r[5] is None)
        prep = f"{n / tm['clean-up + noise extraction']:.2f}" if tm else ""
        pairs = f"{n / tm['pairs']:.2f}" if tm else ""
        print(
            f"| {n} | {mp:.0f} | {name} | {wall:.1f} | {inflow:.1f} | {n / inflow:.2f} | {mp / inflow:.1f} | "
            f"{inflow / floor:.2f} | {prep} | {pairs} | {'' if peak is None else f'{peak / 1e9:.2f}'} |"
        )


if __name__ == "__main__":
    main()
