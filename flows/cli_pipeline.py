"""`realsr pipeline --source PHOTOS --out DIR [--preset auto|product|cpu|demo|test-tiny] [--degrade JSON] [--train JSON] ...`

degrade -> train -> evaluate as realsr-pipeline, against the configured Prefect API or an
embedded one; the demo is its `demo` preset on sample photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from realsr.flows.cli_degrade import runtime_flags
from realsr.storage.remote import fetch_file, is_url, remote_text


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at column {e.colno}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. '{{\"iterations\": 2000}}', got {text}")
    return value


def add_parser(sub) -> None:
    from realsr.flows.pipeline_settings import AUTO, PIPELINE_PRESETS, PipelineSettings

    f = PipelineSettings.model_fields
    p = sub.add_parser("pipeline", help="degrade -> train -> evaluate on a folder of photos: the camera's own model and its table")
    p.add_argument("--source", required=True, help=f["source"].description)
    p.add_argument("--out", required=True, help=f["out"].description)
    p.add_argument("--preset", default=AUTO, choices=[AUTO, *PIPELINE_PRESETS], help=f"{f['preset'].description} (default {AUTO})")
    p.add_argument("--degrade", type=_json_object, default={}, metavar="JSON", help=f["degrade"].description)
    p.add_argument("--train", type=_json_object, default={}, metavar="JSON", help=f["train"].description)
    p.add_argument("--model", dest="models", action="append", default=None, help=f"{f['models'].description} Repeat for more.")
    p.add_argument("--test-lr", type=Path, default=None, help=f["test_lr"].description)
    p.add_argument("--test-hr", type=Path, default=None, help=f["test_hr"].description)
    runtime_flags(p)


def preflight(settings) -> None:
    """The checks each stage makes before it starts, and the weights, before the first stage."""
    from realsr.flows import preflight as pf
    from realsr.steps.pipeline import RECORD
    from realsr.storage.run_dir import check_remote_folder

    if is_url(settings.out):
        check_remote_folder(settings.out, RECORD, "pipeline folder")
    pf.degrade(settings.degrade_settings())
    preflight_weights(settings)


def preflight_weights(settings) -> None:
    """Every weight the pipeline's stages load, found or fetched now, or one line saying which not."""
    from realsr.flows.cli_weights import fetch
    from realsr.storage.weights import WeightsError

    t = settings.train_settings()
    needs = [m for m in {*settings.released_models(), *([t.init] if t.init else [])} if not Path(m).suffix]
    needs += (["vgg19"] if t.perceptual_weight else []) + ["alexnet", "lpips-alex-heads", "niqe"]
    if missing := fetch(needs):
        raise WeightsError("; ".join(missing))


def run_pipeline(settings, workers: int | None = None, address: str | None = None) -> dict:
    """realsr-pipeline with degrade's Dask cluster sized (or addressed) as `realsr degrade` does."""
    from realsr.flows.pipeline import pipeline_flow
    from realsr.flows.runtime import cluster_env, prefect_api

    with cluster_env(workers, address), prefect_api():
        return pipeline_flow(settings)


def print_result(summary: dict) -> None:
    print(f"realsr-pipeline: {summary['out']}")
    for stage, how in summary["stages"].items():
        print(f"  {stage}: {how}")
    for title, e in summary["evaluations"].items():
        print(f"\nOn {title} ({e['computed']} computed, {e['cached']} from the cache):")
        print(remote_text(e["table"]) if is_url(e["table"]) else Path(e["table"]).read_text())
        print(f"contact sheet: {e['sheet']}")
    print(f"kernel bank sheet: {summary['kernel_sheet']}\nnoise bank sheet: {summary['noise_sheet']}")
    model = summary["model"]
    if is_url(model):  # upscale reads local files: a local copy, fetched when it changed
        model = str(fetch_file(model, "model"))
    print(f"\nthe camera's model: {summary['model']}\nupscale with:  realsr upscale -i PHOTOS -o OUT --model {model}")


def run(args) -> int:
    from realsr.flows.pipeline_settings import PipelineSettings
    from realsr.steps.mirrors import held

    settings = PipelineSettings(
        source=args.source,
        out=args.out,
        preset=args.preset,
        degrade=args.degrade,
        train=args.train,
        models=args.models,
        test_lr=args.test_lr,
        test_hr=args.test_hr,
    )
    preflight(settings)
    with held(None, settings.out, out_role="pipeline"):  # one run per folder, refused before any server starts
        summary = run_pipeline(settings, args.workers, args.dask_address)
    print_result(summary)
    from realsr.flows.exit_codes import outcome

    for f in summary.get("failures", []):
        print(f"FAILED {f}", file=sys.stderr)
    return outcome(summary["degrade"]["processed"], len(summary.get("failures", [])))
