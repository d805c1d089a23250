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

Each subcommand is a module with its `add_parser(sub)` and its `run(args) -> int` (the exit code,
flows/exit_codes.py), listed once in COMMANDS. A `RealsrError` (models/errors.py), and the few
builtin errors that are the user's by nature (USER_ERRORS), end a command in one line; any other
exception is a bug and keeps its traceback, whose last line says where the log is.
"""

from __future__ import annotations

import argparse
import errno
import sys

from pydantic import ValidationError

# light modules (argparse and pydantic's fields only): prefect and dask are imported by each `run`
from realsr.flows import (
    cli_blend,
    cli_degrade,
    cli_evaluate,
    cli_export,
    cli_inspect,
    cli_kernels,
    cli_pipeline,
    cli_sample,
    cli_train,
    cli_upscale,
    cli_weights,
    demo,
    stack,
)
from realsr.models.errors import RealsrError

# `realsr --help` lists them in this order
COMMANDS = {
    "degrade": cli_degrade,
    "inspect": cli_inspect,
    "upscale": cli_upscale,
    "blend": cli_blend,
    "evaluate": cli_evaluate,
    "train": cli_train,
    "export": cli_export,
    "weights": cli_weights,
    "kernels": cli_kernels,
    "pipeline": cli_pipeline,
    "stack": stack,
    "sample": cli_sample,
    "demo": demo,
}
# Refusals said in one line, exit 2: a domain error, or the OS refusing a path the user gave
# (a missing input, an output in the way, no right to read or write it). Settings that pydantic
# refuses are listed field by field. Anything else (ValueError, KeyError, ...) is a bug.
USER_ERRORS = (RealsrError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
FLOW_COMMANDS = {"degrade", "evaluate", "train", "pipeline", "demo"}  # their work runs as Prefect flow runs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realsr", description="RealSR degradation pipeline (Prefect + Dask + Zarr).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command; Ctrl-C and SIGTERM stop it and everything it started (flows/stopping.py), a
    full disk ends it in one line naming the file, a bug with its traceback and where the log is."""
    from realsr.flows import stopping
    from realsr.flows.runtime import apply_env_defaults

    apply_env_defaults()  # before prefect/dask are imported: their logging reads it once
    with stopping.handled():
        args = None
        try:
            args = _parser().parse_args(argv)
            code = _run(args)
        except BaseException as e:
            if stopping.requested():
                code = None
            elif isinstance(e, OSError) and _unwritable(e):
                code = 2
            else:
                if isinstance(e, Exception) and args is not None:
                    e.add_note(_bug_note(args))  # printed under the traceback, as its last line
                raise
        # also where a signal's exception was caught and wrapped on its way (an item's failure)
        return stopping.finish() if stopping.requested() else code


def _run(args) -> int:
    """The subcommand's exit code; a refusal printed in one line (exit 2, or the error's own code)."""
    from realsr.flows import stopping

    try:
        return COMMANDS[args.command].run(args)
    except ValidationError as e:
        if stopping.requested():
            raise
        print("invalid settings:", file=sys.stderr)
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            print(f"  {where}: {err['msg']}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if stopping.requested():  # a Ctrl-C's exception, wrapped on its way: not an error of the run
            raise
        print(f"error: {e.line if isinstance(e, RealsrError) else e}", file=sys.stderr)
        return e.exit_code if isinstance(e, RealsrError) else 2


def _bug_note(args) -> str:
    """What an unexpected exception is, and where its log is: the flow runs' in Prefect, else this output."""
    head = f"realsr {args.command}: an unexpected error (a bug, not a refusal of the input); report it with the traceback above"
    if args.command not in FLOW_COMMANDS or getattr(args, "runtime", "prefect") == "local":
        return f"{head}: the command's whole log is this output"
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    api = PREFECT_API_URL.value()  # an embedded server is gone by now: its database stays
    where = f"the Prefect server at {api}" if api else f"Prefect's database in {PREFECT_HOME.value()} (`prefect flow-run ls`, then `prefect flow-run logs ID`)"
    return f"{head} and the flow runs' logs: {where}"


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


if __name__ == "__main__":
    sys.exit(main())
