"""Issue 33's recipe rows: one fine-tune of Real-ESRGAN x4plus per recipe choice, on a camera of
`bench/realworld_x4.py`, each scored against x4plus on that camera's held-out test set.

Every row is `realsr train` as a user runs it (the `finetune` preset, the budget below, the row's
flags on top), on the product's own degradations of the camera's photos (the `kernelgan` run that
`realworld_x4.py --scale cpu-long` leaves in WORK), then `realsr evaluate` on WORK/test. Rows differ
from `base` by the flags shown; `--budget` sets the iterations, batch and crop every row starts from.

    OMP_NUM_THREADS=2 REALSR_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/recipe_sweep.py \\
        --work /work/runs/rw-harsh --seed 0 --rows base,ema99,lr2x

A row named after a shipped preset (`finetune-cpu`) trains that preset as it is, at its own budget;
`finetune-cpu+percep0.1` adds a row's flags to it. `--blends 0.5,0.75` also scores each row's
`realsr blend realesrgan-x4plus ROW ALPHA`. `bench/recipe_table.py` puts the rows of every camera
and seed side by side. Reruns reuse the models and evaluations already made; the table goes to WORK/sweep/table_sN.md and
one JSON line per row to bench/results/recipe_sweep.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALESRGAN_LAYERS = "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1"
# the `finetune` preset as the sweep found it (ESRGAN's losses): every row starts from these, so a
# row means the same whatever the preset says today
BASE = [
    "--pixel-weight",
    "1e-2",
    "--perceptual-weight",
    "1",
    "--gan-weight",
    "5e-3",
    "--perceptual-layers",
    "conv5_4",
    "--gan-type",
    "ragan",
    "--discriminator",
    "patchgan",
    "--lr-g",
    "5e-5",
    "--lr-d",
    "1e-4",
    "--ema-decay",
    "0.999",
]
REALESRGAN_LOSSES = ["--pixel-weight", "1", "--perceptual-weight", "1", "--gan-weight", "0.1", "--perceptual-layers", REALESRGAN_LAYERS]

PRESET_ROWS = ("finetune-cpu",)  # rows that are a train preset as shipped, not flags on the base
ROWS: dict[str, list[str]] = {  # flags on top of the finetune preset at the budget
    "base": [],
    "ema99": ["--ema-decay", "0.99"],
    "ema0": ["--ema-decay", "0"],
    "lr2x": ["--lr-g", "1e-4"],
    "lr4x": ["--lr-g", "2e-4"],
    "lrd-half": ["--lr-d", "5e-5"],
    "lr-5x-lower": ["--lr-g", "1e-5"],
    "lr-25x-lower": ["--lr-g", "2e-6"],
    "kernel-per-sample": ["--kernel-per", "sample"],
    "layers": ["--perceptual-layers", REALESRGAN_LAYERS],
    "pix1": ["--pixel-weight", "1"],
    "gan-low": ["--gan-weight", "1e-3"],
    "gan1": ["--gan-weight", "1"],
    # our VGG19 is Caffe's (0-255 inputs inside its first layer): with Real-ESRGAN's layers its perceptual
    # term is about 1000 beside an L1 of 0.07; these rows move the balance toward L1 and the GAN
    "percep0.1": ["--perceptual-weight", "0.1"],
    "percep0.03": ["--perceptual-weight", "0.03"],
    "percep0.01": ["--perceptual-weight", "0.01"],
    "realesrgan-losses": REALESRGAN_LOSSES,
    "unet": ["--discriminator", "unet", "--gan-type", "vanilla"],
    "realesrgan": [*REALESRGAN_LOSSES, "--discriminator", "unet", "--gan-type", "vanilla"],
    "ldl": ["--artifact-weight", "1"],
    "crop128-b1": ["--hr-size", "128", "--batch-size", "1"],
    "crop32-b16": ["--hr-size", "32", "--batch-size", "16"],
    "tail4": ["--train-blocks", "4"],
}


def realsr(*args: str, log: Path) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "realsr"), *args]
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def row_flags(name: str) -> list[str]:
    """A row by name, or several joined by '+' (their flags in order; later ones win)."""
    flags: list[str] = []
    parts = name.split("+")
    if parts[0] in PRESET_ROWS:  # a shipped preset, and what the other parts change in it
        flags, parts = ["--preset", parts[0]], parts[1:]
    for part in parts:
        if part.startswith("it"):  # it800: the iteration count
            flags += ["--iterations", part[2:], "--val-every", part[2:], "--save-every", part[2:]]
        else:
            flags += ROWS[part]
    return flags


def train_row(work: Path, sweep: Path, run: str, name: str, seed: int, budget: tuple[int, int, int], log: Path) -> tuple[Path, dict]:
    its, batch, size = budget
    out = sweep / f"{name}_s{seed}"
    model = sweep / f"g_{name}_s{seed}.pth"
    if not model.exists():
        row = row_flags(name)
        if row[:1] == ["--preset"]:  # a preset as the product ships it: its own budget and recipe
            flags = [*row, "--seed", str(seed), "--log-every", "50"]
        else:
            flags = [
                "--preset",
                "finetune",
                "--iterations",
                str(its),
                "--batch-size",
                str(batch),
                "--hr-size",
                str(size),
                "--workers",
                "1",
                "--val-every",
                str(its),
                "--save-every",
                str(its),
                "--seed",
                str(seed),
                "--log-every",
                "25",
                *BASE,
                *row,
            ]
        realsr("train", str(work / run), "--out", str(out), "--runtime", "local", "--auto-resume", *flags, log=log)
        model.write_bytes((out / "models" / "net_g_latest.pth").read_bytes())
    summary = json.loads((out / "summary.json").read_text())
    settings = json.loads((out / "train.json").read_text()).get("settings", {})
    return model, {"seconds": summary["seconds"], "iterations": settings.get("iterations"), "val": summary.get("validation")}


def evaluate(work: Path, sweep: Path, spec: str, label: str, log: Path) -> list[dict]:
    out = sweep / f"eval_{label}"
    if not (out / "results.csv").exists():
        realsr("evaluate", "--lr", str(work / "test" / "lr"), "--hr", str(work / "test" / "hr"), "--model", spec, "--out", str(out), log=log)
    return [r for r in csv.DictReader((out / "results.csv").open()) if r["model"] != "bicubic"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a realworld_x4.py work folder (its kernelgan run and test set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="base", help=f"comma-separated rows ({', '.join(ROWS)}), '+' to combine, itN for N iterations")
    ap.add_argument("--run", default="kernelgan", help="the degrade run in WORK to train on (kernelgan: the product's; oracle: the true kernels)")
    ap.add_argument("--sweep", type=Path, help="where rows go (default WORK/sweep)")
    ap.add_argument("--blends", default="", help="comma-separated ALPHAs: also score `realsr blend realesrgan-x4plus ROW ALPHA` for each row")
    ap.add_argument("--budget", default="400,4,64", help="iterations,batch,hr px every row starts from (default: realworld_x4's cpu-long fine-tune)")
    args = ap.parse_args()
    budget = tuple(int(x) for x in args.budget.split(","))
    work = args.work
    sweep = args.sweep or work / "sweep"
    log = sweep / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    x4 = {r["image"]: r for r in evaluate(work, sweep, "realesrgan-x4plus", "x4plus", log)}
    mean = lambda rows, c: float(np.mean([float(r[c]) for r in rows]))  # noqa: E731
    ref = {c: mean(list(x4.values()), c) for c in ("psnr_y", "ssim_y", "lpips")}
    lines = [
        (
            f"| row (flags on the finetune preset, {budget[0]} it of {budget[1]} x {budget[2]} px) | minutes | PSNR-Y | SSIM-Y | LPIPS | LPIPS vs x4plus | "
            f"PSNR-Y vs x4plus | better than x4plus on |"
        ),
        "|---|---|---|---|---|---|---|---|",
        f"| Real-ESRGAN x4plus (released) | - | {ref['psnr_y']:.2f} | {ref['ssim_y']:.4f} | {ref['lpips']:.4f} | - | - | - |",
    ]
    for name in filter(None, args.rows.split(",")):
        t = time.perf_counter()
        model, info = train_row(work, sweep, args.run, name, args.seed, budget, log)
        flags = " ".join(row_flags(name)) or "(none)"
        specs = [(name, model)]
        for a in filter(None, args.blends.split(",")):  # x4plus -> the row, weight by weight (`realsr blend`)
            out = sweep / f"g_{name}_s{args.seed}_blend{a}.pth"
            if not out.exists():
                realsr("blend", "realesrgan-x4plus", str(model), a, "-o", str(out), log=log)
            specs.append((f"{name} blend {a}", out))
        for label, spec in specs:
            rows = evaluate(work, sweep, str(spec), f"{label.replace(' ', '_')}_s{args.seed}", log)
            m = {c: mean(rows, c) for c in ("psnr_y", "ssim_y", "lpips")}
            wins = sum(float(r["lpips"]) < float(x4[r["image"]]["lpips"]) for r in rows)
            d_lpips, d_psnr = 100 * (m["lpips"] / ref["lpips"] - 1), m["psnr_y"] - ref["psnr_y"]
            lines.append(
                (
                    f"| {label}: `{flags}` | {info['seconds'] / 60:.1f} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {m['lpips']:.4f} | {d_lpips:+.1f} % | "
                    f"{d_psnr:+.2f} dB | {wins} of {len(rows)} |"
                )
            )
            print(lines[-1], flush=True)
            with open(ROOT / "bench" / "results" / "recipe_sweep.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "work": str(work),
                            "run": args.run,
                            "seed": args.seed,
                            "row": label,
                            "flags": flags,
                            "budget": budget,
                            **m,
                            "x4plus": ref,
                            "lpips_vs_x4plus_pct": round(d_lpips, 2),
                            "psnr_vs_x4plus_db": round(d_psnr, 3),
                            "wins": wins,
                            "images": len(rows),
                            "train_seconds": info["seconds"],
                            "wall_seconds": round(time.perf_counter() - t, 1),
                            "val": info["val"],
                            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                            "load": os.getloadavg(),
                        }
                    )
                    + "\n"
                )
    table = "\n".join(lines) + "\n"
    (sweep / f"table_s{args.seed}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
