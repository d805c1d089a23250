"""train-flow's driver: G and D on a degrade-flow run's clean HR, degraded on the fly, with
validation and resumable checkpoints.

`train(spec)` is the one entry: the CLI, the Prefect task and the demo call it. It sets up
(`steps.train_setup`: everything that can refuse the run is checked before the first
iteration), resumes from the newest complete state, runs the loop, and records
(`steps.train_report`). Checkpoints follow BasicSR's layout (`storage.train_checkpoints`); a killed run
resumed with `resume='auto'` ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from realsr.models.devices import resolve_device, training_precision, use_compute_threads
from realsr.models.discriminators import DiscriminatorConfig
from realsr.models.rrdbnet import RRDBConfig
from realsr.models.training import LossWeights, Schedule, Trainer, train_tail
from realsr.steps.train_data import DataConfig, DegradedCrops, TrainingDataError, batches, run_scale, training_images, validation_crops
from realsr.steps.train_device import device_batches, where_to_degrade
from realsr.steps.train_heic import choose_heic_quality, is_heic, with_heic_quality
from realsr.steps.train_report import LOSS_VALUES, RunRecords, write_validation_set
from realsr.steps.train_setup import build_d, build_generator, build_perceptual, changed_settings, claim_train_dir, comparable, vgg19_path
from realsr.storage.atomic import write_json
from realsr.storage.images import read_image
from realsr.storage.run_dir import RunDir
from realsr.storage.train_checkpoints import MODELS, newest_complete, prune_checkpoints, save_checkpoint

Log = Callable[[str], None]


@dataclass(frozen=True)
class Networks:
    """G (a checkpoint to start from, else the shape of a new RRDBNet) and D.

    The train-flow specs declare no defaults: `flows.train_settings` (the presets) holds every
    value, its bounds and meaning, and `TrainSettings.spec()` builds these by keyword."""

    init: str | None
    g_feat: int
    g_blocks: int
    g_grow: int
    discriminator: str  # D's architecture: patchgan, vgg128 or unet
    d_feat: int
    d_init: str | None  # D's starting weights: a file in BasicSR's layout or a released name; None: from scratch

    def g_shape(self, scale: int) -> RRDBConfig:
        return RRDBConfig(scale=scale, num_feat=self.g_feat, num_block=self.g_blocks, num_grow_ch=self.g_grow)

    @property
    def d(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(arch=self.discriminator, num_feat=self.d_feat)


@dataclass(frozen=True)
class Recipe:
    """How long and how G and D learn."""

    iterations: int
    batch_size: int
    warmup: int  # L1-only iterations when training from scratch
    losses: LossWeights
    schedule: Schedule
    ema_decay: float
    vgg19_weights: Path | None
    perceptual_layers: dict[str, float]  # VGG19 layer -> weight
    train_blocks: int  # G learns only its last N RRDBs and the upsampler; 0: all of G


@dataclass(frozen=True)
class Cadence:
    """What is held out, and how often the run logs, validates and saves."""

    val_crops: int  # validation crops, from as many held-out photos as they need; 0: no validation
    val_images: int  # photos held out; 0: as many as the crops need (at most a quarter)
    val_every: int  # iterations between validations (and best-checkpoint choices)
    save_every: int  # iterations between resumable checkpoints
    keep_checkpoints: int  # older numbered checkpoints are deleted
    log_every: int  # iterations between loss lines
    lpips_alexnet: Path | None  # the AlexNet trunk for LPIPS; None: the verified `alexnet` weights


@dataclass(frozen=True)
class TrainSpec:
    """A training run (`flows.train_settings.TrainSettings.spec()` builds it; its fields say what
    each value means). `settings` is the resolved settings as JSON: stored with the run, and
    compared when it is resumed."""

    run_dir: Path
    out: Path
    data: DataConfig  # scale None: the run's own, read from its folder by `set_up`
    nets: Networks
    recipe: Recipe
    cadence: Cadence
    resume: str  # no, auto or require
    seed: int
    device: str
    precision: str  # auto: bf16 autocast on CUDA and bf16-capable CPUs (models/devices.py)
    workers: int
    degrade_on: str  # auto, loader or device (`steps.train_device.where_to_degrade`)
    settings: dict


@dataclass
class Session:
    """A set-up run: its data, networks, trainer and records, at iteration `start`."""

    out: Path
    scale: int
    data: DegradedCrops
    train_images: list
    held: list
    val: list
    notes: list[str]
    g: torch.nn.Module
    g_desc: str
    d: torch.nn.Module
    trainer: Trainer
    device: torch.device
    amp: torch.dtype | None
    precision: str  # what runs and why, for the log
    vgg19_file: Path | None
    start: int = 0
    d_desc: str = ""  # D's architecture and where its weights started, for the log
    degrade_on: str = "loader"  # where training LR are made: loader or device


def set_up(spec: TrainSpec) -> Session:
    """Read the run, build G, D and the losses, claim the folder (in that order: a refusal leaves
    no folder behind)."""
    run = RunDir(Path(spec.run_dir))
    scale = run_scale(run)
    c = spec.data
    found = training_images(run, c.hr_size, spec.cadence.val_crops, spec.cadence.val_images, c.seed)  # checks hr_size against the scale
    train_images, held, notes = found.train, found.held, found.notes
    data = DegradedCrops(run, train_images, replace(c, scale=scale))
    if c.jpeg == "auto" and any(is_heic(im.source) for im in train_images + [h.image for h in held]):
        quality, why = choose_heic_quality(data, train_images, c.seed, lambda p: read_image(p).rgb)
        notes.append(why)
        train_images, held = with_heic_quality(train_images, quality), [replace(h, image=with_heic_quality([h.image], quality)[0]) for h in held]
        data.images = train_images
    if c.noise and not data.noise_count:
        notes.append(
            f"the noise bank {run.noise} is EMPTY: training LR gets no noise (rerun degrade with --noise-rule adaptive, or pass --no-noise to silence this)"
        )
    val = validation_crops(data, held)
    r = spec.recipe
    vgg19_file = vgg19_path(r.vgg19_weights) if r.losses.perceptual else None
    perceptual = build_perceptual(vgg19_file, r.perceptual_layers) if vgg19_file else None
    g, g_desc = build_generator(spec.nets.init, spec.nets.g_shape(scale), spec.seed)
    try:
        learning = train_tail(g, r.train_blocks)
    except ValueError as e:
        raise TrainingDataError(f"train_blocks: {e}") from None
    if r.train_blocks:
        g_desc += f"; learning its last {r.train_blocks} RRDBs and the upsampler ({learning / 1e6:.2f} M parameters)"
    torch.manual_seed(spec.seed + 1)
    d, d_desc = build_d(spec.nets.d, spec.nets.d_init)  # before the claim: a d_init that does not load refuses the run
    out = claim_train_dir(Path(spec.out), spec.settings, spec.resume)
    device = resolve_device(spec.device)
    threads = use_compute_threads()
    amp, precision = training_precision(device, spec.precision)
    if device.type == "cpu":
        precision += f"; {threads} CPU threads (OMP_NUM_THREADS sets another count)"
    for net in (g, d, perceptual):
        if net is not None:
            net.to(device)
    if channels_last(device, amp):
        for net in (g, d, perceptual):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    trainer = Trainer(g, d, perceptual, r.losses, r.schedule, r.ema_decay, device, amp)
    degrade_on, why = where_to_degrade(spec.degrade_on, device)
    precision += f"; {why}"
    return Session(
        out, scale, data, train_images, held, val, notes, g, g_desc, d, trainer, device, amp, precision, vgg19_file, d_desc=d_desc, degrade_on=degrade_on
    )


def channels_last(device: torch.device, amp: torch.dtype | None) -> bool:
    """NHWC where it pays: on CUDA, and on a CPU under bf16 autocast (oneDNN's bf16 convolutions
    run NHWC natively: 2.13 -> 2.00 s a finetune step here, BENCHMARKS.md). fp32 on a CPU stays
    NCHW: its gain measured between -9 % and +13 % from run to run, and fp32 runs keep their numbers."""
    return device.type == "cuda" or amp is not None


def resume(session: Session, spec: TrainSpec, log: Log) -> None:
    """Continue from the newest complete state in the folder (resume auto or require)."""
    found = newest_complete(session.out, log) if spec.resume != "no" else None
    if spec.resume == "require" and found is None:
        raise TrainingDataError(f"{session.out}: no complete training state to resume (every state or its weights failed to load, listed above)")
    if found is None:
        return
    session.start, (state, g_params, ema_params, d_params) = found
    session.g.load_state_dict(g_params, strict=True)
    session.trainer.ema.net.load_state_dict(ema_params, strict=True)
    session.d.load_state_dict(d_params, strict=True)
    session.trainer.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    if changed := changed_settings(spec.settings, state["meta"].get("settings", {})):
        session.notes.append(f"resumed with other settings than the run was started with: {', '.join(changed)}")


def loop(session: Session, spec: TrainSpec, records: RunRecords, lpips_fn, log: Log, bar: bool, on_iteration) -> None:
    """Iterations start+1 .. the target: a step each, with loss rows, validation and checkpoints
    at their cadence (and all three at the last iteration)."""
    from tqdm import tqdm

    s, r, c, total = session, spec.recipe, spec.cadence, spec.recipe.iterations
    warmup = 0 if spec.nets.init else r.warmup
    meta = {"settings": comparable(spec.settings), "scale": s.scale, "g": s.g_desc, "d": spec.nets.d.as_dict()}
    window: list[dict] = []
    t_window = time.perf_counter()
    progress = tqdm(total=total, initial=s.start, unit="it", disable=None if bar else True, leave=False)
    on_device = s.degrade_on == "device"
    feed = (
        device_batches(s.data, r.batch_size, s.start, total, spec.workers, s.device)
        if on_device
        else batches(s.data, r.batch_size, s.start, total, spec.workers)
    )
    with progress, feed as data:
        for it, (lr, hr) in enumerate(data, s.start + 1):
            lr, hr = lr.to(s.device, non_blocking=True), hr.to(s.device, non_blocking=True)
            if channels_last(s.device, s.amp):
                lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
            logs = s.trainer.step(
                lr, hr, warmup=it <= warmup, iteration=None if spec.nets.init else it
            )  # fine-tuning: the EMA starts as a trained model, no ramp
            window.append(logs)
            progress.update(1)
            if it % c.log_every == 0 or it == total:
                secs = time.perf_counter() - t_window
                row = {
                    "iter": it,
                    "stage": "warmup" if it <= warmup else "gan",
                    "lr_g": f"{s.trainer.opt_g.param_groups[0]['lr']:.3g}",
                    "seconds": round(secs, 3),
                }
                row.update({k: round(float(np.mean([w[k] for w in window if k in w])), 6) for k in LOSS_VALUES if any(k in w for w in window)})
                records.losses(row, it)
                eta = secs / len(window) * (total - it)
                log(
                    f"iter {it}/{total} ({row['stage']}): "
                    + ", ".join(f"{k} {row[k]:.4g}" for k in LOSS_VALUES if k in row)
                    + f"; {len(window) / secs:.2f} it/s, ETA {eta / 60:.1f} min"
                )
                window, t_window = [], time.perf_counter()
            if s.val and (it % c.val_every == 0 or it == total):
                records.validation(it, s.trainer.ema.net, s.g, s.val, s.scale, s.device, lpips_fn)
            if it % c.save_every == 0 or it == total:
                save_checkpoint(s.out, it, s.g, s.trainer.ema.net, s.d, s.trainer.state_dict(), meta, records.g_meta)
                prune_checkpoints(s.out, c.keep_checkpoints)
            if on_iteration:
                on_iteration(it, logs)


def train(spec: TrainSpec, log: Log = print, bar: bool = True, on_iteration: Callable[[int, dict], None] | None = None) -> dict:
    """Train (or fine-tune) as `spec` says; returns the run's summary (also in summary.json)."""
    t_start = time.perf_counter()
    s = set_up(spec)
    resume(s, spec, log)
    r = spec.recipe
    warmup = 0 if spec.nets.init else r.warmup
    log(f"{s.g_desc}; D {s.d_desc}; device {s.device}, precision {s.precision}" + (f"; VGG19 {s.vgg19_file}" if s.vgg19_file else ""))
    log(
        (
            f"{len(s.train_images)} training images, {len(s.val)} validation crops from {len(s.held)} held-out photos; iterations "
            f"{s.start + 1}..{r.iterations} (warm-up L1 to {warmup}), batch {r.batch_size} of {spec.data.hr_size} px"
        )
    )
    for n in s.notes:
        log(f"NOTE: {n}")
    lpips_fn = _lpips(spec.cadence.lpips_alexnet) if s.val else None
    records = RunRecords(s.out, s.start, log, generator_meta(spec.nets.init, s.scale))
    if val_dir := write_validation_set(s.out, s.val):
        log(f"validation crops (held-out photos, degraded as training degrades): {val_dir}/lr, {val_dir}/hr")
    try:
        if s.start == 0 and s.val:
            records.validation(0, s.trainer.ema.net, s.g, s.val, s.scale, s.device, lpips_fn)  # the starting point's figures
        loop(s, spec, records, lpips_fn, log, bar, on_iteration)
    finally:
        records.close()
    summary = {
        "out": str(s.out),
        "iterations": r.iterations,
        "resumed_from": s.start,
        "device": str(s.device),
        "precision": "bf16" if s.amp else "fp32",
        "threads": torch.get_num_threads(),
        "degrade_on": s.degrade_on,
        "generator": s.g_desc,
        "discriminator": s.d_desc,
        "vgg19": str(s.vgg19_file) if s.vgg19_file else None,
        "training_images": len(s.train_images),
        "held_out_images": len(s.held),
        "validation_crops": len(s.val),
        "best": records.best,
        "validation": records.val_rows[-1] if records.val_rows else None,
        "latest": str(s.out / MODELS / "net_g_latest.pth"),
        "notes": s.notes,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    write_json(s.out / "summary.json", summary)
    return summary


def generator_meta(init: str | None, scale: int) -> dict:
    """What realsr records in its generator files: the init (a released name, or the file's
    absolute path), so `realsr upscale --blend` finds what to blend with."""
    if init and Path(init).expanduser().exists():
        init = str(Path(init).expanduser().resolve())
    return {"init": init or "", "scale": scale, "tool": "realsr-pipeline"}


def _lpips(alexnet: Path | None):
    from realsr.steps.evaluate import lpips_metric

    return lpips_metric(alexnet)
