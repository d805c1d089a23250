"""`realsr demo`: the whole method on the embedded default, in minutes on 2 cores (2.3 min measured, BENCHMARKS.md).

sample camera photos -> realsr-pipeline's `demo` preset: degrade-flow (KernelGAN kernels, noise
bank, pairs) -> train-flow (a short fine-tune of Real-ESRGAN x4plus on the camera's
degradations) -> evaluate-flow (bicubic, the released model and the trained one on train-flow's
validation crops: held-out photos degraded with their own kernels, noise and JPEG quality).
The preset's budget (flows/pipeline_settings.py) is a demonstration's, not a recipe's.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_PHOTOS = 8


def write_samples(out: Path, count: int, seed: int) -> list[Path]:
    """`count` seeded synthetic camera photos (blur, sensor noise, JPEG 90): `realsr sample`."""
    import cv2

    from realsr.models.degradation import to_uint8
    from realsr.models.synthetic import camera_photo
    from realsr.storage.atomic import write_bytes

    paths = []
    for i in range(count):
        ok, buf = cv2.imencode(".jpg", to_uint8(camera_photo(seed * 1000 + i)[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        path = Path(out) / f"sample_{i:02d}.jpg"
        write_bytes(path, buf.tobytes())
        paths.append(path)
    return paths


def add_parser(sub) -> None:
    from realsr.flows.cli_degrade import runtime_flags

    m = sub.add_parser("demo", help="sample photos, then the pipeline's demo preset: degrade, fine-tune a released model, evaluate")
    m.add_argument("run_dir", nargs="?", type=Path, default=Path("runs/demo"))
    runtime_flags(m)


def run(args) -> int:
    return run_demo(args.run_dir, args.workers, args.dask_address)


def run_demo(root: Path, workers: int | None = None, address: str | None = None) -> int:
    """Sample photos, then realsr-pipeline's `demo` preset on them."""
    from realsr.flows.cli_pipeline import preflight, preflight_weights, print_result, run_pipeline
    from realsr.flows.pipeline_settings import PipelineSettings
    from realsr.steps.inspect import inspect_bank

    t0 = time.perf_counter()
    root = Path(root)
    source = root / "sample_photos"
    settings = PipelineSettings(source=source, out=root / "pipeline", preset="demo")
    preflight_weights(settings)  # first: a machine that cannot have them fails in seconds, having written nothing
    write_samples(source, DEMO_PHOTOS, 0)
    preflight(settings)
    t_weights = time.perf_counter() - t0
    print(f"weights ready in {t_weights:.1f} s")
    summary = run_pipeline(settings, workers, address)
    print(inspect_bank(Path(summary["run_dir"]) / "kernels.zarr"))
    print(inspect_bank(Path(summary["run_dir"]) / "noise.zarr"))
    print_result(summary)
    print(f"training samples: {Path(summary['train_dir']) / 'samples'}")
    total = time.perf_counter() - t0
    print(f"demo finished in {(total - t_weights) / 60:.1f} min (weights {t_weights:.0f} s before that)")
    from realsr.flows.exit_codes import outcome

    return outcome(summary["degrade"]["processed"], len(summary.get("failures", [])))
