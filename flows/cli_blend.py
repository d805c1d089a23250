"""`realsr blend A B ALPHA -o OUT.pth`: network interpolation, (1 - ALPHA) A + ALPHA B, as a checkpoint."""

from __future__ import annotations

from pathlib import Path

from realsr.flows.cli_fields import share


def add_parser(sub) -> None:
    b = sub.add_parser("blend", help="network interpolation: write (1 - ALPHA) x A + ALPHA x B as a checkpoint")
    b.add_argument("a", help="checkpoint or released name (ALPHA 0 gives it)")
    b.add_argument("b", help="checkpoint or released name of the same architecture (ALPHA 1 gives it)")
    b.add_argument("alpha", type=share, help="B's share, 0..1")
    b.add_argument("-o", "--output", required=True, type=Path, help="the .pth to write (BasicSR layout)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    from realsr.steps.blend import write_blend

    print(write_blend(args.a, args.b, args.alpha, args.output, args.overwrite))
    return 0
