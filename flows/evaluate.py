"""evaluate-flow: models side by side (bicubic always) on LR test photos, with HR when there is one.

    LR folder (+ HR folder) ─> one task per model: SR images, PSNR/SSIM (Y, RGB), LPIPS ─> results
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from realsr.flows.settings import EvaluateSettings
from realsr.steps import evaluate as ev
from realsr.tasks import evaluate as t


@flow(name="evaluate-flow", log_prints=False)
def evaluate_flow(settings: EvaluateSettings) -> dict:
    log = get_run_logger()
    out = settings.out.resolve()
    images, notes = ev.test_images(settings.lr, settings.hr)
    for n in notes:
        log.warning(n)
    models, failed_models = ev.load_models(settings.models, settings.scale)  # loaded once; a bad one fails alone
    for f in failed_models:
        log.error(f"model {f['model']} left out: {f['reason']}")
    log.info(f"{len(images)} test images, models: {', '.join(label for label, _, _ in models)}")
    rows, failures = [], list(failed_models)
    for label, gen, digest in models:
        got = t.evaluate_model(label, gen, digest, images, out, settings.spec())
        rows += got["rows"]
        failures += got["failures"]
    order = [label for label, _, _ in models]
    result = t.write_results(out, rows, order, images, settings.scale, failed_models)
    result.update(failures=failures, notes=notes, out=str(out), computed=sum(not r["cached"] for r in rows), cached=sum(r["cached"] for r in rows))
    try:
        create_table_artifact([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()} for m in result["summary"]], key="evaluate-means", description="mean metrics per model")
        create_markdown_artifact((out / "results.md").read_text(), key="evaluate-results")
    except Exception as e:  # artifacts are a view; the files are the results
        log.warning(f"artifacts not published: {e}")
    return result
