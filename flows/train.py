"""train-flow: ESRGAN training or fine-tuning on the camera's own degradations.

degrade-flow run (clean HR, kernels.zarr, noise.zarr) ─> one GPU task: G (RRDB) + D (PatchGAN),
LR degraded on the fly ─> BasicSR checkpoints (params + params_ema), validation, samples
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger

from realsr.flows.artifacts import image_markdown, publish, settings_or_refusal
from realsr.flows.train_settings import PAPER, TrainSettings
from realsr.steps.mirrors import staged
from realsr.storage.atomic import write_json
from realsr.tasks import train as t


def summary_markdown(s: dict) -> str:
    best = s.get("best") or {}
    lines = [
        f"# train-flow: {s['out']}",
        "",
        (
            f"- {s['generator']}; D {s.get('discriminator') or '?'}; {s['training_images']} training images; validation: {s['validation_crops']} crops of "
            f"{s['held_out_images']} held-out photos (`{Path(s['out']) / 'val'}`)"
        ),
        f"- iterations {s['resumed_from'] + 1}..{s['iterations']} on {s['device']} ({s['precision']}), {s['seconds']:.0f} s",
        f"- latest: `{s['latest']}`",
        *(
            [f"- best: iteration {best['iter']}, PSNR-Y {best['psnr_y']:.2f} dB, LPIPS {best['lpips']:.4f} (`{Path(s['out']) / 'models' / 'net_g_best.pth'}`)"]
            if best
            else []
        ),
        f"- losses: `{Path(s['out']) / 'losses.csv'}`, validation: `{Path(s['out']) / 'validation.csv'}`, samples: `{Path(s['out']) / 'samples'}`",
        *[f"- NOTE: {n}" for n in s["notes"]],
    ]
    return "\n".join(lines) + "\n"


def staged_training(settings: TrainSettings, train: Callable[[TrainSettings], dict], say: Callable[[str], None]) -> tuple[dict, dict]:
    """`train` on local folders, for settings whose run and training folders may be URLs (through
    the mirrors of steps/mirrors.py; the run folder's is the one degrade wrote). Returns the
    summary naming the URLs, and the one naming the local copies."""
    with staged(settings.run_dir, settings.out, say, source_role="run", out_role="train") as local:
        summary = train(settings.model_copy(update={"run_dir": local.source, "out": local.out}))
        shown = local.rebase(summary)
        if shown != summary:  # the folder at a URL names its files there, not in this machine's mirror
            write_json(Path(local.out) / "summary.json", shown)
        return shown, summary


def settings_markdown(settings: TrainSettings) -> str:
    """The resolved settings, each marked as the preset's or this run's: what the run will do."""
    values, sources = settings.model_dump(mode="json"), settings.sources()
    rows = [f"| {k} | `{v}` | {sources[k] if k in PAPER else 'set'} |" for k, v in values.items()]
    return "\n".join([f"# train-flow settings: preset {settings.preset}", "", "| setting | value | from |", "|---|---|---|", *rows]) + "\n"


@flow(name="train-flow", log_prints=False, validate_parameters=False)
def train_flow(settings: TrainSettings) -> dict:
    settings, refusal = settings_or_refusal(TrainSettings, settings, log := get_run_logger())
    if refusal is not None:
        return refusal
    log.info("settings: " + ", ".join(f"{k}={v}" for k, v in settings.model_dump(mode="json").items()))
    publish(log, settings_markdown(settings), "train-settings", "train-flow's resolved settings (the preset's values and this run's)")
    shown, summary = staged_training(settings, t.train_generator, log.info)
    samples = sorted((Path(summary["out"]) / "samples").glob("iter_*.png"))
    rows = []
    val = Path(summary["out"]) / "validation.csv"
    if val.exists():
        with val.open(newline="") as f:
            rows = list(csv.DictReader(f))
    picture = image_markdown(samples[-1] if samples else None, f"validation samples at {samples[-1].stem if samples else ''} (LR / SR / HR)")
    publish(
        log,
        summary_markdown(shown) + "\n" + picture,
        "train-summary",
        "train-flow run summary and validation samples",
        rows,
        "train-validation",
        "validation (EMA generator) per iteration",
    )
    return shown
