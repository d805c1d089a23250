"""`realsr degrade --source DIR --out RUN_DIR [--scale 4] [--kernels bicubic|kernelgan|...] ...`.

Every DegradeSettings field is a flag (`--noise-rule`, `--no-noise-match-brightness`); the demo
runs degrade-flow through `run_degrade` too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realsr.flows.cli_fields import add_fields, field_default, given
from realsr.storage.remote import is_url

_SKIP = {"source", "out"}


def runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: CPU cores)")
    p.add_argument("--dask-address", default=None, help="tcp://host:port of an existing Dask scheduler")


def add_parser(sub) -> None:
    from realsr.flows.settings import DegradeSettings

    d = sub.add_parser("degrade", help="build kernel and noise banks and HR/LR pairs from a folder of photos")
    d.add_argument("--source", required=True, help=DegradeSettings.model_fields["source"].description)
    d.add_argument("--out", required=True, help=DegradeSettings.model_fields["out"].description)
    add_fields(d, DegradeSettings, _SKIP, field_default)
    runtime_flags(d)


def run_degrade(settings, workers: int | None = None, address: str | None = None) -> dict:
    """Run degrade-flow on a Dask cluster, against the configured Prefect API or an embedded one."""
    from realsr.flows.degrade import degrade_flow
    from realsr.flows.runtime import cluster_env, prefect_api, task_runner

    with cluster_env(workers, address):  # the flow splits KernelGAN work by the cluster's size
        with prefect_api():
            return degrade_flow.with_options(task_runner=task_runner(workers, address))(settings)


def print_result(summary: dict) -> None:
    from realsr.flows.degrade_report import summary_markdown

    print(summary_markdown(summary))
    if summary["noise_bank"].get("warning"):
        print(f"\nWARNING: {summary['noise_bank']['warning']}\n", file=sys.stderr)
    root = summary["run_dir"].rstrip("/")
    if is_url(root):
        print(f"open the banks with zarr:\n  zarr.open_group('{root}/kernels.zarr', mode='r')\n  zarr.open_group('{root}/noise.zarr', mode='r')")
    else:
        print(f"inspect the banks with:\n  realsr inspect {Path(root) / 'kernels.zarr'}\n  realsr inspect {Path(root) / 'noise.zarr'}")


def run(args) -> int:
    """`realsr degrade`: the exit-code rule (flows/cli.py `outcome`) over the source photos;
    a run that made nothing usable raises (exit 2)."""
    from realsr.flows import preflight
    from realsr.flows.exit_codes import failed_photos, outcome
    from realsr.flows.settings import DegradeSettings
    from realsr.steps.mirrors import held

    settings = DegradeSettings(source=args.source, out=args.out, **given(args, DegradeSettings, _SKIP))
    preflight.degrade(settings)
    with held(settings.source, settings.out):  # one run per folder: a second is refused here, before any server starts
        summary = run_degrade(settings, args.workers, args.dask_address)
    print_result(summary)
    if failed := failed_photos(summary):
        print(
            (
                f"{len(failed)} of {summary['sources']} photos failed (listed above): "
                f"{', '.join(Path(f).name for f in failed[:5])}{' ...' if len(failed) > 5 else ''}"
            ),
            file=sys.stderr,
        )
    return outcome(summary["processed"], len(failed))
