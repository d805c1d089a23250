"""The real clients: chaiNNer reads a model through spandrel's `ModelLoader().load_from_file`, the
whole file as realsr wrote it. Every kind of generator file the product writes (training's
checkpoints, `realsr blend`, the pipeline's trained.pth, the converted releases in the weight store)
must load there as an ESRGAN of its scale and give what `realsr upscale` writes, within 1/255."""

import copy
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from spandrel import ModelLoader

from realsr.flows.cli import main
from realsr.flows.train_settings import TrainSettings
from realsr.models.discriminators import build_discriminator
from realsr.steps.pipeline import PipelineDir, publish_model
from realsr.steps.train import generator_meta
from realsr.steps.train_setup import SPANDREL_GROWTH, build_generator
from realsr.storage.model_files import save_generator
from realsr.storage.train_checkpoints import load_checkpoint, save_checkpoint
from realsr.storage.weights import require

PHOTO = Path(__file__).parent / "data" / "weights" / "input.png"  # a real photo crop (40 x 40), the ncnn references' input


def _spec(root: Path, **over):
    return TrainSettings.from_preset("test-tiny", run_dir=root / "run", out=root / "t", **over).spec()


def _generator(spec, scale: int, gain: float) -> torch.nn.Module:
    """G as training builds it (test-tiny, at the one growth spandrel builds), its weights scaled so
    the output spans much of [0, 1]: a dark, clipped output would hide a wrong load."""
    g, _ = build_generator(None, spec.nets.g_shape(scale), spec.seed)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(gain)
        g.conv_last.bias.fill_(0.5)
    return g.eval()


def _trained(root: Path, scale: int, init: str | None = None, gain: float = 1.6) -> Path:
    """A training folder written by training's own writer: G's params and its EMA (which differ),
    D, the state, the meta realsr records; returns the folder."""
    spec = _spec(root, g_grow=SPANDREL_GROWTH)
    g = _generator(spec, scale, 1.0)
    ema = copy.deepcopy(g)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(gain)
        ema.conv_last.bias.fill_(0.5)
    save_checkpoint(root / "t", 6, g, ema, build_discriminator(spec.nets.d), {}, {"scale": scale}, generator_meta(init, scale))
    assert load_checkpoint(root / "t", 6)[0]["iter"] == 6  # the product reads it back
    return root / "t"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Every kind of generator file realsr writes, made by the product's own code: {kind: (file, scale)}."""
    root = tmp_path_factory.mktemp("clients")
    x4, x2 = _trained(root / "x4", 4), _trained(root / "x2", 2)
    init = root / "init.pth"  # a fine-tune's init (G before training), recorded in the tuned file's meta
    net = _generator(_spec(root, g_grow=SPANDREL_GROWTH), 4, 1.3)
    save_generator(init, net, net)
    tuned = _trained(root / "tuned", 4, init=str(init), gain=1.5)
    blend = root / "blend.pth"
    assert main(["blend", str(init), str(tuned / "models" / "net_g_6.pth"), "0.5", "-o", str(blend)]) == 0
    pdir = PipelineDir(root / "pipe")
    return {
        "train net_g_6 x4": (x4 / "models" / "net_g_6.pth", 4),
        "train net_g_latest x4": (x4 / "models" / "net_g_latest.pth", 4),
        "train net_g_6 x2": (x2 / "models" / "net_g_6.pth", 2),
        "blend": (blend, 4),
        "pipeline trained.pth": (publish_model(x4 / "models" / "net_g_latest.pth", pdir), 4),
    }


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crop") / "crop.png"
    assert cv2.imwrite(str(path), cv2.imread(str(PHOTO))[8:32, 8:32])  # 24 x 24: a multiple of 4 (x2 unshuffles)
    return path


def _upscaled(model: Path, crop: Path, out: Path) -> np.ndarray:
    """What `realsr upscale` writes for `model`, as RGB uint8."""
    assert main(["upscale", "-i", str(crop), "-o", str(out), "--model", str(model)]) == 0
    return cv2.imread(str(out / "crop_out.png"), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.int16)


def _spandrel(model, crop: Path) -> np.ndarray:
    """The loaded model run as chaiNNer runs it: RGB in [0, 1], NCHW, clamped, rounded to uint8."""
    rgb = cv2.imread(str(crop))[..., ::-1].astype(np.float32) / 255
    with torch.no_grad():
        y = model(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].clamp(0, 1)
    return np.rint(y.numpy().transpose(1, 2, 0) * 255).astype(np.int16)


def _loads_and_matches(path: Path, scale: int, crop: Path, out: Path) -> np.ndarray:
    desc = ModelLoader().load_from_file(path)  # the whole file, as chaiNNer does
    assert desc.architecture.id == "ESRGAN" and desc.scale == scale, (desc.architecture.id, desc.scale)
    ours = _upscaled(path, crop, out)
    assert ours.shape == (24 * scale, 24 * scale, 3)
    assert ours.std() > 8 and (ours % 255 != 0).mean() > 0.9  # spread out, mostly unclipped: a wrong load would show
    theirs = _spandrel(desc.model.eval(), crop)
    assert np.abs(theirs - ours).max() <= 1, f"{path.name}: spandrel differs from realsr upscale by {np.abs(theirs - ours).max()} levels"
    return ours


@pytest.mark.parametrize("kind", ["train net_g_6 x4", "train net_g_latest x4", "train net_g_6 x2", "blend", "pipeline trained.pth"])
def test_spandrel_loads_every_generator_file_realsr_writes_and_agrees_with_upscale(files, crop, kind, tmp_path):
    path, scale = files[kind]
    ours = _loads_and_matches(path, scale, crop, tmp_path / "up")
    if kind.startswith("train net_g_6"):  # the file holds G and its EMA: both tools must take the EMA
        params = ModelLoader().load_from_state_dict(torch.load(path, weights_only=True)["params"])
        assert np.abs(_spandrel(params.model.eval(), crop) - ours).max() > 8


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realsr-df2k"])
def test_spandrel_loads_the_converted_releases_in_the_weight_store(name, crop, tmp_path):
    """The ncnn releases converted to torch (storage/weights_convert.py) are files a user may hand to
    chaiNNer too: 64 features, 23 blocks, fp16 weights."""
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.imread(str(crop))[:12, :12])  # 23 blocks of 64 features: 12 x 12 is enough
    desc = ModelLoader().load_from_file(require(name))
    assert desc.architecture.id == "ESRGAN" and desc.scale == 4 and "64nf" in desc.tags and "23nb" in desc.tags
    assert main(["upscale", "-i", str(small), "-o", str(tmp_path / "up"), "--model", name]) == 0
    ours = cv2.imread(str(tmp_path / "up" / "small_out.png"))[..., ::-1].astype(np.int16)
    assert ours.shape == (48, 48, 3) and ours.std() > 10
    assert np.abs(_spandrel(desc.model.eval(), small) - ours).max() <= 1


def test_a_generator_spandrel_cannot_build_is_named_at_training_start(tmp_path):
    """spandrel builds every ESRGAN with growth 32, whatever the file holds; test-tiny's growth 8 (and
    cpu-small's 16) is refused there, so training says so when it builds G, and names the way out."""
    shape = _spec(tmp_path).nets.g_shape(4)
    assert shape.num_grow_ch != SPANDREL_GROWTH
    g, desc = build_generator(None, shape, 0)
    save_generator(tmp_path / "g.pth", g, g)
    with pytest.raises(RuntimeError, match="size mismatch"):  # if spandrel learns growth, drop the note
        ModelLoader().load_from_file(tmp_path / "g.pth")
    assert f"load only growth {SPANDREL_GROWTH}" in desc and "realsr export" in desc
    _, desc32 = build_generator(None, replace(shape, num_grow_ch=SPANDREL_GROWTH), 0)
    assert "chaiNNer" not in desc32
