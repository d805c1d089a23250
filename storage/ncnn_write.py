"""An x4 RRDBNet as ncnn files, in the layout of the released realesrgan-ncnn-vulkan models.

The mirror of `weights_convert.ncnn_convolutions`: the same layers (Convolution with LeakyReLU
0.2 fused, Concat, BinaryOp, nearest Interp, Split where a blob has several readers), the
convolutions in the network's order (`weights_convert.rrdb_names`), blobs `data` in and
`output` out, each weight blob tagged fp32 (raw) or fp16 as ncnn's model loader reads it.
Written here rather than through pnnx for RRDBNets: pnnx 20261020's `pass_ncnn` takes 23 GB
and 90 s on a 23-block RRDBNet (0.36 GB and 4 s at 8 blocks), more than most machines have.
"""

from __future__ import annotations

import numpy as np
import torch

from realsr.storage.weights_convert import NCNN_FP16, NCNN_MAGIC, rrdb_names

LRELU = "9=2 -23310=1,0.2"  # activation 2 (leaky ReLU), its one parameter: slope 0.2


class _Graph:
    """Layers as (type, name, inputs, outputs, params); Split layers are added on `text()`."""

    def __init__(self):
        self.layers: list[tuple[str, str, list[str], list[str], str]] = []
        self.n = 0

    def add(self, kind: str, inputs: list[str], params: str = "", name: str | None = None) -> str:
        self.n += 1
        out = f"b{self.n}"
        self.layers.append((kind, name or f"{kind.lower()}_{self.n}", inputs, [out], params))
        return out

    def text(self, output: str) -> str:
        """The .param text, blob `output` named `output`, a Split after each blob read more than once."""
        readers: dict[str, int] = {}
        for _, _, ins, _, _ in self.layers:
            for b in ins:
                readers[b] = readers.get(b, 0) + 1
        lines, taken = [], {}
        for kind, name, ins, outs, params in self.layers:
            ins = [f"{b}_{_next(taken, b)}" if readers[b] > 1 else b for b in ins]
            lines.append((kind, name, ins, outs, params))
            for b in outs:
                if readers.get(b, 0) > 1:
                    lines.append(("Split", f"split_{b}", [b], [f"{b}_{i}" for i in range(readers[b])], ""))
        lines = [(k, n, i, ["output" if b == output else b for b in o], p) for k, n, i, o, p in lines]
        blobs = {b for _, _, _, o, _ in lines for b in o}
        body = [f"{k:<16} {n:<24} {len(i)} {len(o)} {' '.join(i + o)} {p}".rstrip() for k, n, i, o, p in lines]
        return "\n".join([NCNN_MAGIC, f"{len(lines)} {len(blobs)}", *body]) + "\n"


def _next(taken: dict[str, int], blob: str) -> int:
    taken[blob] = taken.get(blob, -1) + 1
    return taken[blob]


def rrdb_ncnn(state: dict[str, torch.Tensor], num_block: int, fp16: bool = False) -> tuple[str, bytes]:
    """(.param text, .bin bytes) of an x4 RRDBNet given by its BasicSR-named tensors."""
    g, weights = _Graph(), []

    def conv(x: list[str], name: str, act: bool) -> str:
        w, b = state[f"{name}.weight"].float().numpy(), state[f"{name}.bias"].float().numpy()
        weights.append(_blob(w, fp16) + b.astype("<f4").tobytes())
        return g.add("Convolution", x, f"0={w.shape[0]} 1={w.shape[2]} 4={w.shape[2] // 2} 5=1 6={w.size}" + (f" {LRELU}" if act else ""), name)

    def scaled_sum(y: str, x: str) -> str:  # y * 0.2 + x
        return g.add("BinaryOp", [g.add("BinaryOp", [y], "0=2 1=1 2=0.2"), x], "0=0")

    g.layers.append(("Input", "data", [], ["data"], "0=0 1=0 2=3"))  # C=3, H and W any
    feat = conv(["data"], "conv_first", False)
    x = feat
    for i in range(num_block):
        r = x
        for k in (1, 2, 3):
            y, grown = r, [r]
            for c in range(1, 6):
                out = conv([grown[0]] if c == 1 else [g.add("Concat", list(grown), "0=0")], f"body.{i}.rdb{k}.conv{c}", c < 5)
                grown.append(out)
            r = scaled_sum(out, y)
        x = scaled_sum(r, x)
    x = g.add("BinaryOp", [feat, conv([x], "conv_body", False)], "0=0")
    for up in ("conv_up1", "conv_up2"):
        x = conv([g.add("Interp", [x], "0=1 1=2.000000e+00 2=2.000000e+00")], up, True)
    x = conv([conv([x], "conv_hr", True)], "conv_last", False)
    assert len(weights) == len(rrdb_names(num_block))
    return g.text(x), b"".join(weights)


def _blob(w: np.ndarray, fp16: bool) -> bytes:
    """A weight blob as ncnn's loader reads it: a 4-byte storage tag, the values, padded to 4 bytes."""
    if not fp16:
        return b"\0\0\0\0" + w.astype("<f4").tobytes()
    data = w.astype("<f2").tobytes()
    return NCNN_FP16.to_bytes(4, "little") + data + b"\0" * (-len(data) % 4)
