"""The formats `realsr export` writes, and each one run in its own runtime to prove it.

ONNX through torch's TorchScript exporter (`dynamo=False`: the dynamo one needs onnxscript,
which the export extra does not carry), dynamic batch, height and width, run by onnxruntime on
the CPU. ncnn with the blob names realesrgan-ncnn-vulkan and Upscayl feed and read (`data`,
`output`, as in the released models): an x4 RRDBNet written layer by layer in the released
models' layout, anything else through pnnx (ncnn's authors' converter); run by the `ncnn`
package on the CPU with fp16 off. safetensors:
the generator's tensors under BasicSR's names, reloaded by the product's own loader.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from realsr.models.errors import RealsrError
from realsr.models.rrdbnet import RRDBNet
from realsr.storage.ncnn_write import rrdb_ncnn

EXTRA = "pip install 'realsr-pipeline[export]'"
NCNN_IN, NCNN_OUT = "data", "output"  # what realesrgan-ncnn-vulkan (and Upscayl's fork) feed and extract
PNNX_IN, PNNX_OUT = "in0", "out0"  # what pnnx names a one-input, one-output graph's blobs


class ExportError(RealsrError, ValueError):
    """An export that could not be written or run, in one line."""


def need(module: str, what: str):
    """The optional package, imported; missing: one line naming it and the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the {module} package: {EXTRA}") from None


class _RRDBx4(nn.Module):
    """RRDBNet x4 without its final crop to h*4 x w*4 (a no-op at x4): the graph is then plain
    convolutions, additions and nearest upsampling, which every ncnn build and ONNX runtime runs
    (pnnx turns the crop into a shape-expression Crop that older ncnn builds reject)."""

    def __init__(self, net: RRDBNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        feat = n.conv_first(x)
        feat = feat + n.conv_body(n.body(feat))
        feat = n.lrelu(n.conv_up1(torch.nn.functional.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = n.lrelu(n.conv_up2(torch.nn.functional.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return n.conv_last(n.lrelu(n.conv_hr(feat)))


def traceable(model: nn.Module) -> nn.Module:
    """The graph to export: a plain-memory fp32 copy of the generator, RRDBNet x4 without its crop."""
    model = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    return _RRDBx4(model).eval() if isinstance(model, RRDBNet) and model.config.scale == 4 else model


def _sample(dtype=torch.float32, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(dtype)


def write_onnx(model: nn.Module, path: Path, opset: int, fp16: bool = False) -> None:
    """The generator as ONNX at `opset`, inputs and outputs (N, 3, H, W) with N, H, W dynamic;
    fp16: weights, activations, input and output in half precision."""
    need("onnx", "ONNX export")
    net = traceable(model)
    dtype = torch.float16 if fp16 else torch.float32
    net = net.to(dtype)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                net,
                (_sample(dtype),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes},
            )
    except Exception as e:
        raise ExportError(f"ONNX export at opset {opset} failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    import onnx

    onnx.checker.check_model(str(path))


def run_onnx(path: Path, rgb: np.ndarray, threads: int = 2) -> np.ndarray:
    """One (H, W, 3) float32 image through the ONNX file in onnxruntime (CPU); (sH, sW, 3) float32."""
    return onnx_session(path, threads)(rgb)


def onnx_session(path: Path, threads: int = 2):
    """A callable (H, W, 3) float32 -> output, holding one onnxruntime session (for timing)."""
    ort = need("onnxruntime", "Running an ONNX export")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32

    def run(rgb: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]).astype(dtype)
        return session.run(None, {inp.name: x})[0][0].astype(np.float32).transpose(1, 2, 0)

    return run


def write_ncnn(model: nn.Module, param: Path, weights: Path, fp16: bool = False) -> None:
    """The generator as ncnn files, blobs `data` -> `output` (the released models' names); fp16:
    weights stored in half precision (as the released ncnn models are). An x4 RRDBNet is written
    directly in the released models' layout (storage/ncnn_write.py: pnnx needs 23 GB for 23
    blocks); any other generator goes through pnnx."""
    if isinstance(model, RRDBNet) and model.config.scale == 4:
        text, data = rrdb_ncnn(model.state_dict(), model.config.num_block, fp16)
        param.write_text(text)
        weights.write_bytes(data)
        return
    write_ncnn_pnnx(model, param, weights, fp16)


def write_ncnn_pnnx(model: nn.Module, param: Path, weights: Path, fp16: bool = False) -> None:
    """Through pnnx (TorchScript in, ncnn out), its blobs `in0`/`out0` renamed `data`/`output`."""
    pnnx = need("pnnx", "ncnn export")
    net = traceable(model)
    with tempfile.TemporaryDirectory(prefix="realsr-pnnx-") as tmp:
        tmp = Path(tmp)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
                torch.jit.trace(net, _sample()).save(str(tmp / "g.pt"))
        except Exception as e:
            raise ExportError(f"ncnn export: tracing the generator failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        files = {k: str(tmp / f"g.{k}") for k in ("ncnnparam", "ncnnbin", "pnnxparam", "pnnxbin", "pnnxonnx")}
        files.update(pnnxpy=str(tmp / "g_pnnx.py"), ncnnpy=str(tmp / "g_ncnn.py"))
        # two input shapes: pnnx then records height and width as dynamic
        cmd = [
            pnnx.EXEC_PATH,
            str(tmp / "g.pt"),
            "inputshape=[1,3,32,32]f32",
            "inputshape2=[1,3,48,40]f32",
            "device=cpu",
            f"fp16={int(fp16)}",
            *(f"{k}={v}" for k, v in files.items()),
        ]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0 or not Path(files["ncnnparam"]).is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"ncnn export: pnnx exited {done.returncode}: {tail[0][:200]}")
        param.write_text(rename_blobs(Path(files["ncnnparam"]).read_text(), {PNNX_IN: NCNN_IN, PNNX_OUT: NCNN_OUT}))
        Path(files["ncnnbin"]).replace(weights)


def rename_blobs(param: str, names: dict[str, str]) -> str:
    """An ncnn .param with blobs (and layers) renamed; each name must be there."""
    lines = param.splitlines()
    seen = set()
    for i, line in enumerate(lines[2:], 2):
        fields = line.split()
        if len(fields) < 4:
            continue
        n = 4 + int(fields[2]) + int(fields[3])  # type, name, #in, #out, in blobs, out blobs, then params
        seen |= set(fields[1:n]) & set(names)
        lines[i] = " ".join([fields[0], *(names.get(f, f) for f in fields[1:n]), *fields[n:]])
    if missing := set(names) - seen:
        raise ExportError(f"ncnn export: pnnx wrote no blob {', '.join(sorted(missing))} (a generator of one input and one output was expected)")
    return "\n".join(lines) + "\n"


def run_ncnn(param: Path, weights: Path, rgb: np.ndarray, threads: int = 2) -> np.ndarray:
    """One (H, W, 3) float32 image through the ncnn files (the ncnn package, CPU, fp32 arithmetic)."""
    return ncnn_session(param, weights, threads)(rgb)


def ncnn_session(param: Path, weights: Path, threads: int = 2):
    """A callable (H, W, 3) float32 -> output, holding one loaded ncnn net (for timing)."""
    ncnn = need("ncnn", "Running an ncnn export")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.num_threads = threads
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ExportError(f"{param.name}: ncnn could not load it (or {weights.name})")

    def run(rgb: np.ndarray) -> np.ndarray:
        ex = net.create_extractor()
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32)  # kept alive: ncnn.Mat wraps its memory
        ex.input(NCNN_IN, ncnn.Mat(chw))
        rc, out = ex.extract(NCNN_OUT)
        if rc != 0:
            raise ExportError(f"{param.name}: ncnn could not run it (extract returned {rc})")
        return np.array(out).transpose(1, 2, 0)

    return run


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """The tensors (BasicSR's names, their own dtype) with string metadata, as one safetensors file."""
    need("safetensors", "safetensors export")
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
