"""Real-ESRGAN's U-Net discriminator: its shapes, BasicSR's key names (so the released
RealESRGAN_x4plus_netD.pth loads), loading a D init through the settings, clear refusals, and a
tiny training run whose net_d file reloads."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import realsr.storage.weights as W
from realsr.flows.cli import main
from realsr.flows.train_settings import TrainSettings
from realsr.models.discriminators import DiscriminatorConfig, UNetDiscriminatorSN, build_discriminator
from realsr.steps.train_setup import build_d
from realsr.storage.model_files import CheckpointError, load_discriminator
from tests.test_train import degrade_run  # noqa: F401  (the module's tiny degrade run)

# BasicSR's UNetDiscriminatorSN(num_in_ch=3, num_feat=64) (basicsr/archs/discriminator_arch.py):
# conv0 plain, conv1-conv8 under torch.nn.utils.spectral_norm (weight_orig, weight_u, weight_v), conv9 plain
BASICSR_SHAPES = {"conv0.weight": (64, 3, 3, 3), "conv0.bias": (64,)}
for _i, (_out, _in, _k) in enumerate([(128, 64, 4), (256, 128, 4), (512, 256, 4), (256, 512, 3), (128, 256, 3), (64, 128, 3), (64, 64, 3), (64, 64, 3)], 1):
    BASICSR_SHAPES |= {f"conv{_i}.weight_orig": (_out, _in, _k, _k), f"conv{_i}.weight_u": (_out,), f"conv{_i}.weight_v": (_in * _k * _k,)}
BASICSR_SHAPES |= {"conv9.weight": (1, 64, 3, 3), "conv9.bias": (1,)}


def _basicsr_file(path: Path, num_feat: int = 8, seed: int = 3) -> dict[str, torch.Tensor]:
    """A netD file as BasicSR writes one: {'params': state_dict}, with weights of a given seed."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in UNetDiscriminatorSN(3, num_feat).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": sd}, path)
    return sd


def test_unet_gives_a_logit_per_pixel_under_spectral_norm():
    d = build_discriminator(DiscriminatorConfig(arch="unet", num_feat=8)).train()
    assert isinstance(d, UNetDiscriminatorSN)
    assert d(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    assert d(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.rand(1, 3, 36, 36))
    with torch.no_grad():
        for _ in range(30):  # the power iteration runs once per training forward
            d(torch.rand(1, 3, 8, 8))
    for i in range(1, 9):  # conv1-conv8's effective weight has spectral norm 1
        w = getattr(d, f"conv{i}").weight.detach().flatten(1)
        assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, abs=0.05)


def test_state_dict_names_and_shapes_are_basicsrs():
    sd = UNetDiscriminatorSN(3, 64).state_dict()
    assert list(sd) == list(BASICSR_SHAPES)
    assert {k: tuple(v.shape) for k, v in sd.items()} == BASICSR_SHAPES


def test_a_basicsr_netd_file_starts_d_through_the_settings(tmp_path):
    sd = _basicsr_file(tmp_path / "netD.pth")
    spec = TrainSettings.from_preset("test-tiny", run_dir=tmp_path / "run", out=tmp_path / "t", discriminator="unet", d_init=str(tmp_path / "netD.pth")).spec()
    assert spec.nets.d_init == str(tmp_path / "netD.pth")
    d, desc = build_d(spec.nets.d, spec.nets.d_init)  # as train's set-up builds D
    got = d.state_dict()
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert desc == f"unet (init from {tmp_path / 'netD.pth'})"
    assert build_d(DiscriminatorConfig(arch="unet", num_feat=8), None)[1] == "unet (8 features, from scratch)"
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)  # a bare state dict loads alike
    d = UNetDiscriminatorSN(3, 8)
    assert load_discriminator(bare, d) == bare and all(torch.equal(d.state_dict()[k], sd[k]) for k in sd)


def test_a_file_with_a_wrong_key_or_shape_is_refused_in_one_line(degrade_run, tmp_path, capsys):  # noqa: F811
    sd = _basicsr_file(tmp_path / "ok.pth")
    renamed = {("conv1.weight" if k == "conv1.weight_orig" else k): v for k, v in sd.items()}  # as a D without spectral norm
    torch.save({"params": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as e:
        load_discriminator(tmp_path / "renamed.pth", UNetDiscriminatorSN(3, 8))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "renamed.pth") in msg and "missing (conv1.weight_orig)" in msg and "unexpected (conv1.weight)" in msg
    _basicsr_file(tmp_path / "wide.pth", num_feat=16)
    with pytest.raises(CheckpointError) as e:
        load_discriminator(tmp_path / "wide.pth", UNetDiscriminatorSN(3, 8))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "wide.pth") in msg and "conv0.weight: (16, 3, 3, 3) in the file, (8, 3, 3, 3) here" in msg
    # through the command line: refused before anything starts, one line naming the file
    args = ["train", str(degrade_run), "--out", str(tmp_path / "t"), "--preset", "test-tiny", "--runtime", "local", "--discriminator", "unet"]
    assert main([*args, "--d-init", str(tmp_path / "wide.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(tmp_path / "wide.pth") in err[-1] and "conv0.weight" in err[-1] and not (tmp_path / "t").exists()
    assert main([*args, "--d-init", str(tmp_path / "absent.pth")]) == 2
    assert "absent.pth: no such discriminator file (known names: realesrgan-x4plus-netd)" in capsys.readouterr().err


def test_d_init_needs_the_unet_and_the_unet_crops_of_8_px(tmp_path):
    common = {"run_dir": tmp_path / "run", "out": tmp_path / "t"}
    with pytest.raises(ValidationError, match="set discriminator unet"):
        TrainSettings.from_preset("test-tiny", **common, d_init="realesrgan-x4plus-netd")
    with pytest.raises(ValidationError, match="multiple of 8 px"):
        TrainSettings.from_preset("test-tiny", **common, discriminator="unet", hr_size=20)


def test_the_released_netd_is_used_from_the_weights_folder_and_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("REALSR_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(W, "download", lambda *a, **k: pytest.fail("no digest is published: nothing may be downloaded"))
    with pytest.raises(W.WeightsError) as e:
        load_discriminator("realesrgan-x4plus-netd", UNetDiscriminatorSN(3, 64))
    msg = str(e.value)
    assert "\n" not in msg and "No sha256 is published" in msg and "RealESRGAN_x4plus_netD.pth in REALSR_WEIGHTS_DIR" in msg
    assert "releases/download/v0.2.2.3/RealESRGAN_x4plus_netD.pth" in msg
    sd = _basicsr_file(tmp_path / "weights" / "RealESRGAN_x4plus_netD.pth", num_feat=64)
    d = UNetDiscriminatorSN(3, 64)
    assert load_discriminator("realesrgan-x4plus-netd", d) == tmp_path / "weights" / "RealESRGAN_x4plus_netD.pth"
    assert all(torch.equal(d.state_dict()[k], sd[k]) for k in sd)


def test_tiny_training_from_a_netd_file_saves_a_net_d_that_reloads(degrade_run, tmp_path, capsys):  # noqa: F811
    sd = _basicsr_file(tmp_path / "netD.pth")
    out = tmp_path / "t"
    args = [
        "train",
        str(degrade_run),
        "--out",
        str(out),
        "--preset",
        "test-tiny",
        "--runtime",
        "local",
        "--discriminator",
        "unet",
        "--d-init",
        str(tmp_path / "netD.pth"),
        "--warmup",
        "0",
        "--lr-d",
        "1e-4",
        "--iterations",
        "1",
        "--val-every",
        "1",
        "--save-every",
        "1",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"D unet (init from {tmp_path / 'netD.pth'})" in captured.err and "; D unet (init from" in captured.out  # the log, and the summary
    d = UNetDiscriminatorSN(3, 8)
    assert load_discriminator(out / "models" / "net_d_1.pth", d) == out / "models" / "net_d_1.pth"
    step = (d.conv0.weight - sd["conv0.weight"]).abs().max()
    assert 0 < step <= 1.01e-4  # one Adam step of lr 1e-4 from the file's weights
