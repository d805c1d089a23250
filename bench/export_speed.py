"""CPU upscaling speed: the product (torch, channels_last, fp32) against its own exports run by
onnxruntime and by ncnn, at equal tiles and threads, on the released x4plus (23 blocks).

The exports are made as `realsr export` makes them (steps/export_formats.py) into a temporary
folder. Every runtime goes through the same tiling (`models.tiling.upscale`: same tiles, context
and seams; the exports are wrapped as a torch module), so only the network's runtime differs.
The first call is a warm-up, then `--runs` timed calls; the median is reported, with the max
difference of each runtime's 8-bit output from the product's.

    REALSR_WEIGHTS_DIR=/work/shared/weights OMP_NUM_THREADS=2 .venv/bin/python bench/export_speed.py --size 256 --tile 0 --runs 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realsr.models.synthetic import camera_photo  # noqa: E402
from realsr.models.tiling import upscale  # noqa: E402
from realsr.steps import export_formats as fmt  # noqa: E402
from realsr.storage.model_files import load_generator  # noqa: E402


class Wrapped(torch.nn.Module):
    """An export's runner as a module, so `models.tiling.upscale` tiles it as it tiles torch."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(x[0].permute(1, 2, 0).contiguous().numpy())
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="realesrgan-x4plus")
    ap.add_argument("--size", type=int, default=256, help="input px per side (a centre crop of a synthetic camera photo)")
    ap.add_argument("--tile", type=int, default=0, help="tile px (0: whole)")
    ap.add_argument("--tile-pad", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(args.model)
    net = gen.model.float().eval().to(memory_format=torch.channels_last)
    photo = camera_photo(0, max(480, args.size), max(640, args.size))
    y, x = (photo.shape[0] - args.size) // 2, (photo.shape[1] - args.size) // 2
    rgb = np.ascontiguousarray(photo[y : y + args.size, x : x + args.size])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fmt.write_onnx(gen.model, tmp / "m.onnx", 17)
        t_onnx = time.perf_counter() - t0
        t0 = time.perf_counter()
        fmt.write_ncnn(gen.model, tmp / "m.param", tmp / "m.bin")
        t_ncnn = time.perf_counter() - t0
        runtimes = {
            "realsr upscale (torch, channels_last)": (net, True),
            f"onnxruntime {__import__('onnxruntime').__version__} (CPU EP)": (Wrapped(fmt.onnx_session(tmp / "m.onnx", args.threads)), False),
            f"ncnn {__import__('ncnn').__version__} (CPU, fp32)": (Wrapped(fmt.ncnn_session(tmp / "m.param", tmp / "m.bin", args.threads)), False),
        }
        rows, ref = [], None
        for name, (model, cl) in runtimes.items():
            times, out = [], None
            for i in range(args.runs + 1):
                t0 = time.perf_counter()
                out = upscale(model, rgb, gen.scale, args.tile, args.tile_pad, 16, "cpu", torch.float32, cl, np.uint8)
                if i:
                    times.append(time.perf_counter() - t0)
            ref = out if ref is None else ref
            diff = int(np.abs(out.astype(np.int16) - ref).max())
            rows.append((name, statistics.median(times), min(times), diff))
            print(f"{name}: median {rows[-1][1]:.2f} s", file=sys.stderr)
    print(
        f"\n{args.model}, {args.size}x{args.size} input, tile {args.tile or 'whole'}"
        + (f" (pad {args.tile_pad})" if args.tile else "")
        + f", {args.threads} threads, {args.runs} runs after a warm-up; {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(f"export time: ONNX {t_onnx:.1f} s, ncnn {t_ncnn:.1f} s\n")
    print("| runtime | median s/image | min s | vs product | max diff vs product (1/255) |")
    print("|---|---|---|---|---|")
    for name, med, best, diff in rows:
        print(f"| {name} | {med:.2f} | {best:.2f} | {rows[0][1] / med:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
