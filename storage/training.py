"""train-flow's steps: set up G, D and the data from a degrade-flow run, train, validate, save.

Everything that can refuse the run (the folder, the banks, the init checkpoint, the VGG19
weights) is checked before the first iteration. Checkpoints follow BasicSR's layout
(`storage.train_state`); a killed run resumed with `resume='auto'` ends with the same weights
as one never interrupted.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.devices import resolve_device
from models.discriminators import DiscriminatorConfig, build_discriminator
from models.losses import PerceptualLoss, vgg19_features
from models.metrics import psnr
from models.rrdbnet import RRDBConfig, RRDBNet
from models.tiling import upscale
from models.training import LossWeights, Schedule, Trainer
from storage.atomic import read_json, write_bytes, write_json
from storage.checkpoints import load_rrdb, save_generator
from storage.weights import WeightsError, require
from storage.images import write_png
from storage.run_dir import RunDir
from storage.train_data import DataConfig, DegradedCrops, TrainingDataError, loader, run_scale, training_images, validation_pairs
from storage.train_state import MODELS, newest_complete, prune_checkpoints, save_checkpoint, saved_iterations

MARKER = "train.json"
LOSS_COLUMNS = ["iter", "stage", "lr_g", "l_pix", "l_percep", "l_g_gan", "l_d", "d_real", "d_fake", "seconds"]
VAL_COLUMNS = ["iter", "psnr_y", "lpips", "pairs"]
Log = Callable[[str], None]


def claim_train_dir(out: Path, settings: dict, resume: str) -> Path:
    """Make `out` a training folder; refuse one that holds other files, or a run when not resuming."""
    out = check_train_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"tool": "realsr-pipeline", "kind": "train", "settings": settings})
    return out


def check_train_dir(out: Path, resume: str) -> Path:
    """What `claim_train_dir` refuses, checked without writing anything."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingDataError(f"training folder {out} is a file")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise TrainingDataError(f"{out} holds other files and is not a training folder (no {MARKER}); choose an empty or new folder")
        if resume == "no" and saved_iterations(out):
            raise TrainingDataError(f"{out} holds a training run (iteration {saved_iterations(out)[0]}); resume it (--auto-resume) or choose another folder")
    if resume == "require" and not saved_iterations(out):
        raise TrainingDataError(f"{out}: nothing to resume (no training_states/*.state)")
    return out


def vgg19_path(given: Path | None) -> Path:
    """The VGG19 file: the given one, else the verified `vgg19` weights (found or fetched)."""
    if given is not None:
        if not Path(given).is_file():
            raise TrainingDataError(f"vgg19_weights: {given} is not a file")
        return Path(given)
    try:
        return require("vgg19")
    except WeightsError as e:
        raise TrainingDataError(f"VGG19 weights for the perceptual loss: {e}") from None


def build_perceptual(given: Path | None) -> PerceptualLoss:
    path = vgg19_path(given)
    try:
        return PerceptualLoss(vgg19_features(path))
    except Exception as e:
        raise TrainingDataError(
            f"VGG19 weights for the perceptual loss could not be loaded from {path} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
            "pass --vgg19-weights FILE (torchvision's vgg19 or its features) or run `realsr weights fetch vgg19`"
        ) from None


PATH_SETTINGS = ("run_dir", "out", "init", "vgg19_weights", "lpips_alexnet")


def comparable(settings: dict) -> dict:
    """Settings with their paths made absolute, so `runs/a` and `/home/me/runs/a` compare equal
    (a name like `realesrgan-x4plus` that is no existing path stays as it is)."""
    out = dict(settings)
    for k in PATH_SETTINGS:
        if out.get(k) and (k != "init" or Path(out[k]).expanduser().exists()):
            out[k] = str(Path(out[k]).expanduser().resolve())
    return out


def build_generator(s, scale: int) -> tuple[torch.nn.Module, str]:
    if s.init:
        gen = load_rrdb(s.init, expect_scale=scale)
        return gen.model.train(), f"init from {gen.describe()}"
    torch.manual_seed(s.seed)
    cfg = RRDBConfig(scale=scale, num_feat=s.g_feat, num_block=s.g_blocks, num_grow_ch=s.g_grow)
    return RRDBNet(cfg), f"from scratch: RRDBNet {cfg.num_block} blocks, {cfg.num_feat} features, growth {cfg.num_grow_ch}, x{scale}"


def _csv_rows(path: Path, upto: int) -> list[dict]:
    """The rows of a log kept up to an iteration (a resumed run drops what it redoes)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["iter"]) <= upto]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    write_bytes(path, ("\n".join(lines) + "\n").encode(), durable=False)


def validate(net, pairs, scale: int, device, lpips_fn) -> tuple[dict, list[np.ndarray]]:
    """Mean PSNR-Y (crop border = scale) and LPIPS of `net` on the held-out pairs, and its SR images."""
    net.eval()
    srs, p, lp = [], [], []
    for _, lr, hr in pairs:
        sr = upscale(net, lr, scale, device=device)
        srs.append(sr)
        p.append(psnr(sr, hr, scale, y=True))
        lp.append(lpips_fn(sr, hr) if lpips_fn else float("nan"))
    return {"psnr_y": round(float(np.mean(p)), 4), "lpips": round(float(np.mean(lp)), 4), "pairs": len(pairs)}, srs


def sample_sheet(path: Path, pairs, srs: list[np.ndarray], scale: int, count: int = 4) -> None:
    """Rows of LR (nearest-upscaled) | SR | HR for the first held-out pairs."""
    rows = []
    for (_, lr, hr), sr in list(zip(pairs, srs))[:count]:
        near = np.repeat(np.repeat(lr, scale, 0), scale, 1)[: hr.shape[0], : hr.shape[1]]
        rows.append(np.concatenate([near, sr[: hr.shape[0], : hr.shape[1]], hr], axis=1))
    if rows:
        write_png(path, np.clip(np.rint(np.concatenate(rows, axis=0) * 255), 0, 255).astype(np.uint8))


def train(s, log: Log = print, bar: bool = True, on_iteration: Callable[[int, dict], None] | None = None) -> dict:
    """Train (or fine-tune) on a degrade-flow run as `s` (flows.train_settings.TrainSettings) says."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    run = RunDir(Path(s.run_dir))
    scale = run_scale(run)
    train_images, held, notes = training_images(run, s.hr_size, s.val_images)  # checks hr_size against the scale
    data = DegradedCrops(run, train_images, DataConfig(scale, s.hr_size, s.seed, s.kernel_per, s.noise, s.noise_match_brightness, s.jpeg, s.jpeg_range))
    if s.noise and not data.noise_count:
        notes.append(f"the noise bank {run.noise} is EMPTY: training LR gets no noise (rerun degrade with --noise-rule adaptive, or pass --no-noise to silence this)")
    val = validation_pairs(run, held, s.val_pairs)
    vgg19_file = vgg19_path(s.vgg19_weights) if s.perceptual_weight else None
    perceptual = build_perceptual(vgg19_file) if vgg19_file else None
    g, g_desc = build_generator(s, scale)
    out = claim_train_dir(Path(s.out), s.model_dump(mode="json"), s.resume)
    device = resolve_device(s.device)
    amp = torch.bfloat16 if device.type == "cuda" and s.precision in ("auto", "bf16") else None
    torch.manual_seed(s.seed + 1)
    d = build_discriminator(DiscriminatorConfig(s.discriminator, s.d_feat))
    g.to(device)
    d.to(device)
    if perceptual is not None:
        perceptual.to(device)
    if device.type == "cuda":
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    trainer = Trainer(g, d, perceptual, LossWeights(s.pixel_weight, s.perceptual_weight, s.gan_weight), Schedule(s.lr_g, s.lr_d, (0.9, 0.999), tuple(s.milestones)), s.ema_decay, device, amp)
    start = 0
    found = newest_complete(out, log) if s.resume != "no" else None
    if s.resume == "require" and found is None:
        raise TrainingDataError(f"{out}: no complete training state to resume (every state or its weights failed to load, listed above)")
    if found is not None:
        start, (state, g_params, ema_params, d_params) = found
        g.load_state_dict(g_params, strict=True)
        trainer.ema.net.load_state_dict(ema_params, strict=True)
        d.load_state_dict(d_params, strict=True)
        trainer.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])
        now, then = comparable(s.model_dump(mode="json")), comparable(state["meta"].get("settings", {}))
        changed = sorted(k for k, v in then.items() if k not in ("iterations", "resume", "out") and now.get(k) != v)
        if changed:
            notes.append(f"resumed with other settings than the run was started with: {', '.join(changed)}")
    warmup = 0 if s.init else s.warmup
    log(f"{g_desc}; D {s.discriminator} ({s.d_feat} features); device {device}, precision {'bf16 autocast' if amp else 'fp32'}" + (f"; VGG19 {vgg19_file}" if vgg19_file else ""))
    log(f"{len(train_images)} training images, {len(val)} held-out pairs from {len(held)} images; iterations {start + 1}..{s.iterations} (warm-up L1 to {warmup}), batch {s.batch_size} of {s.hr_size} px")
    for n in notes:
        log(f"NOTE: {n}")
    lpips_fn = _lpips(s.lpips_alexnet) if val else None
    losses_csv, val_csv = out / "losses.csv", out / "validation.csv"
    loss_rows, val_rows = _csv_rows(losses_csv, start), _csv_rows(val_csv, start)
    best = read_json(out / "best.json") if (out / "best.json").exists() and start else None
    tb = _tensorboard(out)
    meta = {"settings": comparable(s.model_dump(mode="json")), "scale": scale, "g": g_desc, "d": DiscriminatorConfig(s.discriminator, s.d_feat).as_dict()}

    def check(it: int) -> dict | None:
        nonlocal best
        if not val:
            return None
        row, srs = validate(trainer.ema.net, val, scale, device, lpips_fn)
        row = {"iter": it, **row}
        val_rows.append(row)
        _write_csv(val_csv, VAL_COLUMNS, val_rows)
        sample_sheet(out / "samples" / f"iter_{it:07d}.png", val, srs, scale)
        score = row["lpips"] if lpips_fn else -row["psnr_y"]
        if it > 0 and (best is None or score < best["score"]):
            best = {"iter": it, "score": score, **row}
            save_generator(out / MODELS / "net_g_best.pth", g, trainer.ema.net)
            write_json(out / "best.json", best)
        log(f"validation at {it}: PSNR-Y {row['psnr_y']:.2f} dB, LPIPS {row['lpips']:.4f} on {row['pairs']} held-out pairs")
        if tb:
            tb.add_scalar("val/psnr_y", row["psnr_y"], it)
            tb.add_scalar("val/lpips", row["lpips"], it)
        return row

    if start == 0:
        check(0)  # the starting point's figures (a released model's, when fine-tuning)
    window: list[dict] = []
    t_window = time.perf_counter()
    progress = tqdm(total=s.iterations, initial=start, unit="it", disable=None if bar else True, leave=False)
    try:
        for it, (lr, hr) in enumerate(loader(data, s.batch_size, start, s.iterations, s.workers), start + 1):
            lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
            if device.type == "cuda":
                lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
            logs = trainer.step(lr, hr, warmup=it <= warmup, iteration=None if s.init else it)  # fine-tuning: the EMA starts as a trained model, no ramp
            window.append(logs)
            progress.update(1)
            if it % s.log_every == 0 or it == s.iterations:
                secs = time.perf_counter() - t_window
                row = {"iter": it, "stage": "warmup" if it <= warmup else "gan", "lr_g": f"{trainer.opt_g.param_groups[0]['lr']:.3g}", "seconds": round(secs, 3)}
                row.update({k: round(float(np.mean([w[k] for w in window if k in w])), 6) for k in LOSS_COLUMNS[3:9] if any(k in w for w in window)})
                loss_rows.append(row)
                _write_csv(losses_csv, LOSS_COLUMNS, loss_rows)
                if tb:
                    for k, v in row.items():
                        if k.startswith(("l_", "d_")):
                            tb.add_scalar(f"train/{k}", v, it)
                eta = secs / len(window) * (s.iterations - it)
                log(f"iter {it}/{s.iterations} ({row['stage']}): " + ", ".join(f"{k} {row[k]:.4g}" for k in LOSS_COLUMNS[3:9] if k in row) + f"; {len(window) / secs:.2f} it/s, ETA {eta / 60:.1f} min")
                window, t_window = [], time.perf_counter()
            if it % s.val_every == 0 or it == s.iterations:
                check(it)
            if it % s.save_every == 0 or it == s.iterations:
                save_checkpoint(out, it, g, trainer.ema.net, d, trainer.state_dict(), meta)
                prune_checkpoints(out, s.keep_checkpoints)
            if on_iteration:
                on_iteration(it, logs)
    finally:
        progress.close()
        if tb:
            tb.close()
    summary = {
        "out": str(out), "iterations": s.iterations, "resumed_from": start, "device": str(device), "precision": "bf16" if amp else "fp32",
        "generator": g_desc, "vgg19": str(vgg19_file) if vgg19_file else None, "training_images": len(train_images), "held_out_pairs": len(val), "best": best,
        "validation": val_rows[-1] if val_rows else None, "latest": str(out / MODELS / "net_g_latest.pth"),
        "notes": notes, "seconds": round(time.perf_counter() - t_start, 2),
    }
    write_json(out / "summary.json", summary)
    return summary


def _lpips(alexnet: Path | None):
    from storage.evaluation import lpips_metric

    return lpips_metric(alexnet)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
