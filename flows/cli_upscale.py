"""`realsr upscale -i IN -o OUT [--model PATH|NAME] [-s OUTSCALE] [-t TILE] [--tile-pad P] ...`:
a photo or a folder of photos through an SR generator, BasicSR's inference CLI's flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realsr.flows.cli_fields import positive, share

FORMATS = ["auto", "png", "jpg", "webp", "heic"]


def add_parser(sub) -> None:
    u = sub.add_parser("upscale", help="super-resolve a photo or a folder of photos with an SR generator")
    u.add_argument("-i", "--input", required=True, type=Path, help="an image file or a folder of images")
    u.add_argument("-o", "--output", required=True, type=Path, help="output folder (or file name for one input)")
    u.add_argument("--model", default="realesrgan-x4plus", help="checkpoint path, or a released generator's name (realsr weights list), fetched on first use")
    u.add_argument("-s", "--outscale", type=float, default=None, help="final upscale factor (a Lanczos resize after the model); default the model's scale")
    u.add_argument("-t", "--tile", type=int, default=0, help="tile size in input px, 0 for none (use it when memory runs short)")
    u.add_argument("--tile-pad", type=int, default=48, help="context around each tile, px (more: closer to untiled output)")
    u.add_argument("--fp32", action="store_true", help="fp32 on the GPU too (default there: fp16)")
    u.add_argument("--bf16", action="store_true", help="bf16 instead of fp16 on the GPU")
    u.add_argument(
        "--format",
        dest="format",
        default="auto",
        choices=FORMATS,
        help="output format; auto keeps the input's; PNG where the format holds no alpha or 16 bits (heic: pip install 'realsr-pipeline[heic]')",
    )
    u.add_argument("--ext", dest="format", default=argparse.SUPPRESS, choices=FORMATS, help="deprecated: the same as --format")
    u.add_argument(
        "--quality",
        type=int,
        default=None,
        choices=range(1, 101),
        metavar="1-100",
        help="JPEG, WebP, HEIC and AVIF quality (default 95; WebP lossless unless given, 100: lossless)",
    )
    u.add_argument(
        "--profile",
        default="srgb",
        choices=["srgb", "keep"],
        help="srgb: colours converted to sRGB, an sRGB ICC profile written (also for untagged inputs); keep: the input's own profile kept, colours untouched",
    )
    u.add_argument("--suffix", default="out", help="appended to output file names ('' for none)")
    u.add_argument("--alpha", default="model", choices=["model", "bicubic"], help="how an alpha channel is upscaled")
    u.add_argument("--batch", type=int, default=4, help="same-sized small images per forward pass (1: one at a time)")
    u.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    u.add_argument(
        "--blend",
        type=share,
        default=None,
        metavar="ALPHA",
        help="fidelity/perception control: the model's share in a weight blend with --blend-with (0..1; 1: the model as it is)",
    )
    u.add_argument("--blend-with", default=None, metavar="MODEL", help="what --blend mixes in (default: the init the model records, e.g. realesrgan-x4plus)")
    u.add_argument(
        "--overwrite", action="store_true", help="replace existing output files that upscale did not write (its own earlier outputs are always replaced)"
    )
    u.add_argument("--max-megapixels", type=positive, default=200.0, help="refuse larger images (read from the header, before decoding)")
    u.add_argument(
        "--max-memory",
        type=positive,
        default=None,
        metavar="GB",
        help=(
            "host memory one image may take, estimated from its header (default: 80%% of this machine's); over it an image is tiled, or refused where tiling "
            "cannot help"
        ),
    )


def run(args) -> int:
    """0 when every input was written, 1 when some failed or were held back by a file upscale did
    not write (listed at the end), 2 when nothing was written."""
    from tqdm import tqdm

    from realsr.steps.upscale import LogProgress, UpscaleOptions, upscale_files

    precision = "fp32" if args.fp32 else ("bf16" if args.bf16 else "fp16")
    opts = UpscaleOptions(
        outscale=args.outscale,
        tile=args.tile,
        tile_pad=args.tile_pad,
        precision=precision,
        ext=args.format,
        quality=args.quality,
        profile=args.profile,
        suffix=args.suffix,
        alpha=args.alpha,
        batch=max(1, args.batch),
        overwrite=args.overwrite,
        max_megapixels=args.max_megapixels,
        max_memory_gb=args.max_memory,
    )
    log = lambda m: tqdm.write(m, file=sys.stderr)  # noqa: E731
    with tqdm(total=1, unit="tile", file=sys.stderr, leave=False, disable=None) as bar:  # no terminal: plain lines instead
        report = upscale_files(
            args.input,
            args.output,
            args.model,
            opts,
            args.device,
            LogProgress(log) if bar.disable else bar,
            log=log,
            blend=args.blend,
            blend_with=args.blend_with,
        )
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
