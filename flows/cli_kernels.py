"""`realsr kernels train-prior | check-prior`: the learned kernel prior's command line."""

from __future__ import annotations

import sys
from pathlib import Path

from realsr.models.errors import InputError


def add_parser(sub) -> None:
    k = sub.add_parser("kernels", help="the learned kernel prior of --kernels kernelgan-fkp: train one, or check a prior file")
    ks = k.add_subparsers(dest="kernels_command", required=True)
    t = ks.add_parser("train-prior", help="train the kernel prior (a normalising flow over blur kernels) into a .pt file, with its .sha256")
    t.add_argument("--out", required=True, type=Path, help="the prior file to write (.pt)")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped prior's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="replace an existing file")
    c = ks.add_parser("check-prior", help="verify a prior file (sha256, version) and print what it covers")
    c.add_argument("prior", nargs="?", default="builtin", help="a .pt file, or `builtin` (the shipped prior)")


def run(args) -> int:
    if args.kernels_command == "train-prior":
        from realsr.steps.kernel_prior import train_prior_file

        if args.steps is not None and args.steps < 1:
            raise InputError(f"--steps {args.steps}: must be at least 1")
        train_prior_file(args.out, args.steps, args.seed, args.force, log=lambda m: print(m, file=sys.stderr))
        return 0
    from realsr.storage.kernel_prior_file import load

    _, record = load(args.prior)
    cfg = record["config"]
    print(
        f"{args.prior}: sha256 {record['sha256']}, version {record['version']}, held-out negative log-likelihood {record['held_out_nll_per_tap']} nats per tap"
    )
    print(
        f"covers {cfg['size']}x{cfg['size']} x2 kernels: Gaussian axis widths {cfg['sigma_min']}-{cfg['sigma_max']} px at any angle, "
        f"up to {cfg['jitter']} px off-centre, up to {100 * cfg['tap_noise']:.0f} % noise per tap, and the bicubic kernel"
    )
    return 0
