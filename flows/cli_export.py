"""`realsr export MODEL [-o OUTDIR] [--onnx] [--ncnn] [--safetensors] [--fp16] [--opset N] ...`:
the generator for the tools people already use (onnxruntime, chaiNNer, Upscayl,
realesrgan-ncnn-vulkan), each file verified in its own runtime first (steps/export.py)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    x = sub.add_parser("export", help="the generator as ONNX, ncnn and safetensors files with a model card, each verified against realsr upscale within 1/255")
    x.add_argument("model", help="checkpoint path (a pipeline's trained.pth, a training's net_g_*.pth) or a released generator's name")
    x.add_argument("-o", "--out", type=Path, default=Path("export"), help="output folder (default: ./export)")
    x.add_argument("--onnx", action="store_true", help="NAME.onnx: dynamic batch, height and width (onnxruntime, chaiNNer)")
    x.add_argument("--ncnn", action="store_true", help="NAME.param + NAME.bin through pnnx, blobs data/output (Upscayl, realesrgan-ncnn-vulkan)")
    x.add_argument("--safetensors", action="store_true", help="NAME.safetensors: the tensors under BasicSR's names (chaiNNer, spandrel)")
    x.add_argument("--fp16", action="store_true", help="also NAME.fp16.onnx, and ncnn weights stored in fp16 (half the size); refused too if over 1/255")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    x.add_argument("--verify-images", type=Path, metavar="DIR", help="photos to verify on (default: a pipeline's held-out crops, else synthetic photos)")
    x.add_argument("--name", default=None, help="file stem (default: the released name, the pipeline folder's, or the checkpoint's)")
    x.add_argument("--force", action="store_true", help="replace files of the same names in OUTDIR")


def run(args) -> int:
    """0: every format kept; 1: some refused; 2: none kept (or refused before any work)."""
    from realsr.flows.exit_codes import outcome
    from realsr.models.devices import use_compute_threads
    from realsr.steps.export import FORMATS, ExportSpec, export_model

    formats = tuple(f for f in FORMATS if getattr(args, f)) or FORMATS
    if not 7 <= args.opset <= 21:
        print(f"error: --opset {args.opset}: ONNX opsets 7 to 21 are offered (17 is the default)", file=sys.stderr)
        return 2
    use_compute_threads()
    spec = ExportSpec(
        model=args.model, out=args.out, formats=formats, fp16=args.fp16, opset=args.opset, verify_images=args.verify_images, force=args.force, name=args.name
    )
    try:
        report = export_model(spec, log=lambda m: print(m, file=sys.stderr))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in report.refused:
        print(f"REFUSED {r['format']}: {r['reason']}", file=sys.stderr)
    for k in report.kept:
        print("\n".join(k["files"]))
    if report.card:
        print(report.card)
        print(report.sheet)
    return outcome(len(report.kept), len(report.refused))
