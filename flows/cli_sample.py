"""`realsr sample --out DIR [--count 8] [--seed 0]`: synthetic camera photos to try the pipeline on."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    s = sub.add_parser("sample", help="write seeded synthetic camera photos")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from realsr.flows.demo import write_samples

    for p in write_samples(args.out, args.count, args.seed):
        print(p)
    return 0
