"""Issue 33's rows across cameras and seeds: one markdown table from bench/results/recipe_sweep.jsonl.

Each cell is a row's gain over Real-ESRGAN x4plus on one camera's test set at one seed (LPIPS in %,
PSNR-Y and SSIM-Y as differences, images better by LPIPS); the last columns are the mean over the
cells the row has. The newest line wins where a row was run twice.

    .venv/bin/python bench/recipe_table.py --rows finetune-cpu,realesrgan-losses,base [--run kernelgan]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_sweep.jsonl"


def cell_key(r: dict) -> tuple[str, int]:
    """(camera, seed) from the line's work folder (rw-harsh, rw-mild-s1, ...)."""
    return Path(r["work"]).name.removeprefix("rw-").split("-s")[0], int(r["seed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", required=True, help="comma-separated row names as recipe_sweep.py wrote them")
    ap.add_argument("--run", default="kernelgan", help="the degrade run the rows trained on")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    latest: dict[tuple, dict] = {}
    for line in args.results.read_text().splitlines():
        r = json.loads(line)
        if r.get("run", "kernelgan") == args.run:
            latest[(r["row"], *cell_key(r))] = r
    names = [n for n in args.rows.split(",") if n]
    cells = sorted({k[1:] for k in latest if k[0] in names})
    head = [f"{cam} s{seed}" for cam, seed in cells]
    print("| row | " + " | ".join(head) + " | mean LPIPS | mean PSNR-Y | mean SSIM-Y | images better |")
    print("|---|" + "---|" * (len(head) + 4))
    for name in names:
        got, out = [], []
        for cell in cells:
            r = latest.get((name, *cell))
            if r is None:
                out.append("-")
                continue
            d_ssim = r["ssim_y"] - r["x4plus"]["ssim_y"]
            got.append((r["lpips_vs_x4plus_pct"], r["psnr_vs_x4plus_db"], d_ssim, r["wins"], r["images"]))
            out.append(f"{r['lpips_vs_x4plus_pct']:+.1f} %, {r['psnr_vs_x4plus_db']:+.2f} dB, {d_ssim:+.4f}")
        if got:
            a = np.array(got, dtype=float)
            tail = f"{a[:, 0].mean():+.1f} % | {a[:, 1].mean():+.2f} dB | {a[:, 2].mean():+.4f} | {int(a[:, 3].sum())} of {int(a[:, 4].sum())}"
        else:
            tail = "- | - | - | -"
        print(f"| {name} | " + " | ".join(out) + f" | {tail} |")


if __name__ == "__main__":
    main()
