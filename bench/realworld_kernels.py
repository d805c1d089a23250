"""How close KernelGAN's x2 kernels come to a camera's true kernel, by budget, on the cameras of
`bench/realworld_x4.py` (the same source photos: the same scenes, camera and seed).

For each camera and KernelGAN budget (steps x seeds) one `realsr degrade --kernels
kernelgan-camera` run gives each photo's kernel and the camera's consensus kernel; the table
gives the total variation (0..1) of each to the true kernel, beside the bicubic kernel's.

    OMP_NUM_THREADS=2 .venv/bin/python bench/realworld_kernels.py --work /tmp/rw-kernels \
        [--cameras mild,harsh] [--budgets 500x1,1000x3] [--seed 0] [--kernels kernelgan-fkp-camera]
    .venv/bin/python bench/realworld_kernels.py --cameras mild --score RUN/kernels.zarr   # one existing run's bank
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from realworld_x4 import CAMERAS, ROOT, SCALES, make_sets, realsr  # noqa: E402 (bench/ is the script's folder)

from realsr.models.kernels import bicubic_kernel, centre_kernel, consensus_kernel
from realsr.storage.banks import open_kernel_bank


def tv(k: np.ndarray, truth: np.ndarray) -> float:
    return float(0.5 * np.abs(centre_kernel(k.astype(np.float64)) - centre_kernel(truth)).sum())


def moments(k: np.ndarray) -> tuple[float, float, float]:
    """Second moments (xx, yy, xy) of a kernel in px^2: its width along each axis and its tilt."""
    k = np.asarray(k, np.float64) / np.sum(k)
    y, x = np.mgrid[: k.shape[0], : k.shape[1]]
    my, mx = (k * y).sum(), (k * x).sum()
    return float((k * (x - mx) ** 2).sum()), float((k * (y - my) ** 2).sum()), float((k * (x - mx) * (y - my)).sum())


def errors(bank: Path, truth: np.ndarray) -> dict:
    """Per-photo KernelGAN kernels (valid ones) and the camera consensus, against the truth. A bank
    of a per-photo run (`--kernels kernelgan`, `kernelgan-fkp`) gets the consensus its camera form
    would add (`consensus_kernel`, as `steps.degrade_kernels.kernelgan_sets`)."""
    _, sets = open_kernel_bank(bank)
    ks = sets[2]
    photos = [i for i in ks.valid_indices() if ks.method[i] in ("kernelgan", "kernelgan-fkp")]
    camera = [i for i in range(len(ks.method)) if ks.method[i] in ("kernelgan-camera", "kernelgan-fkp-camera")]
    cam = ks.kernels[camera[0]] if camera else consensus_kernel([ks.kernels[i] for i in photos])
    return {
        "photos": len(photos),
        "per_photo": [tv(ks.kernels[i], truth) for i in photos],
        "camera": tv(cam, truth),
        "moments_per_photo": np.mean([moments(ks.kernels[i]) for i in photos], axis=0).tolist(),
        "moments_camera": moments(cam),
        "spread": [float(ks.checks["spread"][i]) for i in photos] if "spread" in ks.checks else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="where the camera's photos and degrade runs go (not with --score)")
    ap.add_argument("--cameras", default="mild,harsh")
    ap.add_argument("--budgets", default="500x1,1000x3", help="KernelGAN steps x seeds, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernels", default="kernelgan-camera", help="the camera form of an estimator: kernelgan-camera or kernelgan-fkp-camera")
    ap.add_argument("--score", type=Path, help="only score this kernel bank of one camera's photos (e.g. a realworld_x4 run's), with --cameras NAME")
    args = ap.parse_args()
    if args.score:  # an existing run: the same photos (the camera, the seed), its own estimator
        e, truth = errors(args.score, CAMERAS[args.cameras].k2), CAMERAS[args.cameras].k2
        pp, bic = np.array(e["per_photo"]), tv(bicubic_kernel(2, 13), truth)
        fmt = lambda m: ", ".join(f"{v:.2f}" for v in m)  # noqa: E731
        spread = f"{np.nanmedian(e['spread']):.3f}" if e["spread"] else "-"
        print(
            f"| {args.cameras} | {args.score} | {e['photos']} | {pp.mean():.3f} | {np.median(pp):.3f} | {pp.max():.3f} | {int((pp < bic).sum())} of "
            f"{len(pp)} | {e['camera']:.3f} | {bic:.3f} | "
            f"{fmt(e['moments_per_photo'])} | {fmt(e['moments_camera'])} | {fmt(moments(truth))} | {spread} |"
        )
        return
    if args.work is None:
        ap.error("--work is needed (or --score BANK)")
    shape = ["| camera | KernelGAN | second moments xx, yy, xy (px^2): per-photo mean | camera consensus | true kernel |", "|---|---|---|---|---|"]
    rows = [
        "| camera | KernelGAN | photos | per-photo error mean | median | photos better than bicubic | camera consensus error | bicubic error | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.cameras.split(","):
        cam = CAMERAS[name]
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        photos, _, _ = make_sets(cam, work, SCALES["cpu"], args.seed)
        bic = tv(bicubic_kernel(2, 13), cam.k2)
        for budget in args.budgets.split(","):
            steps, seeds = budget.split("x")
            out = work / (f"kg_{budget}" if args.kernels == "kernelgan-camera" else f"{args.kernels}_{budget}")
            t = time.perf_counter()
            if not (out / "kernels.zarr").exists():
                realsr(
                    "degrade",
                    "--source",
                    str(photos),
                    "--out",
                    str(out),
                    "--scale",
                    "4",
                    "--pair-hr-size",
                    "64",
                    "--seed",
                    str(args.seed),
                    "--kernels",
                    args.kernels,
                    "--kernelgan-iterations",
                    steps,
                    "--kernelgan-seeds",
                    seeds,
                    log=work / "log.txt",
                )
                (out.parent / f"{out.name}.seconds").write_text(f"{time.perf_counter() - t:.1f}")
            seconds = float((out.parent / f"{out.name}.seconds").read_text()) if (out.parent / f"{out.name}.seconds").exists() else float("nan")
            e = errors(out / "kernels.zarr", cam.k2)
            pp = np.array(e["per_photo"])
            cons = f"{e['camera']:.3f}" if e["camera"] is not None else "-"
            rows.append(
                (
                    f"| {name} | {args.kernels}: {steps} steps x {seeds} | {e['photos']} | {pp.mean():.3f} | {np.median(pp):.3f} | {int((pp < bic).sum())} "
                    f"of {len(pp)} | {cons} | {bic:.3f} | {seconds:.0f} |"
                )
            )
            fmt = lambda m: ", ".join(f"{v:.2f}" for v in m) if m is not None else "-"  # noqa: E731
            shape.append(
                f"| {name} | {args.kernels}: {steps} steps x {seeds} | {fmt(e['moments_per_photo'])} | {fmt(e['moments_camera'])} | {fmt(moments(cam.k2))} |"
            )
            with open(ROOT / "bench" / "results" / "realworld_kernels.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "camera": name,
                            "kernels": args.kernels,
                            "budget": budget,
                            "seed": args.seed,
                            "bicubic": round(bic, 4),
                            "camera_consensus": e["camera"],
                            "per_photo": [round(x, 4) for x in e["per_photo"]],
                            "moments_per_photo": e["moments_per_photo"],
                            "moments_camera": e["moments_camera"],
                            "spread": e["spread"],
                            "seconds": round(seconds),
                            "date": time.strftime("%Y-%m-%d %H:%M"),
                        }
                    )
                    + "\n"
                )
    print("\n".join(rows) + "\n\n" + "\n".join(shape))


if __name__ == "__main__":
    main()
