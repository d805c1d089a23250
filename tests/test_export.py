"""`realsr export`: each format run by its own runtime (onnxruntime, ncnn, the product's loader
and spandrel) on a tiny RRDBNet, a broken export refused with its difference and nothing kept,
no file replaced without --force, the model card's fields and checksums, the exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("ncnn")
pytest.importorskip("pnnx")
pytest.importorskip("safetensors")

from realsr.flows.cli import main  # noqa: E402
from realsr.models.rrdbnet import RRDBConfig, RRDBNet  # noqa: E402
from realsr.steps import export_formats as fmt  # noqa: E402
from realsr.storage.model_files import load_generator, read_checkpoint, save_generator  # noqa: E402
from tests.conftest import small_photo, write_rgb  # noqa: E402

LEVEL = 1 / 255 + 1e-6


def tiny_net(seed: int = 0) -> RRDBNet:
    """1 block, 8 features, growth 32 (spandrel assumes 32); weights scaled so the output spans
    much of [0, 1] (a dark, clipped output would hide a wrong export)."""
    torch.manual_seed(seed)
    net = RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=32)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.6)
        net.conv_last.bias.fill_(0.5)
    return net


def torch_out(net: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return small_photo(seed, 64, 64)[:h, :w].astype(np.float32) / 255


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of every format (fp16 too) of a tiny generator, verified on two small photos."""
    root = tmp_path_factory.mktemp("export")
    net = tiny_net()
    save_generator(root / "tiny.pth", net, net, {"init": "realesrgan-x4plus", "scale": 4, "tool": "realsr-pipeline"})
    for i in range(2):
        write_rgb(root / "photos" / f"p{i}.png", small_photo(i, 48, 56))
    code = main(["export", str(root / "tiny.pth"), "-o", str(root / "out"), "--fp16", "--verify-images", str(root / "photos")])
    return root, net, code


def test_all_formats_kept_with_card(exported):
    root, _, code = exported
    out = root / "out"
    assert code == 0
    names = {"tiny.onnx", "tiny.fp16.onnx", "tiny.param", "tiny.bin", "tiny.safetensors", "tiny.json", "tiny.sheet.png"}
    assert {p.name for p in out.iterdir()} == names
    card = json.loads((out / "tiny.json").read_text())
    for key in (
        "name",
        "author",
        "license",
        "tags",
        "description",
        "date",
        "architecture",
        "size",
        "scale",
        "inputChannels",
        "outputChannels",
        "resources",
        "images",
    ):
        assert key in card, key
    assert (card["architecture"], card["size"], card["scale"], card["license"], card["pretrainedModelG"]) == (
        "esrgan",
        ["8nf", "1nb"],
        4,
        "BSD-3-Clause",
        "realesrgan-x4plus",
    )
    files = {r["file"]: r for r in card["resources"]}
    assert set(files) == names - {"tiny.json", "tiny.sheet.png"}
    for name, r in files.items():
        data = (out / name).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["size"] == len(data)
    checks = card["realsr"]["verification"]
    assert {c["format"] for c in checks} == {"onnx", "onnx-fp16", "ncnn", "safetensors"}
    assert all(c["max_abs_diff_255"] <= 1 for c in checks)
    assert all(set(c["per_image"]) == {"p0.png", "p1.png"} for c in checks if c["format"] != "onnx-fp16")
    half = next(c for c in checks if c["format"] == "onnx-fp16")  # against the product's own fp16, on a small crop (CPU)
    assert list(half["per_image"]) == ["p0.png (16 px centre)"] and half["against"] == "realsr upscale's in half precision (its default on a GPU)"


def test_onnx_runs_two_sizes_in_onnxruntime(exported):
    root, net, _ = exported
    run = fmt.onnx_session(root / "out" / "tiny.onnx")
    for h, w in ((20, 28), (33, 17)):  # one file, dynamic height and width
        rgb = photo(h, w)
        out = run(rgb)
        assert out.shape == (4 * h, 4 * w, 3)
        assert np.abs(np.clip(out, 0, 1) - torch_out(net, rgb)).max() <= LEVEL


def test_ncnn_runs_in_ncnn_with_released_blob_names(exported):
    root, net, _ = exported
    layers = [line.split() for line in (root / "out" / "tiny.param").read_text().splitlines()[2:]]
    assert layers[0][:5] == ["Input", "data", "0", "1", "data"]  # the blobs realesrgan-ncnn-vulkan feeds and reads
    assert layers[-1][4 + int(layers[-1][2]) : 4 + int(layers[-1][2]) + int(layers[-1][3])] == ["output"]
    for h, w in ((24, 24), (19, 30)):
        rgb = photo(h, w, 1)
        out = fmt.run_ncnn(root / "out" / "tiny.param", root / "out" / "tiny.bin", rgb)
        assert out.shape == (4 * h, 4 * w, 3)
        assert np.abs(np.clip(out, 0, 1) - torch_out(net, rgb)).max() <= LEVEL


def test_ncnn_files_read_back_as_the_released_layout(exported):
    """Our .param/.bin hold the tensors exactly, in the layout the released models' reader takes."""
    from realsr.storage.weights_convert import ncnn_rrdb

    root, net, _ = exported
    back = ncnn_rrdb((root / "out" / "tiny.param").read_text(), (root / "out" / "tiny.bin").read_bytes())["params_ema"]
    want = net.state_dict()
    assert back.keys() == want.keys() and all(torch.allclose(back[k].float(), want[k], atol=1e-3) for k in want)  # fp16 weights (--fp16)


def test_pnnx_route_runs_in_ncnn(tmp_path):
    """Generators other than x4 RRDBNets go through pnnx: its blobs renamed, the files run in ncnn."""
    net = tiny_net(3)
    fmt.write_ncnn_pnnx(net, tmp_path / "g.param", tmp_path / "g.bin")
    rgb = photo(21, 26)
    out = fmt.run_ncnn(tmp_path / "g.param", tmp_path / "g.bin", rgb)
    assert np.abs(np.clip(out, 0, 1) - torch_out(net, rgb)).max() <= LEVEL


def test_safetensors_reload_identical(exported):
    root, net, _ = exported
    st = root / "out" / "tiny.safetensors"
    tensors, _ = read_checkpoint(st)
    ema = read_checkpoint(root / "tiny.pth")[0]
    assert tensors.keys() == ema.keys() and all(torch.equal(tensors[k], ema[k]) for k in ema)
    from safetensors import safe_open

    with safe_open(str(st), "pt") as f:
        assert f.metadata()["scale"] == "4" and f.metadata()["num_feat"] == "8"
    rgb = photo(16, 16)
    assert np.array_equal(torch_out(load_generator(st).model, rgb), torch_out(net, rgb))
    spandrel = pytest.importorskip("spandrel")
    chainner = spandrel.ModelLoader().load_from_file(str(st)).model.eval()  # what chaiNNer does with the file
    assert np.abs(torch_out(chainner, rgb) - torch_out(net, rgb)).max() <= 1e-6


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    net = tiny_net(1)
    save_generator(tmp_path / "g.pth", net, net)
    write_rgb(tmp_path / "photos" / "p.png", small_photo(3, 40, 40))
    return tmp_path


def _perturbed(original):
    def write(model, *paths, **kw):
        broken = type(model)(model.config).eval()
        broken.load_state_dict(model.state_dict())
        with torch.no_grad():
            broken.conv_last.bias.add_(0.05)  # about 13 levels brighter
        return original(broken, *paths, **kw)

    return write


def test_broken_export_refused_nothing_kept(tiny, monkeypatch, capsys, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setattr(fmt, "write_onnx", _perturbed(fmt.write_onnx))
    code = main(["export", str(tiny / "g.pth"), "-o", str(tiny / "out"), "--onnx", "--verify-images", str(tiny / "photos")])
    err = capsys.readouterr().err
    assert code == 2
    line = next(x for x in err.splitlines() if x.startswith("REFUSED onnx"))
    assert "/255" in line and int(line.split("by ")[1].split("/255")[0]) > 1
    assert not (tiny / "out").exists() and list(scratch.iterdir()) == []  # nothing kept, no temporary left


def test_some_refused_exit_1(tiny, monkeypatch):
    monkeypatch.setattr(fmt, "write_ncnn", _perturbed(fmt.write_ncnn))
    code = main(["export", str(tiny / "g.pth"), "-o", str(tiny / "out"), "--ncnn", "--safetensors", "--verify-images", str(tiny / "photos")])
    assert code == 1
    assert {p.name for p in (tiny / "out").iterdir()} == {"g.safetensors", "g.json", "g.sheet.png"}
    card = json.loads((tiny / "out" / "g.json").read_text())
    assert [r["type"] for r in card["resources"]] == ["safetensors"] and [r["format"] for r in card["realsr"]["refused"]] == ["ncnn"]


def test_no_overwrite_without_force(tiny, capsys):
    out = tiny / "out"
    out.mkdir()
    (out / "g.safetensors").write_bytes(b"mine")
    args = ["export", str(tiny / "g.pth"), "-o", str(out), "--safetensors", "--verify-images", str(tiny / "photos")]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and (out / "g.safetensors").read_bytes() == b"mine" and not (out / "g.json").exists()
    assert main([*args, "--force"]) == 0
    assert read_checkpoint(out / "g.safetensors")[0].keys() == read_checkpoint(tiny / "g.pth")[0].keys()


def test_bad_arguments_exit_2(tiny, capsys):
    assert main(["export", str(tiny / "nothing.pth"), "-o", str(tiny / "out")]) == 2
    assert main(["export", str(tiny / "g.pth"), "-o", str(tiny / "out"), "--opset", "3"]) == 2
    assert "nothing.pth" in capsys.readouterr().err and not (tiny / "out").exists()


def test_pipeline_model_card(tmp_path):
    """A pipeline's trained.pth: verified on its held-out crops; the card carries the training
    fields, the data summary and the evaluation table from the pipeline folder."""
    from realsr.storage.train_checkpoints import save_checkpoint

    root = tmp_path / "mycamera"
    tdir = root / "train" / "abc"
    net = tiny_net(2)
    save_checkpoint(tdir, 30, net, net, torch.nn.Conv2d(3, 1, 1), {}, {"settings": {"batch_size": 4, "hr_size": 64}}, {"init": "realesrgan-x4plus", "scale": 4})
    for i in range(2):
        write_rgb(tdir / "val" / "lr" / f"v{i}.png", small_photo(i + 5, 32, 32))
    (tdir / "summary.json").write_text(json.dumps({"iterations": 30, "training_images": 5, "held_out_images": 1}))
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "results.md").write_text("| model | images | PSNR-Y dB |\n|---|---|---|\n| trained | 2 | 27.1000 |\n")
    (root / "summary.json").write_text(json.dumps({"degrade": {"sources": 6, "processed": 6, "cached": 0}}))
    (root / "pipeline.json").write_text(json.dumps({"stages": {"train": {"key": "abc", "out": str(tdir)}}}))
    (root / "trained.pth").write_bytes((tdir / "models" / "net_g_latest.pth").read_bytes())
    assert main(["export", str(root / "trained.pth"), "-o", str(tmp_path / "out"), "--safetensors"]) == 0
    card = json.loads((tmp_path / "out" / "mycamera-x4.json").read_text())
    assert (card["trainingIterations"], card["trainingBatchSize"], card["trainingHRSize"], card["datasetSize"]) == (30, 4, 64, 5)
    assert "6 photos" in card["dataset"] and "27.1000" in card["description"] and card["license"] == "BSD-3-Clause"
    assert set(card["realsr"]["verification"][0]["per_image"]) == {"v0.png", "v1.png"}
