"""The SR generator, its checkpoints (layouts, dialects, refusals) and tiled inference."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.models.tiling import axis_weights, tile_layout, upscale
from realsr.storage.model_files import CheckpointError, load_generator, load_rrdb, save_generator

TINY = RRDBConfig(num_feat=8, num_block=2, num_grow_ch=32)  # spandrel assumes growth 32


def _tiny(scale=4, seed=0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(RRDBConfig(**{**TINY.as_dict(), "scale": scale})).eval()


@pytest.mark.parametrize("name", ["realsr-df2k", "realesrgan-x4plus"])
def test_released_generators_load_strictly_by_name(name, weights_ready):
    g = load_rrdb(name)
    assert g.config == RRDBConfig(num_feat=64, num_block=23, num_grow_ch=32, scale=4) and g.arch == "RRDBNet"
    with torch.inference_mode():
        y = g.model(torch.rand(1, 3, 12, 10))
    assert y.shape == (1, 3, 48, 40) and 0.0 <= float(y.mean()) <= 1.0


def _old_esrgan(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.replace("conv_body.", "trunk_conv.").replace("conv_up1.", "upconv1.").replace("conv_up2.", "upconv2.").replace("conv_hr.", "HRconv.")
        if k.startswith("body."):
            _, i, rdb, conv, p = k.split(".")
            k = f"RRDB_trunk.{i}.RDB{rdb[3:]}.{conv}.{p}"
        out[k] = v
    return out


def _sequential(sd: dict, blocks: int) -> dict:
    names = {
        "conv_first.": "model.0.",
        "conv_body.": f"model.1.sub.{blocks}.",
        "conv_up1.": "model.3.",
        "conv_up2.": "model.6.",
        "conv_hr.": "model.8.",
        "conv_last.": "model.10.",
    }
    out = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, i, rdb, conv, p = k.split(".")
            out[f"model.1.sub.{i}.RDB{rdb[3:]}.{conv}.0.{p}"] = v
        else:
            new = next(n + k[len(o) :] for o, n in names.items() if k.startswith(o))
            out[new] = v
    return out


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare", "module", "old-esrgan", "sequential"])
def test_every_layout_and_key_dialect_loads_to_the_same_network(tmp_path, layout):
    net = _tiny()
    sd = net.state_dict()
    obj = {
        "params_ema": {"params_ema": sd, "params": {k: torch.zeros_like(v) for k, v in sd.items()}},  # EMA wins
        "params": {"params": sd},
        "bare": sd,
        "module": {f"module.{k}": v for k, v in sd.items()},
        "old-esrgan": _old_esrgan(sd),
        "sequential": _sequential(sd, TINY.num_block),
    }[layout]
    torch.save(obj, tmp_path / "g.pth")
    g = load_rrdb(tmp_path / "g.pth")
    assert g.config == TINY
    x = torch.rand(1, 3, 9, 7)
    with torch.inference_mode():
        torch.testing.assert_close(g.model(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_saved_files_have_basicsr_layout_and_rebuild_from_shapes(tmp_path, scale):
    net, ema = _tiny(scale, 1), _tiny(scale, 2)
    save_generator(tmp_path / "net_g_10.pth", net, ema)
    raw = torch.load(tmp_path / "net_g_10.pth", weights_only=True)
    assert set(raw) == {"params", "params_ema"}
    g = load_rrdb(tmp_path / "net_g_10.pth", expect_scale=scale)
    assert g.scale == scale and g.config.num_block == 2
    x = torch.rand(1, 3, 9, 11)  # odd sides: x2/x1 pad for the pixel-unshuffle and crop back
    with torch.inference_mode():
        y = g.model(x)
        torch.testing.assert_close(y, ema(x), rtol=0, atol=0)
    assert y.shape[-2:] == (9 * scale, 11 * scale)
    from spandrel import ModelLoader  # the file loads where chaiNNer's loader runs, too

    assert ModelLoader().load_from_state_dict(raw["params_ema"]).scale == scale


class _Exploit:
    def __reduce__(self):
        return (Path.write_text, (Path(_Exploit.target), "executed"))


def test_refusals_name_the_file_and_what_was_found(tmp_path):
    torch.save({"params": _tiny().state_dict()}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable torch checkpoint, truncated or corrupt"):
        load_rrdb(tmp_path / "cut.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: empty file"):
        load_generator(tmp_path / "empty.pth")
    _Exploit.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"params": _Exploit()}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pth: holds Python objects .* refused, nothing was executed"):
        load_generator(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: architecture not recognised \(keys like encoder.weight"):
        load_generator(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: not an RRDBNet checkpoint"):
        load_rrdb(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"good\.pth: an x4 RRDBNet, x2 was asked for"):
        load_rrdb(tmp_path / "good.pth", expect_scale=2)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_generator(tmp_path / "missing.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"noise\.pth: not a checkpoint \(neither torch's zip format nor a pickle"):
        load_generator(tmp_path / "noise.pth")


def test_tile_weights_sum_to_one_everywhere():
    for length, tile, overlap in [(100, 32, 8), (97, 40, 16), (64, 64, 8), (30, 64, 8)]:
        size, starts = tile_layout(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + size == length and size <= tile
        assert all(a + size - b >= min(overlap, size) for a, b in zip(starts, starts[1:]))
        total = np.zeros(length * 2)
        for s, w in zip(starts, axis_weights(starts, size, 2)):
            total[s * 2 : s * 2 + len(w)] += w
        np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tiled_equals_untiled_when_the_context_covers_the_receptive_field():
    net = _tiny()
    img = np.random.default_rng(0).random((45, 70, 3), dtype=np.float32)
    whole = upscale(net, img, 4)
    tiled = upscale(net, img, 4, tile=24, pad=40, overlap=8)
    assert whole.shape == tiled.shape == (180, 280, 3)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    rough = upscale(net, img, 4, tile=24, pad=0, overlap=8)  # no context: the tile borders differ
    assert np.abs(rough - whole).max() > 1e-3
