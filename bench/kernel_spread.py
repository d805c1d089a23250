"""Seed-to-seed spread of the kernel estimators, and how well it tells a bad estimate without the truth.

From the rows `bench/kernelgan_accuracy.py` keeps (`bench/results/kernelgan_official.jsonl`): for
every method row with its seeds' raw kernels (`seed_raws`), the spread is the mean total variation
of each seed's post-processed kernel to their consensus (`models.kernelgan_post.seed_spread`, what
the bank's `spread` column holds). The check it stands for: a photo whose spread is over a
threshold is flagged; it is "right" when the flagged estimate re-synthesises the LR worse than the
bicubic kernel does (LR PSNR below bicubic's), and a miss is a worse-than-bicubic estimate it did
not flag.

    .venv/bin/python bench/kernel_spread.py [--methods product-3x1000,fkp-3x1000] [--flag 0.15]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def spread_of(row: dict, n_filtering: int) -> float | None:
    """The row's spread, recomputed from its seeds' raw kernels (None: fewer than two good seeds)."""
    from realsr.models.kernelgan import KernelEstimate
    from realsr.models.kernelgan_post import seed_spread

    runs = tuple(KernelEstimate(np.array(r), np.array(r), {}, 0) for r in row.get("seed_raws") or [] if r is not None)
    if row["scale"] == 2:
        kernel = np.array(row["kernel"])
    else:  # the row's kernel is x4; the spread is of the x2 consensus, as in the bank
        from realsr.models.kernelgan_post import finalize_kernel
        from realsr.models.kernels import consensus_kernel

        if len(runs) < 2:
            return None
        kernel = consensus_kernel([finalize_kernel(e.raw, n_filtering) for e in runs])
    return seed_spread(KernelEstimate(kernel, kernel, {}, 0, runs=runs), n_filtering)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "kernelgan_official.jsonl")
    ap.add_argument("--methods", default="product-3x1000,fkp-3x1000")
    ap.add_argument("--flag", type=float, default=0.15, help="the spread over which a photo is flagged (steps.degrade_kernels.SPREAD_FLAG)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    bicubic = {(r["scale"], r["index"]): r["lr_psnr"] for r in rows if r["method"] == "bicubic"}
    print("| scale | method | photos | spread median | mean | max | flagged | worse than bicubic | flagged and worse | worse, not flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale in (2, 4):
        for method in args.methods.split(","):
            got = {r["index"]: r for r in rows if r["scale"] == scale and r["method"] == method}  # the newest row of a case wins
            n_filtering = 0 if "fkp" in method else 40  # KernelGAN-FKP keeps the prior's kernel whole
            spreads = {i: spread_of(r, n_filtering) for i, r in got.items()}
            have = {i: s for i, s in spreads.items() if s is not None}
            if not have:
                continue
            worse = {i for i in have if got[i]["lr_psnr"] < bicubic.get((scale, i), -np.inf)}
            flagged = {i for i, s in have.items() if s > args.flag}
            v = np.array(list(have.values()))
            print(
                (
                    f"| x{scale} | {method} | {len(have)} | {np.median(v):.3f} | {v.mean():.3f} | {v.max():.3f} | {len(flagged)} | {len(worse)} | "
                    f"{len(flagged & worse)} | {len(worse - flagged)} |"
                )
            )


if __name__ == "__main__":
    main()
