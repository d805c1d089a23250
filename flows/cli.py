"""`realsr`: the command line.

  realsr degrade --source DIR --out RUN_DIR [--scale 4] [--kernels bicubic|bank:PATH] ...
  realsr inspect RUN_DIR/kernels.zarr|noise.zarr [--sheet OUT.png]
  realsr upscale -i IN -o OUT [--model PATH|NAME] [-s OUTSCALE] [-t TILE] [--tile-pad P] ...
  realsr blend A B ALPHA -o OUT.pth        network interpolation: (1 - ALPHA) A + ALPHA B
  realsr export MODEL [-o OUTDIR] [--onnx] [--ncnn] [--safetensors] [--fp16]   verified exports + a model card
  realsr evaluate --lr DIR [--hr DIR] --model CKPT [--model CKPT ...] --out DIR [-s 4]
  realsr train RUN_DIR --out TRAIN_DIR [--preset paper|finetune|finetune-cpu|cpu-small|test-tiny] [--init CKPT] [--auto-resume]
  realsr weights list | fetch [NAME ...] | verify   the released and backbone weights, verified by sha256
  realsr kernels train-prior --out PRIOR.pt | check-prior [PRIOR.pt]   the learned kernel prior
  realsr sample --out DIR [--count 8]      synthetic camera photos to try the pipeline on
  realsr pipeline --source PHOTOS --out DIR [--preset auto|product|cpu|demo|test-tiny]   degrade -> train -> evaluate
  realsr stack up|down|status --home DIR   server, pools, deployments, workers on this machine
  realsr demo [DIR]                        sample photos -> the pipeline's demo preset, all embedded
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from pydantic import ValidationError

_EVALUATE_SKIP = {"lr", "hr", "models", "out"}


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _parser() -> argparse.ArgumentParser:
    from realsr.flows import cli_degrade, cli_export, cli_kernels, cli_pipeline, cli_train, cli_weights, stack
    from realsr.flows.cli_fields import add_fields, field_default
    from realsr.flows.settings import EvaluateSettings

    p = argparse.ArgumentParser(prog="realsr", description="RealSR degradation pipeline (Prefect + Dask + Zarr).")
    sub = p.add_subparsers(dest="command", required=True)
    cli_degrade.add_parser(sub)
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
    u.add_argument("--format", dest="format", default="auto", choices=["auto", "png", "jpg", "webp", "heic"], help="output format; auto keeps the input's; PNG where the format holds no alpha or 16 bits (heic: pip install 'realsr-pipeline[heic]')")
    u.add_argument("--ext", dest="format", default=argparse.SUPPRESS, choices=["auto", "png", "jpg", "webp", "heic"], help="deprecated: the same as --format")
    u.add_argument("--quality", type=int, default=None, choices=range(1, 101), metavar="1-100", help="JPEG, WebP, HEIC and AVIF quality (default 95; WebP lossless unless given, 100: lossless)")
    u.add_argument("--profile", default="srgb", choices=["srgb", "keep"], help="srgb: colours converted to sRGB, an sRGB ICC profile written (also for untagged inputs); keep: the input's own profile kept, colours untouched")
    u.add_argument("--suffix", default="out", help="appended to output file names ('' for none)")
    u.add_argument("--alpha", default="model", choices=["model", "bicubic"], help="how an alpha channel is upscaled")
    u.add_argument("--batch", type=int, default=4, help="same-sized small images per forward pass (1: one at a time)")
    u.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    u.add_argument("--blend", type=_share, default=None, metavar="ALPHA", help="fidelity/perception control: the model's share in a weight blend with --blend-with (0..1; 1: the model as it is)")
    u.add_argument("--blend-with", default=None, metavar="MODEL", help="what --blend mixes in (default: the init the model records, e.g. realesrgan-x4plus)")
    u.add_argument("--overwrite", action="store_true", help="replace existing output files that upscale did not write (its own earlier outputs are always replaced)")
    u.add_argument("--max-megapixels", type=_positive, default=200.0, help="refuse larger images (read from the header, before decoding)")
    u.add_argument("--max-memory", type=_positive, default=None, metavar="GB", help="host memory one image may take, estimated from its header (default: 80%% of this machine's); over it an image is tiled, or refused where tiling cannot help")
    b = sub.add_parser("blend", help="network interpolation: write (1 - ALPHA) x A + ALPHA x B as a checkpoint")
    b.add_argument("a", help="checkpoint or released name (ALPHA 0 gives it)")
    b.add_argument("b", help="checkpoint or released name of the same architecture (ALPHA 1 gives it)")
    b.add_argument("alpha", type=_share, help="B's share, 0..1")
    b.add_argument("-o", "--output", required=True, type=Path, help="the .pth to write (BasicSR layout)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e = sub.add_parser("evaluate", help="models side by side (and bicubic) on LR test images, with metrics when HR is given")
    fields = EvaluateSettings.model_fields
    e.add_argument("--lr", required=True, type=Path, help=fields["lr"].description)
    e.add_argument("--hr", type=Path, default=None, help=fields["hr"].description)
    e.add_argument("--model", dest="models", action="append", default=[], help=f"{fields['models'].description} Repeat for more models.")
    e.add_argument("--out", required=True, type=Path, help=fields["out"].description)
    add_fields(e, EvaluateSettings, _EVALUATE_SKIP, field_default, short={"scale": "-s", "tile": "-t"})
    cli_train.add_parser(sub)
    cli_export.add_parser(sub)
    cli_weights.add_parser(sub)
    cli_kernels.add_parser(sub)
    cli_pipeline.add_parser(sub)
    stack.add_arguments(sub.add_parser("stack", help="a Prefect server, pools, deployments and workers on this machine: up, down, status"))
    s = sub.add_parser("sample", help="write seeded synthetic camera photos")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("demo", help="sample photos, then the pipeline's demo preset: degrade, fine-tune a released model, evaluate")
    m.add_argument("run_dir", nargs="?", type=Path, default=Path("runs/demo"))
    cli_degrade.runtime_flags(m)
    return p


def run_upscale(args) -> int:
    """`realsr upscale`: 0 when every input was written, 1 when some failed or were held back by a
    file upscale did not write (listed at the end), 2 when nothing was written."""
    from tqdm import tqdm

    from realsr.steps.upscale import LogProgress, UpscaleOptions, upscale_files

    precision = "fp32" if args.fp32 else ("bf16" if args.bf16 else "fp16")
    opts = UpscaleOptions(
        outscale=args.outscale, tile=args.tile, tile_pad=args.tile_pad, precision=precision, ext=args.format, quality=args.quality, profile=args.profile, suffix=args.suffix, alpha=args.alpha, batch=max(1, args.batch),
        overwrite=args.overwrite, max_megapixels=args.max_megapixels, max_memory_gb=args.max_memory,
    )
    log = lambda m: tqdm.write(m, file=sys.stderr)  # noqa: E731
    with tqdm(total=1, unit="tile", file=sys.stderr, leave=False, disable=None) as bar:  # no terminal: plain lines instead
        report = upscale_files(args.input, args.output, args.model, opts, args.device, LogProgress(log) if bar.disable else bar, log=log, blend=args.blend, blend_with=args.blend_with)
    print(f"{len(report.written)} written, {len(report.failed)} failed, {len(report.skipped) + len(report.kept)} skipped", file=sys.stderr)
    for f in report.failed:
        print(f"  FAILED {f['source']}: {f['reason']}", file=sys.stderr)
    for f in report.skipped + report.kept:
        print(f"  skipped {f['source']}: {f['reason']}", file=sys.stderr)
    for w in report.written:
        if w["notes"]:
            print(f"  note {w['source']}: {'; '.join(w['notes'])}", file=sys.stderr)
    if not report.written:
        return 2
    return 0 if report.done else 1


def run_evaluate(args) -> int:
    """`realsr evaluate` against the configured Prefect API or an embedded one; prints the means."""
    from realsr.flows import preflight
    from realsr.flows.cli_fields import given
    from realsr.flows.evaluate import evaluate_flow
    from realsr.flows.runtime import prefect_api
    from realsr.flows.settings import EvaluateSettings

    settings = EvaluateSettings(lr=args.lr, hr=args.hr, models=args.models, out=args.out, **given(args, EvaluateSettings, _EVALUATE_SKIP))
    preflight.evaluate(settings)
    with prefect_api():
        result = evaluate_flow(settings)
    print((Path(result["out"]) / "results.md").read_text())
    print(f"{result['computed']} computed, {result['cached']} from the cache; per image: {result['csv']}; sheet: {result['sheet']}")
    for f in result["failures"]:
        print(f"FAILED {f['model']} on {f['image']}: {f['reason']}", file=sys.stderr)
    from realsr.flows.exit_codes import outcome

    return outcome(result["computed"] + result["cached"], len(result["failures"]))


def main(argv: list[str] | None = None) -> int:
    """The command; Ctrl-C and SIGTERM stop it and everything it started (flows/stopping.py), a
    full disk ends it in one line naming the file."""
    from realsr.flows import stopping
    from realsr.flows.runtime import apply_env_defaults

    apply_env_defaults()  # before prefect/dask are imported: their logging reads it once
    with stopping.handled():
        try:
            code = _main(argv)
        except BaseException as e:
            if stopping.requested():
                code = None
            elif isinstance(e, OSError) and _unwritable(e):
                code = 2
            else:
                raise
        # also where a signal's exception was caught and wrapped on its way (an item's failure)
        return stopping.finish() if stopping.requested() else code


def _unwritable(e: OSError) -> bool:
    """Say, in one line, which write a full (or read-only) disk refused; False for other errors."""
    from realsr.storage.atomic import NO_RETRY_ERRNOS, space_left

    if e.errno not in NO_RETRY_ERRNOS:
        return False
    path = e.filename or "(a file the error does not name)"
    if e.errno == errno.EROFS:
        print(f"error: read-only file system: cannot write {path}", file=sys.stderr)
    else:
        print(f"error: no space left on device writing {path} ({space_left(path)} on that filesystem)", file=sys.stderr)
    return True


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from realsr.flows import stopping
    from realsr.steps.degrade_noise import EmptyNoiseBank

    try:
        if args.command == "degrade":
            from realsr.flows.cli_degrade import run

            return run(args)
        if args.command == "inspect":
            from realsr.steps.inspect import inspect_bank

            print(inspect_bank(args.bank, args.sheet))
            return 0
        if args.command == "upscale":
            return run_upscale(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "blend":
            from realsr.steps.blend import write_blend

            print(write_blend(args.a, args.b, args.alpha, args.output, args.overwrite))
            return 0
        if args.command == "train":
            from realsr.flows.cli_train import run_train

            return run_train(args)
        if args.command == "export":
            from realsr.flows.cli_export import run_export

            return run_export(args)
        if args.command == "weights":
            from realsr.flows.cli_weights import run_weights

            return run_weights(args)
        if args.command == "kernels":
            from realsr.flows.cli_kernels import run_kernels

            return run_kernels(args)
        if args.command == "sample":
            from realsr.flows.demo import write_samples

            for p in write_samples(args.out, args.count, args.seed):
                print(p)
            return 0
        if args.command == "stack":
            from realsr.flows.stack import run

            return run(args)
        if args.command == "pipeline":
            from realsr.flows.cli_pipeline import run

            return run(args)
        if args.command == "demo":
            from realsr.flows.demo import run_demo

            return run_demo(args.run_dir, args.workers, args.dask_address)
    except ValidationError as e:
        if stopping.requested():
            raise
        print("invalid settings:", file=sys.stderr)
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            print(f"  {where}: {err['msg']}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError, EmptyNoiseBank, FloatingPointError) as e:  # CheckpointError, TrainingDataError: ValueErrors
        if stopping.requested():  # a Ctrl-C's exception, wrapped on its way: not an error of the run
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
