"""`realsr evaluate --lr DIR [--hr DIR] --model CKPT [--model CKPT ...] --out DIR [-s 4] ...`.

Every EvaluateSettings field is a flag, but the folders and models, which are written by hand
(`--model` repeats)."""

from __future__ import annotations

import sys
from pathlib import Path

from realsr.flows.cli_fields import add_fields, field_default, given

_SKIP = {"lr", "hr", "models", "out"}


def add_parser(sub) -> None:
    from realsr.flows.settings import EvaluateSettings

    e = sub.add_parser("evaluate", help="models side by side (and bicubic) on LR test images, with metrics when HR is given")
    fields = EvaluateSettings.model_fields
    e.add_argument("--lr", required=True, type=Path, help=fields["lr"].description)
    e.add_argument("--hr", type=Path, default=None, help=fields["hr"].description)
    e.add_argument("--model", dest="models", action="append", default=[], help=f"{fields['models'].description} Repeat for more models.")
    e.add_argument("--out", required=True, type=Path, help=fields["out"].description)
    add_fields(e, EvaluateSettings, _SKIP, field_default, short={"scale": "-s", "tile": "-t"})


def run(args) -> int:
    """evaluate-flow against the configured Prefect API or an embedded one; prints the means."""
    from realsr.flows import preflight
    from realsr.flows.evaluate import evaluate_flow
    from realsr.flows.exit_codes import outcome
    from realsr.flows.runtime import prefect_api
    from realsr.flows.settings import EvaluateSettings

    settings = EvaluateSettings(lr=args.lr, hr=args.hr, models=args.models, out=args.out, **given(args, EvaluateSettings, _SKIP))
    preflight.evaluate(settings)
    with prefect_api():
        result = evaluate_flow(settings)
    print((Path(result["out"]) / "results.md").read_text())
    print(f"{result['computed']} computed, {result['cached']} from the cache; per image: {result['csv']}; sheet: {result['sheet']}")
    for f in result["failures"]:
        print(f"FAILED {f['model']} on {f['image']}: {f['reason']}", file=sys.stderr)
    return outcome(result["computed"] + result["cached"], len(result["failures"]))
