"""train-flow's set-up: the training folder, the networks, the perceptual loss, what a resume
compares. Everything here can refuse a run, and does so before the first iteration."""

from __future__ import annotations

from pathlib import Path

import torch

from realsr.models.losses import PerceptualLoss, vgg19_features
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.steps.train_data import TrainingDataError
from realsr.storage.checkpoints import load_rrdb
from realsr.storage.run_dir import check_folder, claim_folder
from realsr.storage.train_state import saved_iterations
from realsr.storage.weights import WeightsError, require

MARKER = "train.json"
PATH_SETTINGS = ("run_dir", "out", "init", "vgg19_weights", "lpips_alexnet")


def claim_train_dir(out: Path, settings: dict, resume: str) -> Path:
    """Make `out` a training folder; refuse one that holds other files, or a run when not resuming."""
    check_train_dir(out, resume)
    return claim_folder(out, MARKER, "training folder", {"kind": "train", "settings": settings})


def check_train_dir(out: Path, resume: str) -> Path:
    """What `claim_train_dir` refuses, checked without writing anything."""
    out = check_folder(out, MARKER, "training folder")
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


def build_generator(init: str | None, shape: RRDBConfig, seed: int) -> tuple[torch.nn.Module, str]:
    """G: the `init` checkpoint (its own shape, checked against the scale), else a new RRDBNet of `shape`."""
    if init:
        gen = load_rrdb(init, expect_scale=shape.scale)
        return gen.model.train(), f"init from {gen.describe()}"
    torch.manual_seed(seed)
    return RRDBNet(shape), f"from scratch: RRDBNet {shape.num_block} blocks, {shape.num_feat} features, growth {shape.num_grow_ch}, x{shape.scale}"


def comparable(settings: dict) -> dict:
    """Settings with their paths made absolute, so `runs/a` and `/home/me/runs/a` compare equal
    (a name like `realesrgan-x4plus` that is no existing path stays as it is)."""
    out = dict(settings)
    for k in PATH_SETTINGS:
        if out.get(k) and (k != "init" or Path(out[k]).expanduser().exists()):
            out[k] = str(Path(out[k]).expanduser().resolve())
    return out


def changed_settings(now: dict, then: dict) -> list[str]:
    """The settings a resumed run changed (the iteration target and the folder may change)."""
    now, then = comparable(now), comparable(then)
    return sorted(k for k, v in then.items() if k not in ("iterations", "resume", "out") and now.get(k) != v)
