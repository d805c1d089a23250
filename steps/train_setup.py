"""train-flow's set-up: the training folder, the networks, the perceptual loss, what a resume
compares. Everything here can refuse a run, and does so before the first iteration."""

from __future__ import annotations

from pathlib import Path

import torch

from realsr.models.discriminators import DiscriminatorConfig, build_discriminator
from realsr.models.losses import VGG19_LAYERS, PerceptualLoss, vgg19_features
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.steps.train_data import TrainingDataError
from realsr.storage.model_files import load_discriminator, load_rrdb
from realsr.storage.run_dir import check_folder, claim_folder
from realsr.storage.train_checkpoints import saved_iterations
from realsr.storage.weights import WeightsError, require

MARKER = "train.json"
PATH_SETTINGS = ("run_dir", "out", "init", "d_init", "vgg19_weights", "lpips_alexnet")
NAMED = ("init", "d_init")  # a path, or a released weight's name
SPANDREL_GROWTH = 32  # the only RRDB growth spandrel (chaiNNer's loader) builds: it reads no growth from the file


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


def build_perceptual(given: Path | None, layers: dict[str, float] | None = None) -> PerceptualLoss:
    """The VGG19 loss at `layers` ({layer: weight}; None: conv5_4 alone)."""
    path = vgg19_path(given)
    layers = layers or {"conv5_4": 1.0}
    try:
        return PerceptualLoss(vgg19_features(path, max(layers, key=VGG19_LAYERS.__getitem__)), layers)
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
    desc = f"from scratch: RRDBNet {shape.num_block} blocks, {shape.num_feat} features, growth {shape.num_grow_ch}, x{shape.scale}"
    if shape.num_grow_ch != SPANDREL_GROWTH:  # spandrel builds every ESRGAN with growth 32 (tests/test_clients.py)
        desc += f" (chaiNNer and other spandrel-based tools load only growth {SPANDREL_GROWTH}; `realsr export` takes it to ONNX and ncnn)"
    return RRDBNet(shape), desc


def build_d(cfg: DiscriminatorConfig, init: str | None) -> tuple[torch.nn.Module, str]:
    """D: a new one of `cfg`, its weights from `init` (a file or a released name) when given."""
    d = build_discriminator(cfg)
    if not init:
        return d, f"{cfg.arch} ({cfg.num_feat} features, from scratch)"
    return d, f"{cfg.arch} (init from {load_discriminator(init, d)})"


def comparable(settings: dict) -> dict:
    """Settings with their paths made absolute, so `runs/a` and `/home/me/runs/a` compare equal
    (a name like `realesrgan-x4plus` that is no existing path stays as it is)."""
    out = dict(settings)
    for k in PATH_SETTINGS:
        if out.get(k) and (k not in NAMED or Path(out[k]).expanduser().exists()):
            out[k] = str(Path(out[k]).expanduser().resolve())
    return out


def changed_settings(now: dict, then: dict) -> list[str]:
    """The settings a resumed run changed (the iteration target and the folder may change)."""
    now, then = comparable(now), comparable(then)
    return sorted(k for k, v in then.items() if k not in ("iterations", "resume", "out") and now.get(k) != v)
