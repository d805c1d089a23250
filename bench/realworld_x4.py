"""The proof of issue 24: on a camera with ground truth, which training data and which model win.

A camera (`CAMERAS`): an anisotropic lens blur, downscaling, signal-dependent sensor noise and
JPEG. It makes the *source photos* the pipeline receives by shooting training scenes at x2, and
the *test set* by shooting held-out scenes at x4 (their HR is the truth). The scenes are the
clean HR images of `../shared/data`: Set14 less four, `photos/`, the three `camera_photos` sky
photos and four crops of `flower.png` (each also flipped at the GPU scale); the test scenes are
Set5 and the four Set14 images held out, centre-cropped. Neither set is in the other, and no
choice of the product was tuned on them.

Rows, one test set, every model through `realsr evaluate` (PSNR-Y, SSIM-Y, LPIPS-alex, seconds):
- bicubic; the released RealSR-DF2K, RealSR-DF2K-JPEG and Real-ESRGAN x4plus;
- trained from scratch, one budget each, on: bicubic pairs; bicubic + noise (Track 1);
  KernelGAN + noise (Track 2); KernelGAN + noise + JPEG (the product); the camera's true kernel +
  noise + JPEG (the kernel oracle: the noise is the bank's, as the product extracts it);
- Real-ESRGAN x4plus fine-tuned, one budget, on the product's degradations and the oracle's;
- the blend of the product's fine-tune with x4plus (`realsr blend`), alpha 0.25, 0.5, 0.75.
Also the x2 kernel error (total variation to the true kernel) of KernelGAN's and bicubic's.

    OMP_NUM_THREADS=2 .venv/bin/python bench/realworld_x4.py --camera mild --work runs/rw-mild --scale cpu [--seed 1]

Everything goes through the `realsr` command as a user runs it; reruns reuse what is done.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

from realsr.models.degradation import degrade  # noqa: E402
from realsr.models.kernels import analytic_x4, centre_kernel  # noqa: E402
from realsr.models.synthetic import gaussian_kernel  # noqa: E402
from realsr.steps.degrade_kernels import kernel_set  # noqa: E402
from realsr.storage.banks import open_kernel_bank, write_kernel_bank  # noqa: E402


@dataclass(frozen=True)
class Camera:
    sigma: tuple[float, float, float]  # the x2 lens blur: Gaussian sigma_x, sigma_y (px), angle (rad)
    noise: tuple[float, float]  # sensor noise variance a + b * level (0-255 scale)
    quality: int  # JPEG

    @property
    def k2(self) -> np.ndarray:
        return gaussian_kernel(*self.sigma, 13)

    def kernel(self, scale: int) -> np.ndarray:
        return self.k2 if scale == 2 else analytic_x4(self.k2)

    def shoot(self, scene: np.ndarray, scale: int, rng: np.random.Generator) -> bytes:
        """uint8 RGB scene (sides multiples of `scale`) -> the camera's JPEG file."""
        x = degrade(scene.astype(np.float32) / 255, self.kernel(scale), scale) * 255
        x = x + rng.standard_normal(x.shape) * np.sqrt(self.noise[0] + self.noise[1] * np.clip(x, 0, 255))
        u8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.quality])[1].tobytes()


CAMERAS = {
    "mild": Camera((1.1, 0.7, np.pi / 8), (1.5, 0.01), 90),  # a good compact: light blur, low noise, light JPEG
    "harsh": Camera((2.0, 1.0, -np.pi / 4), (4.0, 0.06), 70),  # a cheap phone: strong oblique blur, noisy, JPEG 70
}

# budgets: (KernelGAN steps, seeds), from-scratch (preset, iterations, batch, hr px; the first third L1 only), fine-tune (iterations, batch, hr px)
SCALES = {
    "cpu": {"kernelgan": (500, 1), "scratch": ("cpu-small", 300, 4, 64), "finetune": (40, 4, 64), "flips": False, "test_crop": 256},
    # the product's KernelGAN default and 10x the fine-tune: what the CPU gives in about 30 min per camera
    "cpu-long": {"kernelgan": (1000, 3), "scratch": ("cpu-small", 300, 4, 64), "finetune": (400, 4, 64), "flips": False, "test_crop": 256},
    "gpu": {"kernelgan": (1000, 3), "scratch": ("cpu-small", 5000, 16, 128), "finetune": (1250, 8, 128), "flips": True, "test_crop": 512},
}
TEST_FROM_SET14 = ("barbara", "bridge", "coastguard", "comic")
ALPHAS = (0.25, 0.5, 0.75)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: unreadable")
    return img[..., ::-1]


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes())


def _fit(img: np.ndarray, multiple: int) -> np.ndarray:
    return img[: img.shape[0] // multiple * multiple, : img.shape[1] // multiple * multiple]


def training_scenes(flips: bool) -> list[tuple[str, np.ndarray]]:
    scenes = [(p.stem, read_rgb(p)) for p in sorted((DATA / "hr" / "set14").glob("*.png")) if p.stem not in TEST_FROM_SET14]
    scenes += [(p.stem, read_rgb(p)) for p in sorted((DATA / "photos").glob("*.jpg"))]
    scenes += [(p.stem, read_rgb(p)) for p in sorted((DATA / "camera_photos").glob("*_srgb8.png"))]
    flower = read_rgb(DATA / "camera_photos" / "flower.png")
    h, w = flower.shape[0] // 2, flower.shape[1] // 2
    scenes += [(f"flower_{i}{j}", flower[i * h : (i + 1) * h, j * w : (j + 1) * w]) for i in (0, 1) for j in (0, 1)]
    if flips:
        scenes += [(f"{n}_t", np.ascontiguousarray(np.rot90(s[:, ::-1]))) for n, s in scenes]
    return scenes


def test_scenes(crop: int) -> list[tuple[str, np.ndarray]]:
    paths = sorted((DATA / "hr" / "set5").glob("*.png")) + [DATA / "hr" / "set14" / f"{n}.png" for n in TEST_FROM_SET14]
    out = []
    for p in paths:
        img = read_rgb(p)
        h, w = min(crop, img.shape[0]), min(crop, img.shape[1])
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append((p.stem, _fit(img[y : y + h, x : x + w], 4)))
    return out


def make_sets(cam: Camera, work: Path, budget: dict, seed: int) -> tuple[Path, Path, Path]:
    """The source photos (x2) and the test set (x4 LR with its HR), each drawn from its own stream."""
    photos, lr, hr = work / "photos", work / "test" / "lr", work / "test" / "hr"
    rng = np.random.default_rng([seed, 1])
    for name, scene in training_scenes(budget["flips"]):
        photo = cam.shoot(_fit(scene, 2), 2, rng)  # drawn whether or not it is written: the same stream on a rerun
        out = photos / f"{name}.jpg"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(photo)  # the camera's own JPEG: degrade-flow reads its quality from the tables
    rng = np.random.default_rng([seed, 2])
    for name, scene in test_scenes(budget["test_crop"]):
        shot = cv2.imdecode(np.frombuffer(cam.shoot(scene, 4, rng), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        if not (lr / f"{name}.png").exists():
            write_png(hr / f"{name}.png", scene)
            write_png(lr / f"{name}.png", shot)
    return photos, lr, hr


def realsr(*args: str, log: Path | None = None) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "realsr"), *args]
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as f:
        subprocess.run(cmd, check=True, stdout=f if log else None, stderr=subprocess.STDOUT if log else None)


def oracle_bank(cam: Camera, path: Path) -> None:
    if not path.exists():
        sets = [kernel_set(s, [cam.kernel(s)], ["camera"], [""], ["true-camera"]) for s in (2, 4)]
        write_kernel_bank(path, sets, {"kernel_source": "true camera (benchmark oracle)"}, {2: {}, 4: {}})


def kernel_error(bank: Path, truth: np.ndarray) -> float:
    """Mean total variation (0..1) between the bank's valid x2 kernels and the truth, both centred."""
    _, sets = open_kernel_bank(bank)
    ks = sets[2]
    t = centre_kernel(truth)
    return float(np.mean([0.5 * np.abs(centre_kernel(ks.kernels[i].astype(np.float64)) - t).sum() for i in ks.valid_indices()]))


def train(run: Path, out: Path, log: Path, *flags: str) -> Path:
    model = out.parent / f"g_{out.name}.pth"  # not named like evaluate's own `bicubic` row
    if not model.exists():
        realsr("train", str(run), "--out", str(out), "--runtime", "local", "--auto-resume", "--workers", "1", *flags, log=log)
        model.write_bytes((out / "models" / "net_g_latest.pth").read_bytes())
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camera", choices=sorted(CAMERAS), default="mild")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="the camera's noise draws and every training seed")
    ap.add_argument("--skip", default="", help="comma-separated row groups not to train: scratch (those already trained are still reported), finetune, blend")
    args = ap.parse_args()
    cam, budget, work, seed = CAMERAS[args.camera], SCALES[args.scale], args.work, str(args.seed)
    skip = set(filter(None, args.skip.split(",")))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    t0 = time.perf_counter()
    photos, lr, hr = make_sets(cam, work, budget, args.seed)
    kg_steps, kg_seeds = budget["kernelgan"]
    oracle_bank(cam, work / "true_kernels.zarr")
    runs = {
        "bicubic": ["--kernels", "bicubic"],
        "kernelgan": ["--kernels", "kernelgan", "--kernelgan-iterations", str(kg_steps), "--kernelgan-seeds", str(kg_seeds)],
        "oracle": ["--kernels", f"bank:{work / 'true_kernels.zarr'}"],
    }
    seconds = {}
    for name, flags in runs.items():
        t = time.perf_counter()
        if not (work / name / "pairs" / "images.jsonl").exists():
            realsr("degrade", "--source", str(photos), "--out", str(work / name), "--scale", "4", "--pair-hr-size", "64", "--seed", seed, *flags, log=log)
        seconds[f"degrade {name}"] = round(time.perf_counter() - t, 1)
    models: dict[str, str] = {
        "realsr-df2k (released)": "realsr-df2k",
        "realsr-df2k-jpeg (released)": "realsr-df2k-jpeg",
        "realesrgan-x4plus (released)": "realesrgan-x4plus",
    }
    preset, its, batch, size = budget["scratch"]
    common = [
        "--iterations",
        str(its),
        "--batch-size",
        str(batch),
        "--hr-size",
        str(size),
        "--warmup",
        str(its // 3),
        "--val-every",
        str(its),
        "--save-every",
        str(its),
        "--seed",
        seed,
        "--log-every",
        "25",
    ]
    for label, run, flags in (
        ("scratch: bicubic", "bicubic", ["--no-noise", "--jpeg", "off"]),
        ("scratch: bicubic + noise (Track 1)", "bicubic", ["--jpeg", "off"]),
        ("scratch: KernelGAN + noise (Track 2)", "kernelgan", ["--jpeg", "off"]),
        ("scratch: KernelGAN + noise + JPEG (product)", "kernelgan", []),
        ("scratch: true kernel + noise + JPEG (oracle)", "oracle", []),
    ):
        out = work / "train" / label.split(": ")[1].split(" (")[0].replace(" + ", "+").replace(" ", "_")
        if "scratch" in skip and not (out.parent / f"g_{out.name}.pth").exists():
            continue  # skipped: rows already trained are still reported
        t = time.perf_counter()
        models[label] = str(train(work / run, out, log, "--preset", preset, *common, *flags))
        seconds[label] = round(time.perf_counter() - t, 1)
    f_its, f_batch, f_size = budget["finetune"]
    fcommon = [
        "--preset",
        "finetune",
        "--iterations",
        str(f_its),
        "--batch-size",
        str(f_batch),
        "--hr-size",
        str(f_size),
        "--val-every",
        str(f_its),
        "--save-every",
        str(f_its),
        "--seed",
        seed,
        "--log-every",
        "10",
    ]
    if "finetune" not in skip:
        for label, run in (("fine-tuned x4plus: product", "kernelgan"), ("fine-tuned x4plus: oracle", "oracle")):
            t = time.perf_counter()
            models[label] = str(train(work / run, work / "train" / f"finetune_{run}", log, *fcommon))
            seconds[label] = round(time.perf_counter() - t, 1)
        if "blend" not in skip:
            for a in ALPHAS:
                out = work / f"blend_{a}.pth"
                if not out.exists():
                    realsr("blend", "realesrgan-x4plus", models["fine-tuned x4plus: product"], str(a), "-o", str(out), log=log)
                models[f"blend {a} (x4plus -> product fine-tune)"] = str(out)
    realsr("evaluate", "--lr", str(lr), "--hr", str(hr), *[x for m in models.values() for x in ("--model", m)], "--out", str(work / "eval"), log=log)
    if "fine-tuned x4plus: product" in models:
        sheet(work, lr, hr, [models["realesrgan-x4plus (released)"], models["fine-tuned x4plus: product"], str(work / "blend_0.5.pth")], args.camera, log)
    table = report(work, models, cam, args, seconds, time.perf_counter() - t0)
    print(table)


def sheet(work: Path, lr: Path, hr: Path, specs: list[str], camera: str, log: Path) -> None:
    """LR / bicubic / x4plus / fine-tuned / blend 0.5 / HR crops of four test images, into bench/results."""
    few = work / "sheet_lr"
    few.mkdir(exist_ok=True)
    for p in sorted(lr.glob("*.png"))[:4]:
        (few / p.name).write_bytes(p.read_bytes())
    realsr("evaluate", "--lr", str(few), "--hr", str(hr), *[x for m in specs for x in ("--model", m)], "--out", str(work / "sheet"), log=log)
    (ROOT / "bench" / "results" / f"realworld_x4_{camera}_sheet.png").write_bytes((work / "sheet" / "contact_sheet.png").read_bytes())


def report(work: Path, models: dict[str, str], cam: Camera, args, seconds: dict, total: float) -> str:
    """The table (markdown) from evaluate's per-image rows, in the order of the rows above."""
    rows = list(csv.DictReader((work / "eval" / "results.csv").open()))
    by_label = {}
    for label, spec in [("bicubic", "bicubic"), *models.items()]:
        stem = Path(spec).stem if spec.endswith(".pth") else spec
        got = [r for r in rows if r["model"] in (stem, spec)]
        if got:
            by_label[label] = got
    lines = ["| model | PSNR-Y dB | SSIM-Y | LPIPS-alex | s per image | LPIPS better than x4plus on |", "|---|---|---|---|---|---|"]
    x4 = {r["image"]: float(r["lpips"]) for r in by_label.get("realesrgan-x4plus (released)", [])}
    for label, got in by_label.items():
        mean = lambda c: np.mean([float(r[c]) for r in got])  # noqa: E731
        wins = sum(float(r["lpips"]) < x4.get(r["image"], -1) for r in got)
        lines.append(f"| {label} | {mean('psnr_y'):.2f} | {mean('ssim_y'):.4f} | {mean('lpips'):.4f} | {mean('seconds'):.2f} | {wins} of {len(got)} |")
    errs = {n: kernel_error(work / n / "kernels.zarr", cam.k2) for n in ("bicubic", "kernelgan") if (work / n / "kernels.zarr").exists()}
    meta = {
        "camera": args.camera,
        "scale": args.scale,
        "seed": args.seed,
        "x2 kernel error (TV)": {k: round(v, 4) for k, v in errs.items()},
        "seconds": seconds,
        "total_seconds": round(total),
    }
    text = "\n".join(lines) + "\n\n" + json.dumps(meta, indent=1) + "\n"
    (work / "table.md").write_text(text)
    with open(ROOT / "bench" / "results" / "realworld_x4.jsonl", "a") as f:
        f.write(json.dumps({**meta, "table": lines[2:], "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load": os.getloadavg()}) + "\n")
    return text


if __name__ == "__main__":
    main()
