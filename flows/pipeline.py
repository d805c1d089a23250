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
from realsr.storage.locations import exists, join, read_json_at, write_json_at
from realsr.storage.remote import is_url
from realsr.storage.run_dir import TOOL, check_folder, check_remote_folder

DEPLOYMENTS = {"degrade": "degrade-flow/degrade", "train": "train-flow/train", "evaluate": "evaluate-flow/evaluate"}
OUTPUT = {"degrade": "summary.json", "train": "summary.json", "evaluate": "summary.json"}


class StageFailed(RealsrError, ValueError):
    """A stage's deployment run did not complete: the pipeline ends Failed with the stage's message."""


def run_stage(stage: str, settings, mode: str, log) -> dict:
    """Run one stage (a sub-flow, or its deployment on its pool) and read back its summary, where
    the stage wrote it (at a URL when its folder is one: the stage may have run on another machine)."""
    if mode == "deployments":
        from prefect.deployments import run_deployment

        name = DEPLOYMENTS[stage] + deployment_set()
        log.info(f"{stage}: running deployment {name} and waiting for it")
        run = run_deployment(name, parameters={"settings": settings.model_dump(mode="json")}, timeout=None)
        if not run.state or not run.state.is_completed():
            raise StageFailed(
                (
                    f"{stage}: deployment run {run.name} ({name}) ended {run.state.name if run.state else 'without a state'}: "
                    f"{run.state.message if run.state else ''}"
                )
            )
    else:
        from realsr.flows.degrade import degrade_flow
        from realsr.flows.evaluate import evaluate_flow
        from realsr.flows.train import train_flow

        {"degrade": degrade_flow, "train": train_flow, "evaluate": evaluate_flow}[stage](settings)
    return read_json_at(join(_resolved(settings.out), OUTPUT[stage]))


def deployment_set() -> str:
    """The suffix of the deployment set this pipeline runs in (prefect.yaml: `pipeline-docker`
    starts `degrade-flow/degrade-docker`, ...; the process set's `pipeline` has none), so the
    stages run in the same kind of pool as the pipeline that started them."""
    from prefect.runtime import deployment

    name = deployment.name or ""
    return name[len("pipeline") :] if name.startswith("pipeline-") else ""


def _resolved(location):
    return location if is_url(location) else Path(location).resolve()


def claim_pipeline_dir(root) -> p.PipelineDir:
    """An empty folder or one a pipeline made (at a URL: an empty prefix or one a pipeline made):
    the user's other files are never written over."""
    if is_url(root):
        check_remote_folder(str(root), p.RECORD, "pipeline folder")
    else:
        root = check_folder(Path(root).resolve(), p.RECORD, "pipeline folder")
        root.mkdir(parents=True, exist_ok=True)
    pdir = p.PipelineDir(root)
    if not exists(pdir.record):
        write_json_at(pdir.record, {"tool": TOOL, "stages": {}})
    return pdir


def evaluate_settings(lr, hr, models: list[str], out):
    from realsr.flows.settings import EvaluateSettings

    return EvaluateSettings(lr=lr, hr=hr, models=models, out=out)


@flow(name="realsr-pipeline", log_prints=False, validate_parameters=False)
def pipeline_flow(settings: PipelineSettings) -> dict:
    """degrade -> train -> evaluate, each skipped when current; the table as the final artifact.
    The stages get locations, not local paths: with a pipeline folder at a URL each stage mirrors
    what it needs on the machine that runs it, and this flow reads back only records and
    summaries. Bad settings, or a stage that leaves the next nothing to use, end the run Failed."""
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
        pdir = claim_pipeline_dir(settings.out)
        summary, pictures = pipeline_run(settings, pdir, log)
        write_json_at(pdir.at("summary.json"), summary)
    except (NothingUsable, StageFailed) as e:  # said in one line, not a traceback
        return refused(log, e)
    publish(log, summary_markdown(summary, pictures), "realsr-pipeline", "the pipeline's evaluation table and contact sheets")
    return outcome(log, summary, summary["warnings"])


def trainable(degraded: dict, hr_size: int, where) -> None:
    """Refuse to train on nothing: degrade made no clean HR image at least one crop large."""
    if degraded.get("error"):
        raise NothingUsable(degraded["error"])
    if not degraded["processed"]:
        raise NothingUsable(f"degrade: nothing usable: no photo could be used (see {join(where, 'summary.json')})")
    largest, scale = degraded.get("largest_clean_hr"), degraded.get("settings", {}).get("scale", 1)
    if largest is not None and largest < hr_size:
        raise NothingUsable(
            f"train: nothing to train on: every clean HR image is smaller than the training crop of {hr_size} px (largest {largest} px, see "
            f"{join(where, 'summary.json')}); "
            f'set train {{"hr_size": {largest // scale * scale}}} or use larger photos'
        )


def pipeline_run(settings: PipelineSettings, pdir: p.PipelineDir, log) -> tuple[dict, list[tuple[str, dict]]]:
    """The stages in order, each skipped when current: the pipeline's summary and the evaluations to draw."""
    ran: dict[str, str] = {}
    d = settings.degrade_settings()
    dkey = p.degrade_key(d.model_dump(mode="json"), d.source)
    if p.is_current(pdir, "degrade", dkey, join(pdir.run, OUTPUT["degrade"])):
        log.info(f"degrade: current (no photo and no setting changed since {pdir.run} was made): skipped")
        degraded, ran["degrade"] = read_json_at(join(pdir.run, OUTPUT["degrade"])), "skipped (current)"
    else:
        degraded, ran["degrade"] = run_stage("degrade", d, settings.stages, log), "ran"
        p.record_stage(pdir, "degrade", dkey)
    trainable(degraded, settings.train_settings().hr_size, pdir.run)

    tkey = p.train_key(settings.train_settings().model_dump(mode="json"), dkey)
    tr = settings.train_settings(pdir.train(tkey))
    if p.is_current(pdir, "train", tkey, tr.out) and p.train_done(tr.out, tr.iterations):
        log.info(f"train: current ({tr.out} finished with these photos and settings): skipped")
        trained, ran["train"] = read_json_at(join(tr.out, OUTPUT["train"])), "skipped (current)"
    else:
        trained, ran["train"] = run_stage("train", tr, settings.stages, log), "ran"
        p.record_stage(pdir, "train", tkey, out=str(tr.out))
    if ran["train"] == "ran" or not exists(pdir.model):
        p.publish_model(trained["latest"], pdir)
    model = pdir.model
    log.info(f"trained generator: {model} (upscale with: realsr upscale -i PHOTOS -o OUT --model {model})")
    results, pictures = evaluations(settings, pdir, tkey, join(trained["out"], "val"), str(model), ran, log)
    return pipeline_summary(settings, pdir, ran, degraded, trained, tr, results), pictures


def evaluations(settings: PipelineSettings, pdir: p.PipelineDir, tkey: str, val, model: str, ran: dict, log) -> tuple[dict, list]:
    """evaluate-flow on the held-out crops (and the user's test folder), each skipped when its
    models, training and photos are those it last ran with."""
    results, pictures, how = {}, [], []
    sets = [("held-out photos", "evaluate", join(val, "lr"), join(val, "hr"), pdir.eval)]
    if settings.test_lr:
        sets.append(("your test photos", "evaluate-test", settings.test_lr, settings.test_hr, pdir.eval_test))
    for title, stage, lr, hr, out in sets:
        if not exists(lr):
            log.warning(f"evaluate on {title}: no {lr} (train validated on no held-out photo: val_crops 0)")
            continue
        key = p.evaluate_key(settings.released_models(), tkey, lr, hr)
        if p.is_current(pdir, stage, key, join(out, OUTPUT["evaluate"])):
            log.info(f"evaluate on {title}: current (same models, training and photos): skipped")
            results[title] = read_json_at(join(out, OUTPUT["evaluate"]))
            results[title].update(cached=results[title]["cached"] + results[title]["computed"], computed=0)
            how.append("skipped (current)")
        else:
            results[title] = run_stage("evaluate", evaluate_settings(lr, hr, [*settings.released_models(), model], out), settings.stages, log)
            p.record_stage(pdir, stage, key)
            how.append("ran")
        pictures.append((title, results[title]))
    ran["evaluate"] = ("ran" if "ran" in how else "skipped (current)") if results else "nothing to evaluate"
    return results, pictures


def pipeline_summary(settings, pdir: p.PipelineDir, ran: dict, degraded: dict, trained: dict, tr, results: dict) -> dict:
    return {
        "out": str(pdir.root),
        "stages": ran,
        "preset": settings.bundle,
        "warnings": [f"degrade: {w}" for w in degraded.get("warnings", [])],
        "run_dir": str(pdir.run),
        "train_dir": str(tr.out),
        "model": str(pdir.model),
        "degrade": {k: degraded[k] for k in ("sources", "processed", "cached")},
        "failures": [f"degrade: {f}" for f in failed_photos(degraded)]
        + [f"evaluate on {t}: {f['model']} on {f['image']}: {f['reason']}" for t, r in results.items() for f in r.get("failures", [])],
        "kernel_sheet": degraded.get("sheets", {}).get("kernels"),
        "noise_sheet": degraded.get("sheets", {}).get("noise"),
        "training_images": trained["training_images"],
        "validation_crops": trained["validation_crops"],
        "evaluations": {
            t: {"table": str(r["md"]), "sheet": r["sheet"], "computed": r["computed"], "cached": r["cached"], "means": r["summary"]} for t, r in results.items()
        },
    }


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
