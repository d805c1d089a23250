"""What a nightly rerun over unchanged photos costs: degrade-flow on N photos, then again.

    OMP_NUM_THREADS=1 .venv/bin/python bench/nightly_rerun.py --work /tmp/nightly --counts 100,1000

For each N: seeded 128x128 PNG photos, `realsr degrade` (bicubic kernels, 64 px pairs) once, then
the same command twice more with nothing changed; the reruns' wall time (the whole command:
embedded Prefect API, Dask cluster, flow) and the flow's own stage timings. A line per N to
bench/results/nightly_rerun.jsonl. The per-photo cost is the slope between the two counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"p{i:05d}.png"
        if not path.exists():
            small = rng.uniform(0, 255, (17, 17, 3)).astype(np.float32)
            img = cv2.resize(small, (128, 128), interpolation=cv2.INTER_CUBIC)
            img[:64] = 120 + rng.normal(0, 2, (64, 128, 3))
            cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))


def degrade(src: Path, out: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    cmd = [str(Path(sys.executable).with_name("realsr")), "degrade", "--source", str(src), "--out", str(out), "--pair-hr-size", "64", "--noise-tile", "16"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--counts", default="100,1000")
    args = ap.parse_args()
    rows = []
    for n in map(int, args.counts.split(",")):
        src, out = args.work / f"photos_{n}", args.work / f"run_{n}"
        photos(src, n)
        first, s1 = degrade(src, out)
        reruns = [degrade(src, out) for _ in range(2)]
        s2 = reruns[-1][1]
        row = {
            "photos": n,
            "first_s": round(first, 1),
            "rerun_s": [round(r[0], 1) for r in reruns],
            "sent_to_workers": s2["worked_on"],
            "cached": s2["cached"],
            "rerun_stages_s": s2["timings_s"],
            "cores": os.cpu_count(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "load": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(ROOT / "bench" / "results" / "nightly_rerun.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
