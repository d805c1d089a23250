"""The fidelity/perception control: network interpolation, `realsr blend`, `realsr upscale --blend`."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from realsr.flows.cli import main
from realsr.models.network_interp import InterpolationError, interpolate
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.steps.blend import recorded_init
from realsr.storage.model_files import read_checkpoint, save_generator

SHAPE = RRDBConfig(num_feat=8, num_block=1, num_grow_ch=8)


def _net(seed: int, shape: RRDBConfig = SHAPE) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(shape)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """An "init" A and a "fine-tuned" B that records A as its init, as `realsr train` writes it."""
    root = tmp_path_factory.mktemp("blend")
    a, b = root / "init.pth", root / "tuned.pth"
    save_generator(a, _net(0))
    save_generator(b, _net(1), _net(2), {"init": str(a), "scale": 4, "tool": "realsr-pipeline"})
    return a, b


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    a, b = _net(0).state_dict(), _net(1).state_dict()
    for k in a:
        assert torch.equal(interpolate(a, b, 0.0)[k], a[k]) and torch.equal(interpolate(a, b, 1.0)[k], b[k])
        torch.testing.assert_close(interpolate(a, b, 0.25)[k], 0.75 * a[k] + 0.25 * b[k])
    other = _net(0, RRDBConfig(num_feat=16, num_block=1, num_grow_ch=8)).state_dict()
    with pytest.raises(InterpolationError, match="shape"):
        interpolate(a, other, 0.5)
    with pytest.raises(InterpolationError, match="other parameters"):
        interpolate(a, {k: v for k, v in b.items() if "body" not in k}, 0.5)
    with pytest.raises(InterpolationError, match="outside"):
        interpolate(a, b, 1.5)


def _photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return path


def _upscaled(tmp_path: Path, name: str, *flags: str) -> np.ndarray:
    src = _photo(tmp_path / "in")
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / name), *flags]) == 0
    return cv2.imread(str(tmp_path / name / "photo_out.png"))


def test_upscale_blend_moves_from_the_init_to_the_model(pair, tmp_path):
    a, b = pair
    assert recorded_init(b) == str(a) and recorded_init(a) is None
    only_a, only_b = _upscaled(tmp_path, "a", "--model", str(a)), _upscaled(tmp_path, "b", "--model", str(b))
    assert not np.array_equal(only_a, only_b)
    assert np.array_equal(_upscaled(tmp_path, "b0", "--model", str(b), "--blend", "0"), only_a)  # the recorded init
    assert np.array_equal(_upscaled(tmp_path, "b1", "--model", str(b), "--blend", "1"), only_b)
    half = tmp_path / "half.pth"
    assert main(["blend", str(a), str(b), "0.5", "-o", str(half)]) == 0
    state, meta = read_checkpoint(half)
    assert meta["blend"]["alpha"] == 0.5 and set(state) == set(_net(0).state_dict())
    mid = _upscaled(tmp_path, "mid", "--model", str(half))
    assert np.array_equal(_upscaled(tmp_path, "b05", "--model", str(b), "--blend", "0.5"), mid)
    assert not np.array_equal(mid, only_a) and not np.array_equal(mid, only_b)
    # --blend-with names the partner: blending B with itself is B
    assert np.array_equal(_upscaled(tmp_path, "self", "--model", str(b), "--blend", "0.3", "--blend-with", str(b)), only_b)


def test_blend_refusals_say_why(pair, tmp_path, capsys):
    a, b = pair
    _photo(tmp_path / "in")
    assert main(["upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", str(a), "--blend", "0.5"]) == 2
    assert "records no init" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", str(b), "--blend", "1.5"])
    assert "not between 0 and 1" in capsys.readouterr().err
    wide = tmp_path / "wide.pth"
    save_generator(wide, _net(0, RRDBConfig(num_feat=16, num_block=1, num_grow_ch=8)))
    assert main(["blend", str(a), str(wide), "0.5", "-o", str(tmp_path / "x.pth")]) == 2
    assert "cannot be blended" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()
    out = tmp_path / "kept.pth"
    out.write_bytes(b"mine")
    assert main(["blend", str(a), str(b), "0.5", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["blend", str(a), str(b), "0.5", "-o", str(out), "--overwrite"]) == 0
    assert read_checkpoint(out)[1]["blend"]["b"] == str(b)
