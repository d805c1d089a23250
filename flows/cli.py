"""`realsr`: the command line.

  realsr degrade --source DIR --out RUN_DIR [--scale 4] [--kernels bicubic|bank:PATH] ...
  realsr inspect RUN_DIR/kernels.zarr|noise.zarr [--sheet OUT.png]
  realsr upscale -i IN -o OUT [--model PATH|NAME] [-s OUTSCALE] [-t TILE] [--tile-pad P] ...
  realsr evaluate --lr DIR [--hr DIR] --model CKPT [--model CKPT ...] --out DIR [-s 4]
  realsr train RUN_DIR --out TRAIN_DIR [--preset paper|finetune|cpu-small|test-tiny] [--init CKPT] [--auto-resume]
  realsr weights list | fetch [NAME ...] | verify   the released and backbone weights, verified by sha256
  realsr sample --out DIR [--count 8]      synthetic camera photos to try the pipeline on
  realsr demo [RUN_DIR]                    sample photos -> degrade -> inspect -> fine-tune -> evaluate, all embedded
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

_FLAGS = {
    "scale": int,
    "kernels": str,
    "cleanup_factor": int,
    "noise_rule": str,
    "noise_tile": int,
    "noise_tolerance": float,
    "noise_max_per_image": int,
    "noise_match_brightness": lambda v: {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}[v.lower()],
    "noise_min_patches": int,
    "on_empty_noise": str,
    "noise_patch_size": int,
    "noise_stride": int,
    "noise_max_var": float,
    "noise_min_mean": float,
    "pair_hr_size": int,
    "pair_stride": int,
    "seed": int,
    "max_megapixels": float,
    "images_per_task": int,
    "kernelgan_iterations": int,
    "kernelgan_seeds": int,
    "kernelgan_device": str,
    "kernelgan_batch": int,
}


def _parser() -> argparse.ArgumentParser:
    from flows.settings import DegradeSettings

    p = argparse.ArgumentParser(prog="realsr", description="RealSR degradation pipeline (Prefect + Dask + Zarr).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("degrade", help="build kernel and noise banks and HR/LR pairs from a folder of photos")
    d.add_argument("--source", required=True, type=Path)
    d.add_argument("--out", required=True, type=Path)
    for name, typ in _FLAGS.items():
        field = DegradeSettings.model_fields[name]
        default = "" if "default" in (field.description or "") else f" (default {field.default})"
        d.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"{field.description}{default}")
    _runtime_flags(d)
    i = sub.add_parser("inspect", help="statistics and a PNG contact sheet of a kernel or noise bank")
    i.add_argument("bank", type=Path)
    i.add_argument("--sheet", type=Path, default=None, help="where to write the PNG (default: beside the bank)")
    u = sub.add_parser("upscale", help="super-resolve a photo or a folder of photos with an SR generator")
    u.add_argument("-i", "--input", required=True, type=Path, help="an image file or a folder of images")
    u.add_argument("-o", "--output", required=True, type=Path, help="output folder (or file name for one input)")
    u.add_argument("--model", default="realesrgan-x4plus", help="checkpoint path, or a released generator's name (realsr weights list), fetched on first use")
    u.add_argument("-s", "--outscale", type=float, default=None, help="final upscale factor (a Lanczos resize after the model); default the model's scale")
    u.add_argument("-t", "--tile", type=int, default=0, help="tile size in input px, 0 for none (use it when memory runs short)")
    u.add_argument("--tile-pad", type=int, default=48, help="context around each tile, px (more: closer to untiled output)")
    u.add_argument("--fp32", action="store_true", help="fp32 on the GPU too (default there: fp16)")
    u.add_argument("--bf16", action="store_true", help="bf16 instead of fp16 on the GPU")
    u.add_argument("--ext", default="auto", choices=["auto", "png", "jpg"], help="output format; auto keeps the input's (PNG where alpha or 16-bit needs it)")
    u.add_argument("--suffix", default="out", help="appended to output file names ('' for none)")
    u.add_argument("--alpha", default="model", choices=["model", "bicubic"], help="how an alpha channel is upscaled")
    u.add_argument("--batch", type=int, default=4, help="same-sized small images per forward pass (1: one at a time)")
    u.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e = sub.add_parser("evaluate", help="models side by side (and bicubic) on LR test images, with metrics when HR is given")
    e.add_argument("--lr", required=True, type=Path, help="folder of LR test images")
    e.add_argument("--hr", type=Path, default=None, help="folder of HR ground truth, matched by file stem")
    e.add_argument("--model", action="append", default=[], help="checkpoint path or known name; repeat for more models")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("-s", "--scale", type=int, default=4)
    e.add_argument("--crop-border", type=int, default=None, help="pixels dropped on each side before PSNR/SSIM (default: the scale)")
    e.add_argument("-t", "--tile", type=int, default=0)
    e.add_argument("--tile-pad", type=int, default=48)
    e.add_argument("--device", default="auto")
    e.add_argument("--lpips-alexnet", type=Path, default=None, help="AlexNet file for LPIPS (default: the verified `alexnet` weights, see realsr weights list)")
    from flows import cli_train, cli_weights

    cli_train.add_parser(sub)
    cli_weights.add_parser(sub)
    s = sub.add_parser("sample", help="write seeded synthetic camera photos")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("demo", help="sample photos, degrade them, inspect the banks, fine-tune a released model, evaluate")
    m.add_argument("run_dir", nargs="?", type=Path, default=Path("runs/demo"))
    _runtime_flags(m)
    return p


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: CPU cores)")
    p.add_argument("--dask-address", default=None, help="tcp://host:port of an existing Dask scheduler")


def run_degrade(settings, workers: int | None = None, address: str | None = None) -> dict:
    """Run degrade-flow on a Dask cluster, against the configured Prefect API or an embedded one."""
    from flows.degrade import degrade_flow
    from flows.runtime import prefect_api, task_runner

    previous = os.environ.get("REALSR_DASK_WORKERS")
    if workers:
        os.environ["REALSR_DASK_WORKERS"] = str(workers)  # the flow splits KernelGAN work by it
    try:
        with prefect_api():
            return degrade_flow.with_options(task_runner=task_runner(workers, address))(settings)
    finally:
        if previous is None:
            os.environ.pop("REALSR_DASK_WORKERS", None)
        else:
            os.environ["REALSR_DASK_WORKERS"] = previous


def write_samples(out: Path, count: int, seed: int) -> list[Path]:
    import cv2

    from models.synthetic import camera_photo
    from storage.atomic import write_bytes

    paths = []
    for i in range(count):
        img = camera_photo(seed * 1000 + i)
        bgr = (img[..., ::-1] * 255 + 0.5).astype("uint8")
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        path = Path(out) / f"sample_{i:02d}.jpg"
        write_bytes(path, buf.tobytes())
        paths.append(path)
    return paths


def run_upscale(args) -> int:
    """`realsr upscale`: 0 when every input was written, 1 when some failed (listed at the end)."""
    import torch
    from tqdm import tqdm

    from models.devices import resolve_device
    from storage.checkpoints import load_generator
    from storage.upscaling import UpscaleOptions, inputs, plan_outputs, upscale_paths

    device = resolve_device(args.device)
    precision = "fp32" if args.fp32 or device.type == "cpu" else ("bf16" if args.bf16 else "fp16")
    opts = UpscaleOptions(outscale=args.outscale, tile=args.tile, tile_pad=args.tile_pad, precision=precision, ext=args.ext, suffix=args.suffix, alpha=args.alpha, batch=max(1, args.batch))
    paths, others = inputs(args.input)
    plan_outputs(paths, args.output, opts)  # names and the folder checked before the model loads
    gen = load_generator(args.model)
    gen.model.to(device)
    if device.type == "cuda" and precision != "fp32":
        gen.model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    gen.model.to(memory_format=torch.channels_last)  # 1.19x on this CPU too (BENCHMARKS.md)
    print(f"{gen.describe()} on {device} ({precision}); {len(paths)} image(s); tile {args.tile or 'off'}", file=sys.stderr)
    with tqdm(total=1, unit="tile", file=sys.stderr, leave=False, disable=None) as bar:
        report = upscale_paths(paths, args.output, gen, opts, device, bar, log=lambda m: tqdm.write(m, file=sys.stderr))
    skipped = others + report.skipped
    print(f"{len(report.written)} written, {len(report.failed)} failed, {len(skipped)} skipped", file=sys.stderr)
    for f in report.failed:
        print(f"  FAILED {f['source']}: {f['reason']}", file=sys.stderr)
    for f in skipped:
        print(f"  skipped {f['source']}: {f['reason']}", file=sys.stderr)
    for w in report.written:
        if w["notes"]:
            print(f"  note {w['source']}: {'; '.join(w['notes'])}", file=sys.stderr)
    return 1 if report.failed else 0


def run_evaluate(args) -> int:
    """`realsr evaluate` against the configured Prefect API or an embedded one; prints the means."""
    from flows import preflight
    from flows.evaluate import evaluate_flow
    from flows.runtime import prefect_api
    from flows.settings import EvaluateSettings

    settings = EvaluateSettings(
        lr=args.lr, hr=args.hr, models=args.model, out=args.out, scale=args.scale, crop_border=args.crop_border,
        tile=args.tile, tile_pad=args.tile_pad, device=args.device, lpips_alexnet=args.lpips_alexnet,
    )
    preflight.evaluate(settings)
    with prefect_api():
        result = evaluate_flow(settings)
    print((Path(result["out"]) / "results.md").read_text())
    print(f"{result['computed']} computed, {result['cached']} from the cache; per image: {result['csv']}; sheet: {result['sheet']}")
    for f in result["failures"]:
        print(f"FAILED {f['model']} on {f['image']}: {f['reason']}", file=sys.stderr)
    return 1 if result["failures"] else 0


def _print_result(summary: dict) -> None:
    from flows.degrade import summary_markdown

    print(summary_markdown(summary))
    if summary["noise_bank"].get("warning"):
        print(f"\nWARNING: {summary['noise_bank']['warning']}\n", file=sys.stderr)
    root = Path(summary["run_dir"])
    print(f"inspect the banks with:\n  realsr inspect {root / 'kernels.zarr'}\n  realsr inspect {root / 'noise.zarr'}")


def main(argv: list[str] | None = None) -> int:
    from flows.runtime import apply_env_defaults

    apply_env_defaults()  # before prefect/dask are imported: their logging reads it once
    # SIGTERM unwinds like Ctrl-C, so the embedded API server and the Dask cluster are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = _parser().parse_args(argv)
    from flows import preflight
    from flows.settings import DegradeSettings
    from storage.noise_stage import EmptyNoiseBank

    try:
        if args.command == "degrade":
            given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
            settings = DegradeSettings(source=args.source, out=args.out, **given)
            preflight.degrade(settings)
            summary = run_degrade(settings, args.workers, args.dask_address)
            _print_result(summary)
            return 1 if summary["processed"] == 0 else 0
        if args.command == "inspect":
            from storage.inspect import inspect_bank

            print(inspect_bank(args.bank, args.sheet))
            return 0
        if args.command == "upscale":
            return run_upscale(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "train":
            from flows.cli_train import run_train

            return run_train(args)
        if args.command == "weights":
            from flows.cli_weights import run_weights

            return run_weights(args)
        if args.command == "sample":
            for p in write_samples(args.out, args.count, args.seed):
                print(p)
            return 0
        if args.command == "demo":
            from flows.demo import run_demo

            return run_demo(args.run_dir, args.workers, args.dask_address)
    except ValidationError as e:
        print("invalid settings:", file=sys.stderr)
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            print(f"  {where}: {err['msg']}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError, EmptyNoiseBank, FloatingPointError) as e:  # CheckpointError, TrainingDataError: ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
