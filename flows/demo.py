"""`realsr demo`: the whole method on the embedded default, in about 15 minutes on 2 cores.

sample camera photos -> degrade-flow (KernelGAN kernels, noise bank, pairs) -> inspect the banks
-> train-flow (a short fine-tune of Real-ESRGAN x4plus on the camera's degradations) ->
evaluate-flow (bicubic, the released model and the fine-tuned one on train-flow's validation
crops: held-out photos degraded with their own kernels, noise and JPEG quality).

The budget is a demonstration's, not a recipe's: KernelGAN runs DEMO_KERNELGAN_ITERATIONS steps
with one seed (the product's default: three) and the fine-tune DEMO_ITERATIONS (BENCHMARKS.md has what longer runs give).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

DEMO_KERNELGAN_ITERATIONS = 1000
DEMO_KERNELGAN_SEEDS = 1  # the product's default is 3 (3x the time); one seed keeps the demo short
DEMO_ITERATIONS = 60  # 5.3 s each on 2 cores (batch 4 of 64 px, x4plus): the demo stays under 15 min
DEMO_PHOTOS = 8
VAL_CROPS = 8  # validation crops (of held-out photos): also the evaluation set


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


def run_demo(root: Path, workers: int | None = None, address: str | None = None) -> int:
    from realsr.flows.cli_degrade import print_result, run_degrade
    from realsr.flows.evaluate import evaluate_flow
    from realsr.flows.runtime import prefect_api
    from realsr.flows.settings import DegradeSettings, EvaluateSettings
    from realsr.flows.train import summary_markdown, train_flow
    from realsr.flows.train_settings import TrainSettings
    from realsr.flows.cli_weights import DEMO_NEEDS, fetch
    from realsr.steps.inspect import inspect_bank

    t0 = time.perf_counter()
    missing = fetch(list(DEMO_NEEDS))  # before any work: a machine that cannot have them fails in seconds
    if missing:
        for line in missing:
            print(f"error: {line}", file=sys.stderr)
        return 2
    t_weights = time.perf_counter() - t0
    print(f"weights ready in {t_weights:.1f} s ({', '.join(DEMO_NEEDS)})")
    root = Path(root)
    source, run_dir = root / "sample_photos", root / "run"
    write_samples(source, DEMO_PHOTOS, 0)
    degrade = DegradeSettings(source=source, out=run_dir, kernels="kernelgan", kernelgan_iterations=DEMO_KERNELGAN_ITERATIONS, kernelgan_seeds=DEMO_KERNELGAN_SEEDS)
    init = "realesrgan-x4plus"
    train = TrainSettings.from_preset(
        "finetune", run_dir=run_dir, out=root / "train", init=init, iterations=DEMO_ITERATIONS, batch_size=4, hr_size=64,
        val_crops=VAL_CROPS, val_every=DEMO_ITERATIONS, save_every=DEMO_ITERATIONS // 2, log_every=10, workers=1,
        resume="auto",
    )
    with prefect_api():  # one embedded API for the three flows
        summary = run_degrade(degrade, workers, address)
        print_result(summary)
        print(inspect_bank(run_dir / "kernels.zarr"))
        print(inspect_bank(run_dir / "noise.zarr"))
        trained = train_flow(train)
        print(summary_markdown(trained))
        eval_set = Path(trained["out"]) / "val"
        fine_tuned = root / "eval" / "fine_tuned.pth"  # a stable name for the table's row
        fine_tuned.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained["latest"], fine_tuned)
        models = [init, str(fine_tuned)]
        result = evaluate_flow(EvaluateSettings(lr=eval_set / "lr", hr=eval_set / "hr", models=models, out=root / "eval"))
    print(f"evaluate-flow on the {trained['validation_crops']} validation crops of {trained['held_out_images']} held-out photos:")
    print((root / "eval" / "results.md").read_text())
    print(f"upscaled images: {root / 'eval' / 'sr'}/<model>/; contact sheet: {result['sheet']}; training samples: {root / 'train' / 'samples'}")
    total = time.perf_counter() - t0
    print(f"demo finished in {(total - t_weights) / 60:.1f} min (weights {t_weights:.0f} s before that)")
    return 0
