"""evaluate-flow's tasks: one per model (it holds the device for all images), then the tables."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from realsr.steps import evaluate as ev


@task(name="evaluate-model", tags=["gpu"], cache_policy=NO_CACHE, task_run_name="evaluate-{label}")
def evaluate_model(label: str, gen, digest: str, images: list, out: Path, spec: ev.Scoring) -> dict:
    """`gen`: the loaded generator (`storage.model_files.LoadedGenerator`), None for bicubic."""
    log = get_run_logger()
    if gen is not None:
        log.info(gen.describe())
    rows, failures = ev.evaluate_model(label, gen, digest, images, out, spec, log.info)
    cached = sum(r["cached"] for r in rows)
    log.info(f"{label}: {len(rows)} images ({cached} from the cache), {len(failures)} failed")
    return {"rows": rows, "failures": failures}


@task(name="write-results", cache_policy=NO_CACHE)
def write_results(out: Path, rows: list[dict], order: list[str], images: list, scale: int, failed_models: list[dict]) -> dict:
    summary = ev.means(rows, order)
    csv_path, md_path = ev.write_results(out, rows, summary, failed_models)
    sheet = ev.contact_sheet(out, images, order, scale)
    return {"summary": summary, "csv": str(csv_path), "md": str(md_path), "sheet": str(sheet) if sheet else None}
