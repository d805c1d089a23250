"""How fast training can read HR/LR pairs: the PNG folders degrade-flow writes vs a Zarr copy.

Reads random pairs (HR 256x256 + LR 64x64, uint8) the way a data loader does, one process:
- PNG: cv2.imread of pairs/hr/<name>.png and pairs/lr/<name>.png;
- Zarr: the same patches copied into hr (N, 256, 256, 3) and lr (N, 64, 64, 3) arrays, one patch
  per chunk, Zstd level 3, read one index at a time.

    .venv/bin/python bench/pair_read.py RUN_DIR [--reads 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import zarr
from zarr.codecs import ZstdCodec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    pairs = args.run_dir / "pairs"
    names = [json.loads(line)["name"] for line in (pairs / "manifest.jsonl").read_text().splitlines()]
    hr0 = cv2.imread(str(pairs / "hr" / f"{names[0]}.png"))
    lr0 = cv2.imread(str(pairs / "lr" / f"{names[0]}.png"))
    store = args.run_dir / "pairs_bench.zarr"
    shutil.rmtree(store, ignore_errors=True)
    g = zarr.open_group(str(store), mode="w")
    zs = ZstdCodec(level=3)
    hr = g.create_array("hr", shape=(len(names), *hr0.shape), chunks=(1, *hr0.shape), dtype="uint8", compressors=zs)
    lr = g.create_array("lr", shape=(len(names), *lr0.shape), chunks=(1, *lr0.shape), dtype="uint8", compressors=zs)
    hr[...] = np.stack([cv2.imread(str(pairs / "hr" / f"{n}.png")) for n in names])
    lr[...] = np.stack([cv2.imread(str(pairs / "lr" / f"{n}.png")) for n in names])

    rng = np.random.default_rng(0)
    order = rng.integers(len(names), size=args.reads)
    t = time.perf_counter()
    for i in order:
        cv2.imread(str(pairs / "hr" / f"{names[i]}.png"))
        cv2.imread(str(pairs / "lr" / f"{names[i]}.png"))
    png = args.reads / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in order:
        hr[int(i)]
        lr[int(i)]
    zr = args.reads / (time.perf_counter() - t)

    def size(p: Path) -> float:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6

    png_mb = size(pairs / "hr") + size(pairs / "lr")
    print(f"{len(names)} pairs, HR {hr0.shape[1]}x{hr0.shape[0]}, LR {lr0.shape[1]}x{lr0.shape[0]}, {args.reads} random reads, 1 process\n")
    print("| layout | pairs/s | MB on disk |")
    print("|---|---|---|")
    print(f"| PNG folders (pairs/hr, pairs/lr) | {png:.0f} | {png_mb:.1f} |")
    print(f"| Zarr, 1 patch per chunk, Zstd 3 | {zr:.0f} | {size(store):.1f} |")
    shutil.rmtree(store)


if __name__ == "__main__":
    main()
