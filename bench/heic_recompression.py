"""Which re-compression training picks for HEIC sources, against the quality they were written at.

Real photos (../shared/data/camera_photos by default) are written as HEIC by pillow-heif's x265 at
each quality of `--qualities`, as a phone at that setting would; each set goes through `realsr
degrade` (bicubic kernels: the choice is about compression) and then through training's measured
choice (steps/train_heic.py), exactly as `realsr train` makes it. Prints one row a quality: the
statistic of the sources, of uncompressed LR and of each candidate, and the choice.

    .venv/bin/python bench/heic_recompression.py            # rows to bench/results/heic_recompression.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

from PIL import Image

from realsr.flows.cli import main as realsr
from realsr.flows.train_settings import train_spec
from realsr.steps.train_data import DegradedCrops, training_images
from realsr.steps.train_heic import CANDIDATES, choose_heic_quality
from realsr.storage.images import read_image
from realsr.storage.run_dir import RunDir

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=HERE.parent.parent / "shared" / "data" / "camera_photos")
    ap.add_argument("--qualities", type=int, nargs="+", default=[20, 40, 60, 80, 95])
    ap.add_argument("--hr-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "heic_recompression.jsonl")
    args = ap.parse_args()
    import pillow_heif

    pillow_heif.register_heif_opener()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg") and "16bit" not in p.name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in args.qualities:
            src = Path(tmp) / f"heic_q{q}"
            src.mkdir()
            for p in photos:
                buf = io.BytesIO()
                Image.open(p).convert("RGB").save(buf, "HEIF", quality=q)
                (src / f"{p.stem}.heic").write_bytes(buf.getvalue())
            run = Path(tmp) / f"run_q{q}"
            assert realsr(["degrade", "--source", str(src), "--out", str(run), "--kernels", "bicubic", "--workers", "1"]) == 0
            found = training_images(RunDir(run), args.hr_size, 0)
            data = DegradedCrops(RunDir(run), found.train, train_spec(scale=4, hr_size=args.hr_size, seed=0).data)
            t0 = time.perf_counter()
            chosen, why = choose_heic_quality(data, found.train, 0, lambda p: read_image(p).rgb)
            rows.append({"written_at": q, "chosen": chosen, "why": why, "seconds": round(time.perf_counter() - t0, 2), "photos": [p.name for p in photos]})
    print(f"\n{len(photos)} photos of {args.photos}; candidates {CANDIDATES}; {platform.node()}\n")
    print("| written at quality | training re-compresses with | the measurement |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['written_at']} | {'none' if r['chosen'] is None else 'HEIC q' + str(r['chosen'])} | {r['why'].split(': ', 1)[1]} ({r['seconds']} s) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
