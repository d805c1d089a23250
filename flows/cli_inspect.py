"""`realsr inspect RUN_DIR/kernels.zarr|noise.zarr [--sheet OUT.png]`: a bank's statistics and contact sheet."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    i = sub.add_parser("inspect", help="statistics and a PNG contact sheet of a kernel or noise bank")
    i.add_argument("bank", type=Path)
    i.add_argument("--sheet", type=Path, default=None, help="where to write the PNG (default: beside the bank)")


def run(args) -> int:
    from realsr.steps.inspect import inspect_bank

    print(inspect_bank(args.bank, args.sheet))
    return 0
