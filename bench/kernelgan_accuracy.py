"""KernelGAN against the official code (sefibk/KernelGAN), side by side on one synthetic set.

DIV2KRK-style cases, made from images no KernelGAN setting here was tuned on (Set5's baby,
OpenCV's sample photos, the camera photos and Real-ESRGAN's inputs in shared/data, and crops of
the 3.4 MP flower photo; not Set14): each HR crop is blurred by its own random anisotropic
Gaussian (axis widths, angle), made non-Gaussian by up to 25 % uniform multiplicative noise on
its taps, downscaled (x2: 13x13 kernel; x4: 25x25 kernel of its own, not derived from an x2 one)
in this project's convention (`models.degradation.degrade`), given noise of sigma 1/255 and
written as an 8-bit PNG. Every method reads that PNG and nothing else.

Methods, per case:
- `official`: the official code, run unmodified (`bench/official_kernelgan.py`, device patched at
  run time), 3000 iterations, its own post-processing; x4 cases with its `--X4` analytic kernel;
- `ours`: `models.kernelgan.estimate_kernels`, the product's path (x4 from x2 analytically);
- `fused`: the same KernelGAN as one network of slots per step (`models.kernelgan_fused`), rows
  named `<label>-fused`: against `ours` at the same settings, it must agree within the seed spread;
- `official-fkp`: the official KernelGAN-FKP (JingyunLiang/FKP, `bench/official_fkp.py`, run
  the same way), its defaults: 1000 iterations, x4 4000 with `--X4`, both with its x2 prior;
- `bicubic`: the bicubic kernel of the scale, the floor every estimate should beat.
The official kernels are centred half a pixel off the middle (x4: 1.5 px), where this project
applies that shift when it uses a kernel: they are moved back by the same Lanczos-4 taps
`degrade` applies (`to_pixel_centred`) and cut to 13x13 / 25x25, so all methods are measured in
one frame. FKP's prior only makes kernels centred (s-1)/2 px *before* the middle (its
`kernel_shift`: (size - s) / 2), so its kernels are moved forward by as much (`fkp_to_pixel_centred`).
Metrics against the true kernel:
- kernel error: L2 distance at the best integer alignment (shifts -2..2), lower is better;
  `kernel_err_noshift` / `kernel_psnr_noshift`: the same without that alignment;
- kernel PSNR: 20 log10(1 / RMSE) of the same aligned kernels (FKP's definition);
- LR PSNR: the HR degraded with the estimate against the HR degraded with the true kernel, dB.
Every result is appended to bench/results/kernelgan_official.jsonl with commit and machine as it
comes; a rerun skips what is there. One command runs both at both scales:

    .venv/bin/python bench/kernelgan_accuracy.py --official ~/src/KernelGAN

`--shard 0/2` and `--shard 1/2` in two shells split the cases between two cores.
    .venv/bin/python bench/kernelgan_accuracy.py --table
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "kernelgan_official.jsonl"
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
MACHINE = f"{platform.machine()} {os.cpu_count()} cores, CPU"
NOISE_SIGMA = 1 / 255

# (name, file, crop size, top, left): HR crops; sizes are multiples of 4
_FLOWER = "camera_photos/flower.png"
X2_SOURCES = [
    ("baby", "hr/set5/baby.png", 512, 0, 0),
    ("building", "photos/building.jpg", 512, 44, 178),
    ("fruits", "photos/fruits.jpg", 480, 0, 16),
    ("home", "photos/home.jpg", 384, 0, 64),
    ("butterfly", "photos/butterfly.jpg", 352, 2, 70),
    ("tmshre", "camera_photos/tmshre_riaphotographs_srgb8.png", 500, 0, 0),
    ("cvo9xd", "camera_photos/cvo9xd_keong_macan_srgb8.png", 500, 0, 0),
    ("u76c0g", "camera_photos/u76c0g_bliznaca_srgb8.png", 500, 0, 0),
    ("hdr_room", "camera_photos/hdr_room_16bit.png", 448, 0, 114),
    ("ost009", "odd_inputs/OST_009.png", 448, 96, 0),
    *[(f"flower{i}", _FLOWER, 512, top, left) for i, (top, left) in enumerate([(0, 0), (0, 880), (0, 1756), (500, 440), (500, 1320), (1000, 0)])],
]
X4_SOURCES = [
    *[(f"flower{i}", _FLOWER, 640, top, left) for i, (top, left) in enumerate([(0, 0), (0, 814), (0, 1628), (872, 0), (872, 814), (872, 1628)])],
    ("building", "photos/building.jpg", 600, 0, 134),
    ("baby", "hr/set5/baby.png", 512, 0, 0),
]


def true_kernel(scale: int, rng: np.random.Generator) -> np.ndarray:
    """A random anisotropic Gaussian with up to 25 % multiplicative noise on its taps, centred."""
    from realsr.models.kernels import KERNEL_SIZE, centre_kernel
    from realsr.models.synthetic import gaussian_kernel

    lo, hi = (0.6, 2.5) if scale == 2 else (1.2, 5.0)  # x4 widths ~ sqrt(5) x the x2 ones
    k = gaussian_kernel(rng.uniform(lo, hi), rng.uniform(lo, hi), rng.uniform(0, np.pi), KERNEL_SIZE[scale])
    k = k * rng.uniform(0.75, 1.25, k.shape)
    return centre_kernel(k)


def make_case(scale: int, index: int, folder: Path, shared: bool = False) -> dict:
    """HR crop, true kernel and the LR PNG of one case (written once, reused by every method).

    `shared`: the camera set, where every image has the same true kernel (one camera's optics).
    """
    import cv2

    from realsr.models.degradation import degrade

    name, file, size, top, left = (X2_SOURCES if scale == 2 else X4_SOURCES)[index]
    rng = np.random.default_rng(10_000 * scale + index)
    img = cv2.imread(str(DATA / file), cv2.IMREAD_COLOR)  # 16-bit and gray come out 8-bit BGR
    hr = np.ascontiguousarray(img[top : top + size, left : left + size, ::-1]).astype(np.float32) / 255
    if hr.shape[:2] != (size, size):
        raise ValueError(f"{file}: crop {size} at ({top}, {left}) leaves the image")
    k = true_kernel(scale, np.random.default_rng(777) if shared else rng)
    lr = degrade(hr, k, scale)
    lr = np.clip(lr + rng.normal(0, NOISE_SIGMA, lr.shape), 0, 1)
    path = folder / f"x{scale}{'s' if shared else ''}_{index:02d}_{name}.png"
    if not path.exists():
        cv2.imwrite(str(path), np.round(lr[..., ::-1] * 255).astype(np.uint8))
    return {"scale": scale, "index": index, "name": name, "hr": hr, "kernel": k, "lr_path": path}


def to_pixel_centred(kernel: np.ndarray, scale: int) -> np.ndarray:
    """An official kernel (centre (s-1)/2 px past the middle) in this project's convention.

    `aligned_kernel` moves a kernel +0.5 px with Lanczos-4 taps; read from the other side, the
    same taps move the reference's back by 0.5 px; x4's extra pixel is a plain index.
    """
    from realsr.models.kernels import KERNEL_SIZE, aligned_kernel

    k, _ = aligned_kernel(kernel, 2)  # the taps, on both axes (7 px larger)
    centre = k.shape[0] // 2 - 1 + scale // 2  # the old centre (middle + (s-1)/2) + 3.5, the taps' centre
    r = KERNEL_SIZE[scale] // 2
    k = np.pad(k, r)[centre : centre + 2 * r + 1, centre : centre + 2 * r + 1]
    return k / k.sum()


def fkp_to_pixel_centred(kernel: np.ndarray, scale: int) -> np.ndarray:
    """An official FKP kernel (centre (s-1)/2 px before the middle) in this project's convention.

    Its mirror image is centred (s-1)/2 px past the middle, as KernelGAN's: moved back there and
    mirrored again, it is moved forward by the same taps.
    """
    return to_pixel_centred(np.asarray(kernel, np.float64)[::-1, ::-1], scale)[::-1, ::-1].copy()


def aligned_difference(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """est - true at the integer shift (-2..2) that makes them closest."""
    diffs = [np.roll(est, (dy, dx), (0, 1)) - true for dy in range(-2, 3) for dx in range(-2, 3)]
    return min(diffs, key=lambda d: float(np.sum(d * d)))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-20))


def figures(case: dict, k_est: np.ndarray) -> dict:
    from realsr.models.degradation import degrade

    d = aligned_difference(k_est, case["kernel"])
    s, hr = case["scale"], case["hr"]
    return {
        "kernel_err": float(np.linalg.norm(d)),
        "kernel_psnr": psnr(d, 0.0),
        "kernel_err_noshift": float(np.linalg.norm(k_est - case["kernel"])),
        "kernel_psnr_noshift": psnr(k_est, case["kernel"]),
        "lr_psnr": psnr(degrade(hr, k_est, s), degrade(hr, case["kernel"], s)),
    }


def run_official(case: dict, repo: Path, threads: int) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "official_kernelgan.py"),
            "--repo",
            str(repo),
            "--image",
            str(case["lr_path"]),
            "--out",
            tmp,
            "--threads",
            str(threads),
        ]
        log = Path(tmp) / "log"
        with log.open("w") as f:
            done = subprocess.run(cmd + (["--x4"] if case["scale"] == 4 else []), stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"official KernelGAN failed on {case['lr_path'].name}:\n{log.read_text()[-3000:]}")
        k = np.load(Path(tmp) / f"kernel_x{case['scale']}.npy")
        return to_pixel_centred(k, case["scale"]), float((Path(tmp) / "seconds").read_text())


def run_official_fkp(case: dict, repo: Path, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The official KernelGAN-FKP's kernel in this project's frame, as it returned it, and its seconds."""
    s = case["scale"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "official_fkp.py"),
            "--repo",
            str(repo),
            "--image",
            str(case["lr_path"]),
            "--out",
            tmp,
            "--threads",
            str(threads),
        ]
        log = Path(tmp) / "log"
        with log.open("w") as f:
            done = subprocess.run(cmd + (["--x4"] if s == 4 else []), stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"official KernelGAN-FKP failed on {case['lr_path'].name}:\n{log.read_text()[-3000:]}")
        k = np.load(Path(tmp) / f"kernel_x{s}.npy")
        return fkp_to_pixel_centred(k, s), k, float((Path(tmp) / "seconds").read_text())


def run_ours(cases: list[dict], iterations: int, threads: int, overrides: dict, prior_spec: str | None = None, fused: bool = False) -> tuple[list, float]:
    """The product's estimate for every case, trained together; x4 kernels analytically.
    `prior_spec`: KernelGAN-FKP with that kernel prior ('builtin' or a file), as `--kernels kernelgan-fkp`;
    `fused`: the fused engine (`models.kernelgan_fused`) instead of the per-image one."""
    import torch

    from realsr.models.kernelgan import KernelGANConfig, estimate_kernels
    from realsr.models.kernelgan_post import x4_base
    from realsr.models.kernels import KERNEL_SIZE, analytic_x4, bicubic_kernel
    from realsr.storage.images import read_image
    from realsr.storage.kernel_prior_file import load

    torch.set_num_threads(threads)
    images = [read_image(c["lr_path"]).rgb for c in cases]
    t = time.perf_counter()
    prior = load(prior_spec)[0] if prior_spec else None
    cfg = KernelGANConfig(**{"iterations": iterations, "seed": 0, **overrides})
    if fused:
        from realsr.models.kernelgan_fused import estimate_kernels_fused

        ests = estimate_kernels_fused(images, cfg)
    else:
        ests = estimate_kernels(images, cfg, prior=prior)
    secs = (time.perf_counter() - t) / len(cases)
    out = []
    for c, e in zip(cases, ests):
        c["estimate"] = e
        if c["scale"] == 2:
            out.append(e.kernel if e.ok else bicubic_kernel(2))  # a failed estimate scores as bicubic
        else:  # as the product's bank: x4 composes the unthresholded x2 kernel
            out.append(analytic_x4(x4_base(e.raw)) if e.ok else bicubic_kernel(4, KERNEL_SIZE[4]))
    return out, secs


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def save(path: Path, row: dict) -> None:
    row = {**row, "commit": COMMIT, "machine": MACHINE, "date": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # locked: shards of one run append to the same file
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(row) + "\n")
    print(
        (
            f"x{row['scale']} {row['index']:2d} {row['name']:10s} {row['method']:10s} {row['seconds']:6.0f} s  error {row['kernel_err']:.4f}  kernel "
            f"{row['kernel_psnr']:.2f} dB  LR {row['lr_psnr']:.2f} dB"
        ),
        flush=True,
    )


def table(rows: list[dict], scale: int, n: int) -> None:
    """Means per method: on the cases the official code has done, then on every case each has."""
    cases = {}
    for r in rows:
        if r["scale"] == scale and r["index"] < n:
            cases.setdefault(r["method"], {})[r["index"]] = r  # the newest row of a (method, case) wins
    official, bic = cases.get("official", {}), cases.get("bicubic", {})
    for title, subset in ((f"the {len(official)} cases the official code has done", sorted(official)), ("every case each method has", None)):
        if subset == []:
            continue
        print(f"\nx{scale}, {title} (of {n}):")
        print("| method | cases | s per image | kernel error | kernel PSNR dB | LR PSNR dB | LR PSNR above official | below bicubic |")
        print("|---|---|---|---|---|---|---|---|")
        for method in sorted(cases, key=lambda m: (m != "bicubic", m != "official", m)):
            got = [cases[method][i] for i in (subset if subset is not None else sorted(cases[method])) if i in cases[method]]
            if not got:
                continue
            mean = {k: np.mean([g[k] for g in got]) for k in ("seconds", "kernel_err", "kernel_psnr", "lr_psnr")}
            vs = [g for g in got if g["index"] in official]
            wins = f"{sum(g['lr_psnr'] > official[g['index']]['lr_psnr'] for g in vs)} of {len(vs)}" if method != "official" else "-"
            below = sum(g["lr_psnr"] < bic[g["index"]]["lr_psnr"] for g in got if g["index"] in bic) if method != "bicubic" else "-"
            secs = f"{mean['seconds']:.1f}" if method != "bicubic" else "-"
            print(f"| {method} | {len(got)} | {secs} | {mean['kernel_err']:.4f} | {mean['kernel_psnr']:.2f} | {mean['lr_psnr']:.2f} | {wins} | {below} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, help="checkout of sefibk/KernelGAN (needs scipy, matplotlib, tqdm: pip install -e '.[bench]')")
    ap.add_argument("--official-fkp", type=Path, help="checkout of JingyunLiang/FKP (its KernelGANFKP and data/pretrained_models/FKP_x2.pt)")
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--x2-cases", type=int, default=len(X2_SOURCES))
    ap.add_argument("--x4-cases", type=int, default=len(X4_SOURCES))
    ap.add_argument("--methods", default="bicubic,ours,official", help="any of bicubic, ours, fused, official, official-fkp")
    ap.add_argument("--label", default="ours", help="name of this product's rows (to keep variants apart)")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--config", type=json.loads, default={}, help="KernelGANConfig fields for this product's rows, as JSON (ablations)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per method")
    ap.add_argument("--prior", default=None, help="this product's rows with KernelGAN-FKP on this kernel prior ('builtin' or a .pt file)")
    ap.add_argument("--cases-dir", type=Path, default=ROOT / "bench" / "results" / "kernelgan_cases")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--shard", default="0/1", help="K/N: only the cases whose index is K modulo N (run N at once, one per core)")
    ap.add_argument("--table", action="store_true", help="only print the tables of the results kept so far")
    ap.add_argument(
        "--camera", action="store_true", help="the camera set instead: every x2 image has one true kernel; adds the consensus kernel of each method's estimates"
    )
    args = ap.parse_args()
    from realsr.models.kernels import bicubic_kernel, consensus_kernel

    if args.camera:
        args.scales = "2"
        args.results = args.results.with_name("kernelgan_camera.jsonl") if args.results == RESULTS else args.results

    args.cases_dir.mkdir(parents=True, exist_ok=True)
    scales = [int(s) for s in args.scales.split(",")]
    counts = {2: args.x2_cases, 4: args.x4_cases}
    methods = args.methods.split(",")
    if not args.table:
        for scale in scales:
            shard, shards = (int(v) for v in args.shard.split("/"))
            cases = [make_case(scale, i, args.cases_dir, shared=args.camera) for i in range(counts[scale]) if i % shards == shard]
            have = {(r["scale"], r["index"], r["method"]) for r in load(args.results)}
            todo = lambda m: [c for c in cases if (scale, c["index"], m) not in have]  # noqa: E731
            if "bicubic" in methods:
                for c in todo("bicubic"):
                    save(
                        args.results,
                        {"scale": scale, "index": c["index"], "name": c["name"], "method": "bicubic", "seconds": 0.0, **figures(c, bicubic_kernel(scale))},
                    )
            for label, fused in ((args.label, False), (f"{args.label}-fused", True)):
                if (("fused" if fused else "ours") not in methods) or not (mine := todo(label)):
                    continue
                if fused and args.prior:
                    sys.exit("the fused engine is plain KernelGAN's: drop --prior for the fused rows")
                kernels, secs = run_ours(mine, args.iterations, args.threads, args.config, args.prior, fused)
                for c, k in zip(mine, kernels):
                    e = c["estimate"]
                    extra = {
                        "kernel": np.round(k, 7).tolist(),
                        "raw": np.round(e.raw, 9).tolist(),
                        "losses": e.losses,
                        "diverged_at": e.diverged_at,
                        "problem": e.problem,
                        "seed": e.seed,
                        "steps": e.iterations,
                    }
                    if e.runs:  # each seed's raw kernel (None: failed), for studies of the consensus
                        extra["seed_raws"] = [np.round(r.raw, 9).tolist() if r.ok else None for r in e.runs]
                        if e.ok:
                            from realsr.models.kernelgan import KernelGANConfig
                            from realsr.models.kernelgan_post import seed_spread

                            extra["spread"] = seed_spread(e, 0 if args.prior else KernelGANConfig().n_filtering)
                    save(args.results, {"scale": scale, "index": c["index"], "name": c["name"], "method": label, "seconds": secs, **figures(c, k), **extra})
            if "official" in methods:
                if args.official is None:
                    sys.exit("--official PATH (a checkout of sefibk/KernelGAN) is needed for the official rows")
                for c in todo("official"):
                    k, secs = run_official(c, args.official, args.threads)
                    save(
                        args.results,
                        {
                            "scale": scale,
                            "index": c["index"],
                            "name": c["name"],
                            "method": "official",
                            "seconds": secs,
                            **figures(c, k),
                            "kernel": np.round(k, 7).tolist(),
                        },
                    )
            if "official-fkp" in methods:
                if args.official_fkp is None:
                    sys.exit("--official-fkp PATH (a checkout of JingyunLiang/FKP) is needed for the official-fkp rows")
                for c in todo("official-fkp"):
                    k, raw, secs = run_official_fkp(c, args.official_fkp, args.threads)
                    save(
                        args.results,
                        {
                            "scale": scale,
                            "index": c["index"],
                            "name": c["name"],
                            "method": "official-fkp",
                            "seconds": secs,
                            **figures(c, k),
                            "kernel": np.round(k, 7).tolist(),
                            "raw": np.round(raw, 9).tolist(),
                        },
                    )
            if args.camera:  # one kernel for the camera from each method's per-image estimates
                rows = load(args.results)
                for method in sorted({r["method"] for r in rows if "kernel" in r and not r["method"].startswith(("consensus", "mean"))}):
                    got = [r for r in rows if r["method"] == method and r["index"] < counts[scale]]
                    kernels = [np.array(r["kernel"]) for r in got]
                    for name, k in ((f"consensus of {method} ({len(got)})", consensus_kernel), (f"mean of {method} ({len(got)})", lambda ks: np.mean(ks, 0))):
                        if len(got) < 2 or any(r["method"] == name for r in rows):
                            continue
                        k = k(kernels)
                        for c in cases:
                            save(
                                args.results,
                                {
                                    "scale": scale,
                                    "index": c["index"],
                                    "name": c["name"],
                                    "method": name,
                                    "seconds": 0.0,
                                    **figures(c, k),
                                    "kernel": np.round(k, 7).tolist(),
                                },
                            )
    rows = load(args.results)
    for scale in scales:
        table(rows, scale, counts[scale])


if __name__ == "__main__":
    main()
