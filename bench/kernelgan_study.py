"""What the kept KernelGAN results say, with no new training: post-processing variants applied to
the stored raw kernels, and how well checks that need no ground truth predict a kernel that does
worse than the bicubic kernel.

    .venv/bin/python bench/kernelgan_study.py --label ours
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernelgan_accuracy import RESULTS, figures, load, make_case  # noqa: E402


def _hard(raw: np.ndarray, keep: int = 40) -> np.ndarray:
    from realsr.models.kernels import centre_kernel

    k = np.where(raw >= np.sort(raw.ravel())[-keep], raw, 0.0).clip(0)
    return centre_kernel(k / k.sum())


def _none(raw: np.ndarray) -> np.ndarray:
    from realsr.models.kernels import centre_kernel

    k = raw.clip(0)
    return centre_kernel(k / k.sum())


def variants() -> dict:
    from realsr.models.kernelgan import finalize_kernel

    return {"soft threshold (reference)": finalize_kernel, "hard 40 taps": _hard, "negatives clipped only": _none}


def features(row: dict) -> dict:
    """Ground-truth-free figures of one estimate."""
    from realsr.models.kernels import check_kernel

    raw, k = np.array(row["raw"]), np.array(row["kernel"])
    pos, neg = raw.clip(0).sum(), -raw.clip(None, 0).sum()
    return {
        "negative share of the raw kernel": neg / max(pos + neg, 1e-30),
        "raw sum": raw.sum(),
        "distance to bicubic": check_kernel(k, 2).bicubic_distance,
        "final D loss": row["losses"]["d"],
        "final G loss": row["losses"]["g"],
    }


def check_table(rows: list[dict], bic: dict) -> None:
    """How often the product's ground-truth-free check (`collapse` of the raw kernel) is right
    about a kernel that does worse than the bicubic kernel, over every kept row with a raw kernel."""
    from realsr.models.kernelgan import collapse

    counts = {(f, w): 0 for f in (True, False) for w in (True, False)}
    for r in rows:
        worse = r["lr_psnr"] < bic[(r["scale"], r["index"])]["lr_psnr"]
        counts[(collapse(np.array(r["raw"])) is not None, worse)] += 1
    hit, miss, false = counts[(True, True)], counts[(False, True)], counts[(True, False)]
    print(
        (
            f"\ncheck `collapse` over {len(rows)} estimates: flags {hit + false}; of the {hit + miss} worse than bicubic it flags {hit}; {false} flagged "
            f"ones were not worse"
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="ours")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cases-dir", type=Path, default=Path(__file__).resolve().parent / "results" / "kernelgan_cases")
    args = ap.parse_args()
    every = [r for r in load(args.results) if "raw" in r]
    check_table(every, {(r["scale"], r["index"]): r for r in load(args.results) if r["method"] == "bicubic"})
    rows = [r for r in every if r["method"] == args.label and r["scale"] == 2]
    bic = {r["index"]: r for r in load(args.results) if r["method"] == "bicubic" and r["scale"] == 2}
    print(f"{len(rows)} x2 cases of {args.label}\n\n| post-processing | kernel error | LR PSNR dB |\n|---|---|---|")
    cases = {r["index"]: make_case(2, r["index"], args.cases_dir) for r in rows}
    for name, fn in variants().items():
        got = [figures(cases[r["index"]], fn(np.array(r["raw"]))) for r in rows]
        print(f"| {name} | {np.mean([g['kernel_err'] for g in got]):.4f} | {np.mean([g['lr_psnr'] for g in got]):.2f} |")
    worse = {r["index"]: r["lr_psnr"] < bic[r["index"]]["lr_psnr"] for r in rows}
    print(f"\n{sum(worse.values())} of {len(rows)} kernels are worse than bicubic (LR PSNR)\n")
    print("| case | worse than bicubic | " + " | ".join(features(rows[0])) + " |")
    print("|---" * (2 + len(features(rows[0]))) + "|")
    for r in sorted(rows, key=lambda r: r["index"]):
        f = features(r)
        print(f"| {r['index']} {r['name']} | {'yes' if worse[r['index']] else ''} | " + " | ".join(f"{v:.4f}" for v in f.values()) + " |")


if __name__ == "__main__":
    main()
