"""degrade-flow: a folder of real photos -> kernel bank, noise bank, clean HR and HR/LR pairs.

kernel bank (coordinator) ─────────────────────────────┐
clean-up + noise extraction (Dask, one task per image) ─┴> noise bank (coordinator)
    -> pairs (Dask, one task per image) -> manifest + summary (coordinator)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dask
from prefect import flow, get_run_logger, unmapped

from realsr.flows import preflight
from realsr.flows.artifacts import image_markdown, outcome, publish, refused, warning_markdown
from realsr.flows.dask_cluster import check_cluster, gpu_annotations
from realsr.flows.runtime import cluster_slots, task_runner
from realsr.flows.settings import DegradeSettings, SettingsError, resolve
from realsr.models.errors import InputError
from realsr.steps import degrade_rerun as rerun
from realsr.steps.degrade import jpeg_summary, save_summary
from realsr.steps.degrade_noise import EmptyNoiseBank
from realsr.steps.inspect import inspect_bank
from realsr.steps.mirrors import staged
from realsr.storage.atomic import no_retry
from realsr.storage.degrade_records import KernelRecord, PreprocessRecord
from realsr.storage.image_formats import RAW_NOTE, processed_photos
from realsr.storage.images import SRGB_NOTE, list_images
from realsr.storage.kernel_prior_file import PriorFileError
from realsr.storage.run_dir import RunDir, claim_run_dir
from realsr.tasks import degrade as t


def batches(items: list, batch_size: int | None) -> list[list]:
    """Split per-image work into about 8 tasks (one image each on small runs, at most 32).

    A Prefect task costs ~0.2 s of wall time on 2 cores (submission, state, logs) whatever it
    does, as much as cleaning up a 1.5 MP photo; batches keep that off the per-image cost.
    """
    size = batch_size or max(1, min(32, -(-len(items) // 8)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def kernelgan_batches(items: list, batch_size: int | None, slots: int | None = None) -> list[list]:
    """Images trained together per KernelGAN task: an even split over the workers, at most 16.

    A KernelGAN task runs for minutes, so its scheduling cost does not matter; what does is that
    images trained together cost about half as much per image (one set of kernel launches),
    that every worker gets a share, and that a killed run loses at most one batch per worker.
    The workers are the cluster's (`cluster_slots`): its threads, wherever it runs.
    """
    if batch_size is None:
        batch_size = max(1, min(16, -(-len(items) // (slots or cluster_slots()))))
    return batches(items, batch_size)


def _gather(futures, batched: list[list], label) -> tuple[list, list[dict]]:
    """Records of all batches, and the failed images with reasons (the others still finish)."""
    done, failed = [], []
    for fut, items in zip(futures, batched):
        fut.wait()
        state = fut.state
        if state.is_completed():
            done += fut.result()
            continue
        exc = state.result(raise_on_failure=False)
        if no_retry(exc):  # a full or read-only disk: the run stops, the command names the file
            raise exc
        if isinstance(exc, t.BatchError):
            done += exc.done
            failed += exc.failures
        else:  # the whole batch was lost (worker died, retries spent)
            reason = str(exc) if isinstance(exc, BaseException) else str(state.message)
            failed += [{"source": str(label(i)), "reason": reason, "bad_input": False} for i in items]
    return done, failed


def bank_sheets(run: RunDir, log) -> dict[str, Path]:
    """Every run writes the banks' contact sheets (what `realsr inspect` draws) beside them."""
    sheets = {}
    for title, bank in (("kernels", run.kernels), ("noise", run.noise)):
        sheet = bank.with_name(bank.name.replace(".zarr", "") + "_sheet.png")
        try:
            inspect_bank(bank, sheet)
            sheets[title] = sheet
        except Exception as e:  # a view: the banks are the results
            log.warning(f"no {title} contact sheet: {e}")
    return sheets


def drop_duplicates(records: list) -> tuple[list, list[dict]]:
    """Keep one image per content hash (the first path): a copy would double its noise patches
    (clean-up and KernelGAN records alike)."""
    first: dict[str, str] = {}
    kept, dropped = [], []
    for r in sorted(records, key=lambda r: r.source):
        if r.sha256 in first:
            dropped.append({"source": r.source, "reason": f"same content as {first[r.sha256]}", "bad_input": True})
        else:
            first[r.sha256] = r.source
            kept.append(r)
    return kept, dropped


@flow(name="degrade-flow", task_runner=task_runner(), log_prints=False, validate_parameters=False)
def degrade_flow(settings: DegradeSettings) -> dict:
    """Build the kernel and noise banks and the paired training data for one folder of photos
    (local, or at a URL: worked on through local mirrors, see steps/mirrors.py). A run that made
    nothing train-flow can use ends Failed; one that warned ends Completed with the warnings."""
    log = get_run_logger()
    try:  # a deployment run's settings: merged over the deployment's, checked here (flows/settings.py)
        settings = resolve(DegradeSettings, settings, log.info)
        preflight.kernel_prior(settings)
        check_cluster()  # REALSR_DASK_CLUSTER / _ADAPT of a deployment's environment, before its cluster starts
    except (SettingsError, PriorFileError) as e:
        return refused(log, e)
    with staged(settings.source, settings.out, log.info) as local:
        summary, records, sheets = degrade_local(settings.model_copy(update={"source": local.source, "out": local.out}), log, source_name=str(settings.source))
        summary = local.rebase(summary)
        summary["settings"] = settings.model_dump(mode="json")
        summary["warnings"], summary["error"] = usable(summary)
        save_summary(RunDir(local.out), summary)
    _publish(summary, local.rebase(_artifact_rows(records)), sheets)
    return outcome(log, summary, summary["warnings"], summary["error"])


def usable(s: dict) -> tuple[list[str], str | None]:
    """What the operator must hear of a finished run: its warnings, and the error when it made
    nothing train-flow can use. Training crops clean HR images (steps/train_data.py
    training_images), so photos too small for a pair still train, with a smaller hr_size."""
    from realsr.flows.train_settings import MIN_HR_SIZE

    largest, size = s.get("largest_clean_hr", 0), s["settings"]["pair_hr_size"]
    warnings = [f"{len(s['skipped'])} of {s['sources']} photos skipped (listed in {s['run_dir']}/summary.json)"] if s["skipped"] else []
    if s["noise_bank"].get("warning"):
        warnings.append(s["noise_bank"]["warning"])
    if not s["processed"]:
        return (
            warnings,
            f"degrade: nothing usable: no photo of {s['settings']['source']} could be used ({len(s['skipped'])} skipped, see {s['run_dir']}/summary.json)",
        )
    if largest < MIN_HR_SIZE:
        return (
            warnings,
            (
                f"degrade: nothing usable: every clean HR image is under {MIN_HR_SIZE} px (largest {largest} px), too small to train on; use larger photos "
                f"or a smaller cleanup_factor"
            ),
        )
    if not s["pairs"]["pairs"]:
        warnings.append(
            (
                f"0 HR/LR pairs: every clean HR image is smaller than pair_hr_size {size} px (largest {largest} px); train-flow can still train on them with "
                f"hr_size {largest // s['settings']['scale'] * s['settings']['scale']} or less"
            )
        )
    return warnings, None


def degrade_local(settings: DegradeSettings, log, source_name: str | None = None) -> tuple[dict, list[PreprocessRecord], dict[str, Path]]:
    """degrade-flow on local folders: the summary, the per-image records and the contact sheets.
    `source_name`: the source as the user named it, where `settings.source` is its local mirror."""
    t0 = time.perf_counter()
    run, sources, ignored = _claim(settings, log)
    spec = settings.spec(source_name)
    timings: dict[str, float] = {}
    p = _prepare(settings, spec, run, sources, timings, log)
    tn = time.perf_counter()
    noise = t.build_noise_bank(p.records, run, spec)
    timings["noise bank"] = time.perf_counter() - tn
    if noise["count"] == 0 and settings.on_empty_noise == "stop":
        raise EmptyNoiseBank(f"stopped before the pairs (on_empty_noise=stop): {noise['warning']}")

    tq = time.perf_counter()
    known_pairs, to_pair = rerun.split_pairs(sorted(p.records, key=lambda r: r.source), run, spec, p.kernels["digest"], noise["digest"])
    batched = batches(to_pair, settings.images_per_task)
    futures = t.make_pairs.map(batched, unmapped(run), unmapped(spec), unmapped(p.kernels["digest"]), unmapped(noise["digest"]))
    pairs, pair_failed = _gather(futures, batched, lambda r: r.source)
    pairs += known_pairs
    complete = all(f["bad_input"] for f in p.skipped + pair_failed + p.kernel_failed)
    manifest = t.write_manifest(run, pairs, p.records, p.kernel_records, complete)
    rerun.write_index(run, p.records, spec)
    timings["pairs"] = time.perf_counter() - tq
    timings["total"] = time.perf_counter() - t0

    records = p.records
    summary = {
        "run_dir": str(run.root),
        "sources": len(sources),
        "processed": len(records),
        "cached": sum(1 for r in records if r.cached),
        "worked_on": {"clean-up": len(p.to_prepare), "kernelgan": len(p.to_estimate), "pairs": len(to_pair)},
        "skipped": p.skipped + pair_failed,
        "ignored_files": [{"file": str(f), "reason": why} for f, why in ignored],
        "converted": [{"source": r.source, "notes": r.notes} for r in records if r.notes],
        "colour": colour_summary(records),
        "too_small_for_pairs": [r.source for r in pairs if not r.rows],
        "largest_clean_hr": max((min(r.hr_size) for r in records if r.hr_size), default=0),  # px, its shorter side
        "kernel_bank": p.kernels,
        "kernel_failures": p.kernel_failed,
        "noise_bank": noise,
        "jpeg": jpeg_summary(records),
        "pairs": manifest,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "settings": settings.model_dump(mode="json"),
    }
    sheets = bank_sheets(run, log)
    summary["sheets"] = {k: str(v) for k, v in sheets.items()}
    return summary, records, sheets


def _claim(settings: DegradeSettings, log) -> tuple[RunDir, list[Path], list]:
    """The source photos (and the files left out), checked, and the run folder claimed."""
    sources, ignored = list_images(settings.source.resolve())
    if not sources:
        raise InputError(f"no images found in {settings.source} (looked for png, jpg, heic, avif, tif, webp, bmp, dng, ...)")
    if settings.kernels.startswith("kernelgan") and not processed_photos(sources):
        raise InputError(
            (
                f"{settings.source} holds only RAW files (DNG): they are clean HR sources; KernelGAN and the noise bank need the camera's own processed "
                f"photos (HEIC, JPEG) beside them"
            )
        )
    run = RunDir(claim_run_dir(Path(settings.out).resolve(), settings.model_dump(mode="json"), source=settings.source))
    log.info(f"{len(sources)} source images in {settings.source}; run folder {run.root}")
    return run, sources, ignored


@dataclass
class _Prepared:
    """The clean-up and kernel fan-outs' results: what the noise bank and the pairs start from."""

    records: list[PreprocessRecord]
    skipped: list[dict]  # {"source", "reason", "bad_input"}
    to_prepare: list[Path]
    kernels: dict  # the kernel bank's info (steps.degrade_kernels.build_kernel_bank)
    kernel_records: list[KernelRecord]
    kernel_failed: list[dict]
    to_estimate: list[Path]


def _prepare(settings: DegradeSettings, spec, run: RunDir, sources: list[Path], timings: dict[str, float], log) -> _Prepared:
    """Clean-up and noise extraction of every photo needing it and, beside it, the kernels."""
    # clean-up goes first: its seconds-long tasks finish (and bad images show up) before the
    # minutes-long KernelGAN tasks take the workers
    tp = time.perf_counter()
    index = rerun.read_index(run)
    known_records, to_prepare = rerun.split_prepared(sources, run, spec, index)  # unchanged photos need no task
    if known_records:
        log.info(f"{len(known_records)} photos unchanged since an earlier run (from their records), {len(to_prepare)} to clean up")
    batched = batches(to_prepare, settings.images_per_task)
    futures = t.prepare_sources.map(batched, unmapped(run), unmapped(spec))
    tk = time.perf_counter()
    kernel_records, kernel_failed, kernel_futures, to_estimate = [], [], None, []
    if settings.kernels.startswith("kernelgan"):  # one more fan-out, beside clean-up and noise extraction
        kernel_records, to_estimate = rerun.split_kernels(processed_photos(sources), run, spec, index)
        kernel_batches = kernelgan_batches(to_estimate, settings.kernelgan_batch)
        route = gpu_annotations(log) if kernel_batches else {}  # to the workers that declare a GPU, where some do
        with dask.annotate(priority=-1, **route):  # workers run clean-up first (see flows.runtime)
            kernel_futures = t.estimate_kernels.map(kernel_batches, unmapped(run), unmapped(spec), unmapped(settings.kernelgan_device))
    else:
        kernels = t.build_kernel_bank(run, spec)
        timings["kernel bank"] = time.perf_counter() - tk

    records, skipped = _gather(futures, batched, str)
    records += known_records
    records, duplicates = drop_duplicates(records)
    skipped += duplicates
    timings["clean-up + noise extraction"] = time.perf_counter() - tp
    log.info(f"clean-up and noise extraction: {len(records)} done, {len(skipped)} skipped")

    if kernel_futures is not None:
        tk = time.perf_counter()
        estimated, kernel_failed = _gather(kernel_futures, kernel_batches, str)
        kernel_records += estimated
        kernel_records, _ = drop_duplicates(kernel_records)
        kernels = t.build_kernel_bank(run, spec, kernel_records)
        timings["kernel estimation (after clean-up)"] = time.perf_counter() - tk
    return _Prepared(records, skipped, to_prepare, kernels, kernel_records, kernel_failed, to_estimate)


def colour_summary(records: list[PreprocessRecord]) -> dict:
    """How many photos were converted to sRGB from their ICC profile (by profile), and how many are RAW."""
    profiles: dict[str, int] = {}
    for r in records:
        for n in r.notes:
            if n.startswith(SRGB_NOTE):
                name = n.removeprefix(SRGB_NOTE).strip()
                profiles[name] = profiles.get(name, 0) + 1
    return {"converted_to_srgb": sum(profiles.values()), "profiles": profiles, "raw_sources": sum(1 for r in records if RAW_NOTE in r.notes)}


def colour_line(c: dict) -> str:
    line = f"- colour: {c['converted_to_srgb']} photo(s) converted to sRGB from their ICC profile" + (
        " (" + ", ".join(f"{k}: {v}" for k, v in sorted(c["profiles"].items())) + ")" if c["profiles"] else ""
    )
    if c["raw_sources"]:
        line += f"; {c['raw_sources']} RAW (DNG) file(s) as clean HR sources only (no noise patches, no kernel)"
    return line


def jpeg_line(j: dict) -> str:
    if not j["jpeg_sources"]:
        return f"- JPEG sources: none ({j['other_sources']} other): training adds no JPEG step"
    return f"- JPEG sources: {j['jpeg_sources']} (median quality {j['median_quality']}; training re-compresses at each photo's own), {j['other_sources']} other"


def summary_markdown(s: dict) -> str:
    lines = [
        f"# degrade-flow: {s['run_dir']}",
        "",
        *([warning_markdown(s.get("warnings", []), s.get("error"))] if s.get("warnings") or s.get("error") else []),
        f"- sources: {s['sources']} ({s['processed']} processed, {s['cached']} from earlier runs, {len(s['skipped'])} skipped)",
        *(["- sent to workers: " + ", ".join(f"{k} {v}" for k, v in s["worked_on"].items())] if "worked_on" in s else []),
        f"- kernel bank: `{s['kernel_bank']['path']}`: "
        + ", ".join(f"{sc} {c['valid']} valid of {c['kernels']}" for sc, c in s["kernel_bank"]["counts"].items()),
        f"- noise bank: `{s['noise_bank']['path']}` {s['noise_bank']['count']} patches, {s['noise_bank']['rejected']} candidates rejected",
        *([f"- **WARNING: {s['noise_bank']['warning']}**"] if s["noise_bank"].get("warning") else []),
        f"- pairs: {s['pairs']['pairs']} in `{s['pairs']['path']}`",
        *([jpeg_line(s["jpeg"])] if s.get("jpeg") else []),
        *([colour_line(s["colour"])] if s.get("colour") else []),
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in s["timings_s"].items()],
    ]
    if s["skipped"]:
        lines += ["", "## Skipped", "", *[f"- `{x['source']}`: {x['reason']}" for x in s["skipped"]]]
    if s.get("kernel_failures"):
        lines += [
            "",
            "## No kernel estimated (the image still gives noise and pairs)",
            "",
            *[f"- `{x['source']}`: {x['reason']}" for x in s["kernel_failures"]],
        ]
    if s["kernel_bank"].get("fallbacks"):
        lines += ["", "## KernelGAN failed: the bicubic kernel stands in", "", *[f"- `{x['source']}`: {x['reason']}" for x in s["kernel_bank"]["fallbacks"]]]
    if s["kernel_bank"].get("rejected"):
        lines += ["", "## Kernels left out of the bank", "", *[f"- x{x['scale']} `{x['source']}`: {x['reason']}" for x in s["kernel_bank"]["rejected"]]]
    if s["too_small_for_pairs"]:
        lines += ["", "## No pairs (clean HR smaller than a pair patch)", "", *[f"- `{x}`" for x in s["too_small_for_pairs"]]]
    if s["converted"]:
        lines += ["", "## Converted on input", "", *[f"- `{x['source']}`: {'; '.join(x['notes'])}" for x in s["converted"]]]
    if s["ignored_files"]:
        lines += ["", "## Left out of the source folder", "", *[f"- `{x['file']}`: {x['reason']}" for x in s["ignored_files"]]]
    return "\n".join(lines) + "\n"


def _artifact_rows(records: list[PreprocessRecord]) -> list[dict]:
    """The per-image table of the flow's artifact."""
    return [
        {
            "source": r.source,
            "clean_hr": "x".join(map(str, r.hr_size)),
            "noise_patches": r.noise_count,
            "rejected": r.noise_rejected,
            "cached": r.cached,
            "seconds": r.seconds,
        }
        for r in records
    ]


def _publish(summary: dict, rows: list[dict], sheets: dict[str, Path]) -> None:
    pictures = [image_markdown(path, title) for title, path in sheets.items()]
    publish(
        get_run_logger(),
        "\n".join([summary_markdown(summary), *pictures]),
        "degrade-summary",
        "degrade-flow run summary, kernel and noise contact sheets",
        rows,
        "degrade-images",
        "per-image clean-up and noise extraction",
    )
