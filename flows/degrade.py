"""degrade-flow: a folder of real photos -> kernel bank, noise bank, clean HR and HR/LR pairs.

kernel bank (coordinator) ─────────────────────────────┐
clean-up + noise extraction (Dask, one task per image) ─┴> noise bank (coordinator)
    -> pairs (Dask, one task per image) -> manifest + summary (coordinator)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dask
from prefect import flow, get_run_logger, unmapped

from realsr.flows import preflight
from realsr.flows.artifacts import outcome, refused
from realsr.flows.dask_cluster import CLUSTER_VAR, check_cluster, gpu_annotations
from realsr.flows.degrade_report import artifact_rows, colour_summary, publish_summary
from realsr.flows.runtime import cluster_slots, task_runner
from realsr.flows.settings import DegradeSettings, SettingsError, resolve
from realsr.models.errors import InputError
from realsr.steps import degrade_rerun as rerun
from realsr.steps.degrade import in_run, jpeg_summary, save_summary
from realsr.steps.degrade_noise import EmptyNoiseBank
from realsr.steps.inspect import inspect_bank
from realsr.steps.mirrors import staged
from realsr.steps.on_worker import Apart
from realsr.storage.atomic import no_retry
from realsr.storage.degrade_records import KernelRecord, PreprocessRecord
from realsr.storage.image_formats import processed_photos
from realsr.storage.images import list_images
from realsr.storage.kernel_prior_file import PriorFileError
from realsr.storage.remote import is_url
from realsr.storage.run_dir import RunDir, claim_run_dir
from realsr.tasks import degrade as t


def batches(items: list, batch_size: int | None) -> list[list]:
    """Split per-image work into about 8 tasks (one image each on small runs, at most 32).

    A Prefect task costs ~0.2 s of wall time on 2 cores (submission, state, logs) whatever it
    does, as much as cleaning up a 1.5 MP photo; batches keep that off the per-image cost.
    """
    size = batch_size or max(1, min(32, -(-len(items) // 8)))
    return [items[i : i + size] for i in range(0, len(items), size)]


GPU_BATCH = 64  # photos per KernelGAN task on a GPU: with 3 seeds, three full networks of the fused engine's 64 slots


def kernelgan_batches(items: list, batch_size: int | None, slots: int | None = None, gpu: bool = False) -> list[list]:
    """Images trained together per KernelGAN task: an even split over the workers, at most 16;
    for GPU workers large tasks (at most `GPU_BATCH`, split evenly), each a few full networks of
    the fused engine, where one image per core would leave the device idle.

    A KernelGAN task runs for minutes, so its scheduling cost does not matter; what does is that
    images trained together cost about half as much per image (one set of kernel launches),
    that every worker gets a share, and that a killed run loses at most one batch per worker.
    The workers are the cluster's (`cluster_slots`): its threads, wherever it runs.
    """
    if batch_size is None and gpu:
        batch_size = -(-len(items) // max(1, -(-len(items) // GPU_BATCH)))
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
    apart = workers_apart(settings, log)
    with staged(settings.source, settings.out, log.info) as local:
        here = settings.model_copy(update={"source": local.source, "out": local.out})
        summary, records, sheets = degrade_local(here, log, source_name=str(settings.source), fan=Fanout(apart, local.sync))
        summary = local.rebase(summary)
        summary["settings"] = settings.model_dump(mode="json")
        summary["warnings"], summary["error"] = usable(summary)
        save_summary(RunDir(local.out), summary)
    publish_summary(summary, local.rebase(artifact_rows(records)), sheets)
    return outcome(log, summary, summary["warnings"], summary["error"])


@dataclass(frozen=True)
class Fanout:
    """Where the per-image tasks work: on the flow's folders (`apart` None), or, on workers that
    share no disk with it, at the run's URL (steps/on_worker.py); `sync` brings the flow's mirror
    up to what they wrote."""

    apart: Apart | None = None
    sync: Callable[[], None] = lambda: None

    def items(self, batch: list, spec) -> list:
        return [spec.photo_name(p) for p in batch] if self.apart else batch


def workers_apart(settings: DegradeSettings, log) -> Apart | None:
    """With a run folder at a URL and a cluster of its own (`--dask-address`, REALSR_DASK_CLUSTER),
    the workers may be other machines: the tasks then read and write at the URLs, not here."""
    own = os.environ.get("REALSR_DASK_ADDRESS") or os.environ.get(CLUSTER_VAR)
    if not (own and is_url(settings.out)):
        return None
    if not is_url(settings.source):
        log.warning(f"the Dask workers read the photos from {settings.source}: workers on other machines need it mounted there too")
        return None
    log.info(f"Dask workers apart from this flow: each task reads its photos from {settings.source} and writes its outputs to {settings.out}")
    return Apart(str(settings.out))


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


def degrade_local(
    settings: DegradeSettings, log, source_name: str | None = None, fan: Fanout = Fanout()
) -> tuple[dict, list[PreprocessRecord], dict[str, Path]]:
    """degrade-flow on local folders: the summary, the per-image records and the contact sheets.
    `source_name`: the source as the user named it, where `settings.source` is its local mirror;
    `fan`: where the tasks work."""
    t0 = time.perf_counter()
    run, sources, ignored = _claim(settings, log)
    spec = settings.spec(source_name)
    timings: dict[str, float] = {}
    p = _prepare(settings, spec, run, sources, timings, log, fan)
    tn = time.perf_counter()
    noise = t.build_noise_bank(p.records, run, spec)
    timings["noise bank"] = time.perf_counter() - tn
    if noise["count"] == 0 and settings.on_empty_noise == "stop":
        raise EmptyNoiseBank(f"stopped before the pairs (on_empty_noise=stop): {noise['warning']}")

    tq = time.perf_counter()
    known_pairs, to_pair = rerun.split_pairs(sorted(p.records, key=lambda r: r.source), run, spec, p.kernels["digest"], noise["digest"])
    batched = batches(to_pair, settings.images_per_task)
    if fan.apart and batched:
        fan.sync()  # the banks, for the workers to fetch
    futures = t.make_pairs.map(batched, unmapped(run), unmapped(spec), unmapped(p.kernels["digest"]), unmapped(noise["digest"]), unmapped(fan.apart))
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


def _prepare(settings: DegradeSettings, spec, run: RunDir, sources: list[Path], timings: dict[str, float], log, fan: Fanout) -> _Prepared:
    """Clean-up and noise extraction of every photo needing it and, beside it, the kernels."""
    # clean-up goes first: its seconds-long tasks finish (and bad images show up) before the
    # minutes-long KernelGAN tasks take the workers
    tp = time.perf_counter()
    index = rerun.read_index(run)
    known_records, to_prepare = rerun.split_prepared(sources, run, spec, index)  # unchanged photos need no task
    if known_records:
        log.info(f"{len(known_records)} photos unchanged since an earlier run (from their records), {len(to_prepare)} to clean up")
    batched = batches(to_prepare, settings.images_per_task)
    futures = t.prepare_sources.map([fan.items(b, spec) for b in batched], unmapped(run), unmapped(spec), unmapped(fan.apart))
    tk = time.perf_counter()
    kernel_records, kernel_failed, kernel_futures, to_estimate = [], [], None, []
    if settings.kernels.startswith("kernelgan"):  # one more fan-out, beside clean-up and noise extraction
        kernel_records, to_estimate = rerun.split_kernels(processed_photos(sources), run, spec, index)
        route = gpu_annotations(log) if to_estimate else {}  # to the workers that declare a GPU, where some do
        kernel_batches = kernelgan_batches(to_estimate, settings.kernelgan_batch, gpu=bool(route) or settings.kernelgan_device.startswith("cuda"))
        with dask.annotate(priority=-1, **route):  # workers run clean-up first (see flows.runtime)
            kernel_futures = t.estimate_kernels.map(
                [fan.items(b, spec) for b in kernel_batches], unmapped(run), unmapped(spec), unmapped(settings.kernelgan_device), unmapped(fan.apart)
            )
    else:
        kernels = t.build_kernel_bank(run, spec)
        timings["kernel bank"] = time.perf_counter() - tk

    records, skipped = _gather(futures, batched, str)
    if fan.apart and (to_prepare or to_estimate):
        for f in kernel_futures or ():
            f.wait()
        fan.sync()  # the clean HR images, staged patches and kernels the workers wrote at the URL
    records = [in_run(r, run) for r in records] + known_records  # a worker's record names its own scratch copy
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
