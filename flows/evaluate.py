"""evaluate-flow: models side by side (bicubic always) on LR test photos, with HR when there is one.

LR folder (+ HR folder) ─> one task per model: SR images, PSNR/SSIM (Y, RGB), LPIPS ─> results
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from realsr.flows.artifacts import image_markdown, means_markdown, publish, settings_or_refusal
from realsr.flows.settings import EvaluateSettings
from realsr.steps import evaluate as ev
from realsr.steps.mirrors import staged
from realsr.storage.atomic import write_json
from realsr.storage.remote import fetch_file, is_url
from realsr.tasks import evaluate as t


@flow(name="evaluate-flow", log_prints=False, validate_parameters=False)
def evaluate_flow(settings: EvaluateSettings) -> dict:
    """The table of `settings.models` on the test photos. Folders and models at URLs are worked on
    through local copies (steps/mirrors.py): the outputs go back to the URL, the summary names it."""
    settings, refusal = settings_or_refusal(EvaluateSettings, settings, log := get_run_logger())
    if refusal is not None:
        return refusal
    also = tuple((loc, role) for loc, role in ((settings.lr, "eval-lr"), (settings.hr, "eval-hr")) if loc is not None)
    with staged(None, settings.out, log.info, out_role="evaluate", also=also) as local:
        models = [str(fetch_file(m, "model")) if is_url(m) else m for m in settings.models]
        here = settings.model_copy(update={"lr": local.local(settings.lr), "hr": local.local(settings.hr), "out": local.out, "models": models})
        result = evaluate_local(here, log)
        shown = local.rebase(result)
        write_json(local.out / "summary.json", shown)
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()} for m in result["summary"]]
    markdown = means_markdown(result["summary"], local.out / "results.md") + "\n" + image_markdown(result["sheet"], "contact sheet (LR / models / HR crops)")
    publish(log, markdown, "evaluate-results", "evaluate-flow results and contact sheet", table, "evaluate-means", "mean metrics per model")
    return shown


def evaluate_local(settings: EvaluateSettings, log) -> dict:
    """evaluate-flow on local folders and model files: the result, with local paths."""
    out = Path(settings.out).resolve()
    images, notes = ev.test_images(settings.lr, settings.hr)
    for n in notes:
        log.warning(n)
    models, failed_models = ev.load_models(settings.models, settings.scale)  # loaded once; a bad one fails alone
    for f in failed_models:
        log.error(f"model {f['model']} left out: {f['reason']}")
    from realsr.models.devices import resolve_device

    log.info(f"{len(images)} test images, models: {', '.join(label for label, _, _ in models)}; device {resolve_device(settings.device)}")
    rows, failures = [], list(failed_models)
    for label, gen, digest in models:
        got = t.evaluate_model(label, gen, digest, images, out, settings.spec())
        rows += got["rows"]
        failures += got["failures"]
    order = [label for label, _, _ in models]
    result = t.write_results(out, rows, order, images, settings.scale, failed_models)
    result.update(failures=failures, notes=notes, out=str(out), computed=sum(not r["cached"] for r in rows), cached=sum(r["cached"] for r in rows))
    return result
