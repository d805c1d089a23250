"""A first quality check of fine-tuning: Real-ESRGAN x4plus adapted to one synthetic camera.

The camera: a fixed anisotropic lens blur (Gaussian 1.4 x 0.9 px at 30 degrees), signal-dependent
sensor noise (variance 3 + 0.03 x level, 0-255 scale), JPEG quality 75.
- Its "photos" (degrade-flow's sources): the camera applied to the clean images of
  `../shared/data` (Set14, photos/, camera_photos/), at their own resolution.
- The held-out test: Set5, each HR bicubic-downscaled by 4 (a scene at the camera's resolution),
  then through the camera; the HR is the ground truth. Neither set is in the other.
Steps: `realsr degrade` on the photos, `realsr train --preset finetune` for a CPU budget, then
`realsr evaluate` with bicubic, both released models and the fine-tuned one on the test set.

    OMP_NUM_THREADS=2 .venv/bin/python bench/finetune_quality.py --work runs/fq --iterations 200
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from realsr.models.synthetic import gaussian_kernel  # noqa: E402

BLUR = gaussian_kernel(1.4, 0.9, np.pi / 6, 13)
QUALITY = 75


def camera(rgb_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera's blur, noise and JPEG on an 8-bit RGB image; returns the decoded JPEG (RGB)."""
    x = cv2.filter2D(rgb_u8.astype(np.float32), -1, BLUR.astype(np.float32), borderType=cv2.BORDER_REFLECT)
    x = x + rng.normal(0, 1, x.shape) * np.sqrt(3 + 0.03 * np.clip(x, 0, 255))
    u8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def make_sets(work: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)  # the photos' draws; the test set has its own stream below
    photos, lr, hr = work / "photos", work / "test" / "lr", work / "test" / "hr"
    for d in (photos, lr, hr):
        d.mkdir(parents=True, exist_ok=True)
    sources = sorted((DATA / "hr" / "set14").glob("*.png")) + sorted((DATA / "photos").glob("*.jpg")) + sorted((DATA / "camera_photos").glob("*.png"))
    for p in sources:
        out = photos / f"{p.stem}.jpg"
        if not out.exists():
            img = read_rgb(p)
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(camera(img, rng)[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
            out.write_bytes(buf.tobytes())
    rng = np.random.default_rng(0)  # the same test set whether or not the photos were made now
    for p in sorted((DATA / "hr" / "set5").glob("*.png")):
        img = read_rgb(p)
        h, w = (img.shape[0] // 4) * 4, (img.shape[1] // 4) * 4
        img = img[:h, :w]
        cv2.imwrite(str(hr / f"{p.stem}.png"), img[..., ::-1])
        small = cv2.resize(img, (w // 4, h // 4), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(lr / f"{p.stem}.png"), camera(small, rng)[..., ::-1])
    return photos, lr, hr


def realsr(*args: str) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "realsr"), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "fq")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--kernels", default="bicubic", help="degrade's --kernels (kernelgan costs ~2 min per photo here)")
    ap.add_argument("--lr-g", default=None)
    ap.add_argument("--label", default="finetune")
    args = ap.parse_args()
    t0 = time.perf_counter()
    photos, lr, hr = make_sets(args.work)
    run = args.work / "run"
    realsr("degrade", "--source", str(photos), "--out", str(run), "--kernels", args.kernels, "--pair-hr-size", "128")
    train = args.work / args.label
    extra = ["--lr-g", args.lr_g] if args.lr_g else []
    realsr(
        "train",
        str(run),
        "--out",
        str(train),
        "--preset",
        "finetune",
        "--iterations",
        str(args.iterations),
        "--batch-size",
        "4",
        "--hr-size",
        "64",
        "--val-every",
        str(args.iterations),
        "--save-every",
        str(args.iterations),
        "--val-crops",
        "4",
        "--log-every",
        "10",
        "--workers",
        "1",
        "--auto-resume",
        *extra,
    )
    model = args.work / f"{args.label}.pth"
    model.write_bytes((train / "models" / "net_g_latest.pth").read_bytes())
    realsr(
        "evaluate",
        "--lr",
        str(lr),
        "--hr",
        str(hr),
        "--model",
        "realesrgan-x4plus",
        "--model",
        "realsr-df2k",
        "--model",
        str(model),
        "--out",
        str(args.work / "eval"),
    )
    print(f"total {time.perf_counter() - t0:.0f} s; table: {args.work / 'eval' / 'results.md'}")


if __name__ == "__main__":
    main()
