"""Upscaling rows of `bench/gpu.py`: LR megapixels per second of the product's path beside plain eager fp32.

Ours is what `steps.upscale.upscale_files` runs: the generator moved to the device in the
precision (`fp16`/`bf16` on a GPU, `fp32` on a CPU, where half precision is slow), channels_last,
`models.tiling.upscale` under inference mode, whole or tiled. The reference is the same network in
eager fp32 NCHW through the same whole/tiled loop. From a float32 array to a float32 array, host
transfers included; the first call of each is a warm-up, then the best of `repeat`.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run(net, img: np.ndarray, dev: torch.device, precision: str, cl: bool, tiling: tuple[int, int, int], repeat: int) -> tuple[float, np.ndarray]:
    from realsr.models.tiling import upscale

    net = copy.deepcopy(net).eval().to(dev, DTYPES[precision])
    if cl:
        net.to(memory_format=torch.channels_last)
    tile, pad, overlap = tiling
    go = lambda: upscale(net, img, 4, tile=tile, pad=pad, overlap=overlap, device=dev, dtype=DTYPES[precision], channels_last=cl)  # noqa: E731
    out = go()  # warm-up: allocations, cuDNN's algorithm choice
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = go()
        best = min(best, time.perf_counter() - t)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return best, out


def rows(args, sizes, dev: torch.device, weights: dict, spent) -> list[dict]:
    from gpu_kernelgan import photos  # bench/ is on the path: the script's folder

    w, h = sizes.up_size
    img = photos(1, w, h, seed=7)[0]
    net, mp = weights["upscale_g"](), w * h / 1e6
    precisions = ("fp16", "bf16") if dev.type == "cuda" else ("fp32",)
    out = []
    for tiling in ((0, 0, 0), sizes.up_tile):
        group = f"upscale {w}x{h} LR, " + ("tiled {}/{}/{}".format(*tiling) if tiling[0] else "untiled")
        ref = {"section": "upscale", "group": group, "what": "plain eager fp32 (NCHW)", "setting": "fp32", "reference": True, "unit": "LR MP/s"}
        if left := spent():
            out.append({**ref, "value": None, "note": left})
            continue
        secs, base = run(net, img, dev, "fp32", False, tiling, sizes.up_repeat)
        out.append({**ref, "value": mp / secs, "note": f"{secs:.3f} s; {weights['upscale_note']}"})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        for p in precisions:
            row = {"section": "upscale", "group": group, "what": "ours (steps.upscale path)", "setting": p, "unit": "LR MP/s"}
            if left := spent():
                out.append({**row, "value": None, "note": left})
                continue
            secs, got = run(net, img, dev, p, True, tiling, sizes.up_repeat)
            diff = float(np.abs(got - base).max() * 255)
            out.append({**row, "value": mp / secs, "note": f"{secs:.3f} s; channels_last, inference mode; max diff to fp32 eager {diff:.2f}/255"})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out
