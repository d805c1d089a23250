"""train-flow: ESRGAN training or fine-tuning on the camera's own degradations.

    degrade-flow run (clean HR, kernels.zarr, noise.zarr) ─> one GPU task: G (RRDB) + D (PatchGAN),
    LR degraded on the fly ─> BasicSR checkpoints (params + params_ema), validation, samples
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from realsr.flows.train_settings import TrainSettings
from realsr.tasks import train as t


def summary_markdown(s: dict) -> str:
    best = s.get("best") or {}
    lines = [
        f"# train-flow: {s['out']}",
        "",
        f"- {s['generator']}; {s['training_images']} training images; validation: {s['validation_crops']} crops of {s['held_out_images']} held-out photos (`{Path(s['out']) / 'val'}`)",
        f"- iterations {s['resumed_from'] + 1}..{s['iterations']} on {s['device']} ({s['precision']}), {s['seconds']:.0f} s",
        f"- latest: `{s['latest']}`",
        *([f"- best: iteration {best['iter']}, PSNR-Y {best['psnr_y']:.2f} dB, LPIPS {best['lpips']:.4f} (`{Path(s['out']) / 'models' / 'net_g_best.pth'}`)"] if best else []),
        f"- losses: `{Path(s['out']) / 'losses.csv'}`, validation: `{Path(s['out']) / 'validation.csv'}`, samples: `{Path(s['out']) / 'samples'}`",
        *[f"- NOTE: {n}" for n in s["notes"]],
    ]
    return "\n".join(lines) + "\n"


@flow(name="train-flow", log_prints=False)
def train_flow(settings: TrainSettings) -> dict:
    log = get_run_logger()
    log.info("settings: " + ", ".join(f"{k}={v}" for k, v in settings.model_dump(mode="json").items()))
    summary = t.train_generator(settings)
    try:
        create_markdown_artifact(summary_markdown(summary), key="train-summary", description="train-flow run summary")
        val = Path(summary["out"]) / "validation.csv"
        if val.exists():
            import csv

            with val.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                create_table_artifact(rows, key="train-validation", description="validation (EMA generator) per iteration")
    except Exception as e:  # artifacts are a view; the files are the results
        log.warning(f"artifacts not published: {e}")
    return summary
