"""Does NIQE (no reference) rank SR results as LPIPS (with the HR) does? Per camera, a markdown table.

Reads `realsr evaluate` results.csv files (run with HR, so rows have both `lpips` and `niqe`) and gives
Spearman's rho and Kendall's tau-b between the two (both lower-is-better, so +1 is full agreement):
over every (model, image) row that has both, and over the models' means on those rows; and whether
both pick the same best model. A camera is named by NAME=PATH, else by the run folder above `eval/`.

    .venv/bin/python bench/nr_agreement.py [NAME=]results.csv ...
    (default: /work/runs/rw-mild/eval/results.csv /work/runs/rw-harsh/eval/results.csv)
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from statistics import fmean

from scipy.stats import kendalltau, spearmanr

DEFAULT = ["/work/runs/rw-mild/eval/results.csv", "/work/runs/rw-harsh/eval/results.csv"]


def camera(arg: str) -> tuple[str, Path]:
    name, sep, path = arg.partition("=")
    if not sep:
        p = Path(arg)
        return (p.parent.parent.name if p.parent.name == "eval" else p.parent.name), p
    return name, Path(path)


def read_rows(path: Path) -> list[tuple[str, str, float, float]]:
    """(model, image, niqe, lpips) of the rows that have both values."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit(f"{path}: cannot read ({e.strerror})") from None
    if rows and not {"niqe", "lpips"} <= rows[0].keys():
        raise SystemExit(f"{path}: no niqe and lpips columns (evaluate with --hr and NIQE on)")
    return [(r["model"], r["image"], float(r["niqe"]), float(r["lpips"])) for r in rows if r.get("niqe") and r.get("lpips")]


def agreement(a: list[float], b: list[float]) -> tuple[float, float]:
    if len(a) < 3:
        return math.nan, math.nan
    return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)


def fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", default=DEFAULT, help="[NAME=]path/to/results.csv (several with one NAME are pooled)")
    ap.add_argument("--against", default="realesrgan-x4plus", help="paired view: each model against this one, image by image")
    args = ap.parse_args()
    pooled: dict[str, list] = {}
    for arg in args.results:
        name, path = camera(arg)
        pooled.setdefault(name, []).extend(read_rows(path))
    lines = [
        "| camera | rows | rho rows | tau rows | models | rho means | tau means | best by NIQE | best by LPIPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    paired = ["", "| camera | model | NIQE says better than the reference on | LPIPS says better on | they agree on |", "|---|---|---|---|---|"]
    for name, rows in pooled.items():
        rows = list({(r[0], r[1]): r for r in rows}.values())  # a model evaluated in two files counts once
        models = sorted({m for m, *_ in rows})
        ref = {r[1]: r for r in rows if r[0] == args.against}
        for m in models:
            if m in (args.against, "bicubic") or not ref:
                continue
            mine = [(r, ref[r[1]]) for r in rows if r[0] == m and r[1] in ref]
            niqe_b = [r[2] < q[2] for r, q in mine]
            lpips_b = [r[3] < q[3] for r, q in mine]
            paired.append(
                (
                    f"| {name} | {m} | {sum(niqe_b)} of {len(mine)} | {sum(lpips_b)} of {len(mine)} | {sum(a == b for a, b in zip(niqe_b, lpips_b))} of "
                    f"{len(mine)} |"
                )
            )
        means = {m: [fmean(r[i] for r in rows if r[0] == m) for i in (2, 3)] for m in models}  # (niqe, lpips) per model
        rho_r, tau_r = agreement([r[2] for r in rows], [r[3] for r in rows])
        rho_m, tau_m = agreement([means[m][0] for m in models], [means[m][1] for m in models])
        best = [min(models, key=lambda m: means[m][i]) if models else "-" for i in (0, 1)]
        lines.append(f"| {name} | {len(rows)} | {fmt(rho_r)} | {fmt(tau_r)} | {len(models)} | {fmt(rho_m)} | {fmt(tau_m)} | {best[0]} | {best[1]} |")
    print("\n".join(lines + paired))
    print("\nrho: Spearman, tau: Kendall tau-b; + means NIQE ranks as LPIPS does (both lower is better); '-': under 3 values.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
