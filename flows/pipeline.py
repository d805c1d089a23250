"""realsr-pipeline: the design card's DAG as one flow.

    photos ─> degrade-flow (KernelGAN kernels, noise bank, pairs) ─> train-flow (fine-tune on the
    camera's degradations) ─> evaluate-flow (bicubic, the released model and the trained one on
    the held-out photos' crops; and on the user's LR/HR folder when given) ─> the table

A stage whose inputs are unchanged (same photos, same settings) and whose output is there is
skipped; each stage stays a flow of its own, rerunnable alone. `stages="deployments"` runs each
stage as its deployment (degrade on the CPU pool, train and evaluate on the GPU pool) and waits.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from realsr.flows.artifacts import NothingUsable, image_markdown, means_markdown, outcome, publish, refused, settings_or_refusal, warning_markdown
from realsr.flows.exit_codes import failed_photos
from realsr.flows.pipeline_settings import AUTO, PIPELINE_PRESETS, PipelineSettings
from realsr.models.errors import RealsrError
from realsr.steps import pipeline as p
from realsr.steps.mirrors import staged
from realsr.storage.atomic import read_json, write_json
from realsr.storage.run_dir import TOOL, check_folder

DEPLOYMENTS = {"degrade": "degrade-flow/degrade", "train": "train-flow/train", "evaluate": "evaluate-flow/evaluate"}
OUTPUT = {"degrade": "summary.json", "train": "summary.json", "evaluate": "summary.json"}


class StageFailed(RealsrError, ValueError):
    """A stage's deployment run did not complete: the pipeline ends Failed with the stage's message."""


def run_stage(stage: str, settings, mode: str, log) -> dict:
    """Run one stage (a sub-flow, or its deployment on its pool) and read back its summary."""
    if mode == "deployments":
        from prefect.deployments import run_deployment

        log.info(f"{stage}: running deployment {DEPLOYMENTS[stage]} and waiting for it")
        run = run_deployment(DEPLOYMENTS[stage], parameters={"settings": settings.model_dump(mode="json")}, timeout=None)
        if not run.state or not run.state.is_completed():
            raise StageFailed(
                (
                    f"{stage}: deployment run {run.name} ({DEPLOYMENTS[stage]}) ended {run.state.name if run.state else 'without a state'}: "
                    f"{run.state.message if run.state else ''}"
                )
            )
    else:
        from realsr.flows.degrade import degrade_flow
        from realsr.flows.evaluate import evaluate_flow
        from realsr.flows.train import train_flow

        {"degrade": degrade_flow, "train": train_flow, "evaluate": evaluate_flow}[stage](settings)
    out = settings.out if stage != "degrade" else Path(settings.out)
    return read_json(Path(out).resolve() / OUTPUT[stage])


def claim_pipeline_dir(root: Path) -> p.PipelineDir:
    """An empty folder or one a pipeline made: the user's other files are never written over."""
    root = check_folder(Path(root).resolve(), p.RECORD, "pipeline folder")
    root.mkdir(parents=True, exist_ok=True)
    pdir = p.PipelineDir(root)
    if not pdir.record.exists():
        write_json(pdir.record, {"tool": TOOL, "stages": {}})
    return pdir


def evaluate_settings(lr: Path, hr: Path | None, models: list[str], out: Path):
    from realsr.flows.settings import EvaluateSettings

    return EvaluateSettings(lr=lr, hr=hr, models=models, out=out)


@flow(name="realsr-pipeline", log_prints=False, validate_parameters=False)
def pipeline_flow(settings: PipelineSettings) -> dict:
    """degrade -> train -> evaluate, each skipped when current; the table as the final artifact.
    A pipeline folder at a URL is worked on through its local mirror (steps/mirrors.py). Bad
    settings, or a stage that leaves the next nothing to use, end the run Failed with why."""
    settings, refusal = settings_or_refusal(PipelineSettings, settings, log := get_run_logger())
    if refusal is not None:
        return refusal
    if settings.preset == AUTO:
        say = log.info if settings.bundle == "product" else log.warning
        say(
            (
                f"preset auto: {'a CUDA GPU' if settings.bundle == 'product' else 'no CUDA GPU'} here, so preset {settings.bundle} "
                f"{json.dumps(PIPELINE_PRESETS[settings.bundle])}; set preset to choose another"
            )
        )
    try:
        with staged(None, settings.out, log.info, out_role="pipeline") as local:
            summary, pictures = pipeline_local(settings.model_copy(update={"out": local.out}), log)
            shown = local.rebase(summary)
            write_json(local.out / "summary.json", shown)
    except (NothingUsable, StageFailed) as e:  # said in one line, not a traceback
        return refused(log, e)
    publish(log, local.rebase(summary_markdown(summary, pictures)), "realsr-pipeline", "the pipeline's evaluation table and contact sheets")
    return outcome(log, shown, shown["warnings"])


def trainable(degraded: dict, hr_size: int, where: Path) -> None:
    """Refuse to train on nothing: degrade made no clean HR image at least one crop large."""
    if degraded.get("error"):
        raise NothingUsable(degraded["error"])
    if not degraded["processed"]:
        raise NothingUsable(f"degrade: nothing usable: no photo could be used (see {where / 'summary.json'})")
    largest, scale = degraded.get("largest_clean_hr"), degraded.get("settings", {}).get("scale", 1)
    if largest is not None and largest < hr_size:
        raise NothingUsable(
            f"train: nothing to train on: every clean HR image is smaller than the training crop of {hr_size} px (largest {largest} px, see "
            f"{where / 'summary.json'}); "
            f'set train {{"hr_size": {largest // scale * scale}}} or use larger photos'
        )


def pipeline_local(settings: PipelineSettings, log) -> tuple[dict, list[tuple[str, dict]]]:
    """The pipeline on a local folder: its summary and the evaluations to draw."""
    pdir = claim_pipeline_dir(settings.out)
    ran: dict[str, str] = {}

    d = settings.degrade_settings()
    dkey = p.degrade_key(d.model_dump(mode="json"), d.source)
    if p.is_current(pdir, "degrade", dkey, pdir.run / OUTPUT["degrade"]):
        log.info(f"degrade: current (no photo and no setting changed since {pdir.run} was made): skipped")
        degraded, ran["degrade"] = read_json(pdir.run / OUTPUT["degrade"]), "skipped (current)"
    else:
        degraded, ran["degrade"] = run_stage("degrade", d, settings.stages, log), "ran"
        p.record_stage(pdir, "degrade", dkey)
    trainable(degraded, settings.train_settings().hr_size, pdir.run)

    tkey = p.train_key(settings.train_settings().model_dump(mode="json"), dkey)
    tr = settings.train_settings(pdir.train(tkey))
    if p.is_current(pdir, "train", tkey, tr.out) and p.train_done(tr.out, tr.iterations):
        log.info(f"train: current ({tr.out} finished with these photos and settings): skipped")
        trained, ran["train"] = read_json(tr.out / OUTPUT["train"]), "skipped (current)"
    else:
        trained, ran["train"] = run_stage("train", tr, settings.stages, log), "ran"
        p.record_stage(pdir, "train", tkey, out=str(tr.out))
    model = p.publish_model(Path(trained["latest"]), pdir)
    log.info(f"trained generator: {model} (upscale with: realsr upscale -i PHOTOS -o OUT --model {model})")

    models = [*settings.released_models(), str(model)]
    results, pictures = {}, []
    sets = [("held-out photos", Path(trained["out"]) / "val" / "lr", Path(trained["out"]) / "val" / "hr", pdir.eval)]
    if settings.test_lr:
        sets.append(("your test photos", settings.test_lr, settings.test_hr, pdir.eval_test))
    for title, lr, hr, out in sets:
        if not lr.is_dir():
            log.warning(f"evaluate on {title}: no {lr} (train validated on no held-out photo: val_crops 0)")
            continue
        results[title] = run_stage("evaluate", evaluate_settings(lr, hr, models, out), settings.stages, log)
        pictures.append((title, results[title]))
    ran["evaluate"] = "ran" if results else "nothing to evaluate"

    summary = {
        "out": str(pdir.root),
        "stages": ran,
        "preset": settings.bundle,
        "warnings": [f"degrade: {w}" for w in degraded.get("warnings", [])],
        "run_dir": str(pdir.run),
        "train_dir": str(tr.out),
        "model": str(model),
        "degrade": {k: degraded[k] for k in ("sources", "processed", "cached")},
        "failures": [f"degrade: {f}" for f in failed_photos(degraded)]
        + [f"evaluate on {t}: {f['model']} on {f['image']}: {f['reason']}" for t, r in results.items() for f in r.get("failures", [])],
        "kernel_sheet": degraded.get("sheets", {}).get("kernels"),
        "noise_sheet": degraded.get("sheets", {}).get("noise"),
        "training_images": trained["training_images"],
        "validation_crops": trained["validation_crops"],
        "evaluations": {
            t: {"table": str(Path(r["md"])), "sheet": r["sheet"], "computed": r["computed"], "cached": r["cached"], "means": r["summary"]}
            for t, r in results.items()
        },
    }
    return summary, pictures


def summary_markdown(s: dict, evaluations: list[tuple[str, dict]]) -> str:
    lines = [
        f"# realsr-pipeline: {s['out']}",
        "",
        warning_markdown(s.get("warnings", [])),
        f"- preset: {s.get('preset')}",
        *[f"- {stage}: {how}" for stage, how in s["stages"].items()],
        (
            f"- photos: {s['degrade']['sources']} ({s['degrade']['processed']} used); training images {s['training_images']}, validation crops "
            f"{s['validation_crops']}"
        ),
        f"- the camera's model: `{s['model']}`",
        "",
    ]
    for title, r in evaluations:
        lines += [f"## On {title}", "", means_markdown(r["summary"], r["md"]), image_markdown(r["sheet"], f"contact sheet, {title} (LR / models / HR)")]
    lines += [image_markdown(s["kernel_sheet"], "kernel bank"), image_markdown(s["noise_sheet"], "noise bank")]
    return "\n".join(lines) + "\n"
