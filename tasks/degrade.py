"""degrade-flow's tasks. Each returns small records (paths, counts, stats), never an image.

Per-image work is submitted in small batches (one image per task on small runs): a Prefect task
costs ~0.1 s of a worker's time, as much as cleaning up a 1 MP photo. Inside a batch every image
is isolated: a bad one is logged with its file name, the others finish, and the task then fails
with `BatchError`, which names the bad files and carries the good records to the flow.

Caching across runs is done by the stages themselves (records keyed on the image's content hash
and the settings that matter, written last and atomically), so Prefect's result cache is off: a
rerun shows finished images as fast completed tasks that log "cached".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from realsr.steps import degrade as stages
from realsr.steps import degrade_kernels as kernel_steps
from realsr.steps import degrade_rerun as rerun
from realsr.steps.degrade import DegradeSpec
from realsr.steps.on_worker import Apart, on_worker
from realsr.storage.atomic import no_retry
from realsr.storage.degrade_records import KernelRecord, PairsRecord, PreprocessRecord
from realsr.storage.images import BadImageError
from realsr.storage.run_dir import RunDir


class BatchError(Exception):
    """Some images of a batch failed; `done` holds the (typed) records of the others.

    Each failure is {"source", "reason", "bad_input"}: bad inputs fail again on a retry, other
    errors (disk, memory, a bug) may not, and the finished images are cached, so only those retry.
    """

    def __init__(self, done: list[dict], failures: list[dict]):
        self.done = done
        self.failures = failures
        self.retryable = any(not f["bad_input"] for f in failures)
        names = "; ".join(f"{f['source']}: {f['reason']}" for f in failures)
        super().__init__(f"{len(failures)} of {len(done) + len(failures)} images failed: {names}")

    def __reduce__(self):  # crosses process boundaries (Dask workers) intact
        return (type(self), (self.done, self.failures))


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures (worker loss, a flaky read), never a bad image or a full or
    read-only disk: they would fail again."""
    try:
        state.result()
    except BatchError as e:
        return e.retryable
    except Exception as e:
        return not no_retry(e)
    return False


def _batch_name() -> str:
    from prefect.runtime import task_run

    items = task_run.parameters.get("items") or []
    first = items[0] if items else ""
    label = Path(first).name if isinstance(first, (str, Path)) else getattr(first, "name", "?")
    more = f" +{len(items) - 1}" if len(items) > 1 else ""
    return f"{task_run.task_name} {label}{more}"


def _settle(outcomes: list[tuple[object, dict | Exception]]) -> list[dict]:
    """The records of a batch, each outcome logged; BatchError when some item failed (a
    BadImageError is a bad input, anything else may pass on a retry)."""
    log = get_run_logger()
    done, failures = [], []
    for name, outcome in outcomes:
        if no_retry(outcome):  # a full disk is the run's failure, not the image's (flows/cli.py says it)
            raise outcome
        if isinstance(outcome, BadImageError):
            log.error(str(outcome))
            failures.append({"source": str(name), "reason": outcome.reason, "bad_input": True})
        elif isinstance(outcome, Exception):
            log.error(f"{name}: {type(outcome).__name__}: {outcome}", exc_info=outcome)
            failures.append({"source": str(name), "reason": f"{type(outcome).__name__}: {outcome}", "bad_input": False})
        else:
            if outcome.cached:
                log.info(f"{name}: cached (done in an earlier run)")
            done.append(outcome)
    if failures:
        raise BatchError(done, failures)
    return done


def _each(items: list, label: Callable, work: Callable[[object], dict]) -> list[dict]:
    """Run `work` on every item; an error costs only its own item."""
    return _settle(_outcomes(items, label, work))


def _outcomes(items: list, label: Callable, work: Callable[[object], dict]) -> list[tuple[object, object]]:
    """(label, record or the exception) of every item."""
    cv2.setNumThreads(1)  # one task per worker process: OpenCV's pool would oversubscribe the cores
    outcomes = []
    for item in items:
        try:
            outcomes.append((label(item), work(item)))
        except Exception as e:  # one image's error must not cost its batch
            if no_retry(e):  # ...but a full disk fails the next one too
                raise
            outcomes.append((label(item), e))
    return outcomes


_PER_IMAGE = dict(
    task_run_name=_batch_name,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_retry_unless_bad_input,
    cache_policy=NO_CACHE,
)


@task(name="clean-up", **_PER_IMAGE)
def prepare_sources(items: list[Path] | list[str], run: RunDir, spec: DegradeSpec, apart: Apart | None = None) -> list[PreprocessRecord]:
    """Clean-up and noise extraction of each source image (one decode serves both). `apart`: the
    worker shares no disk with the flow; `items` are photo names (URLs), see steps/on_worker.py."""
    log = get_run_logger()

    def one(path: Path, run: RunDir, spec: DegradeSpec) -> PreprocessRecord:
        record = stages.prepare_source(path, run, spec, log.info)
        for note in record.notes:
            log.warning(f"{record.source}: {note}")
        return record

    if apart is None:
        return _each(items, lambda p: p, lambda p: one(p, run, spec))
    with on_worker(apart, spec, photos=items) as (here, local):
        outcomes = _outcomes(items, lambda n: n, lambda n: one(local.photo_path(n), here, local))
    return _settle(outcomes)  # after the upload: the good images' outputs are kept when one fails


@task(name="pairs", **_PER_IMAGE)
def make_pairs(
    items: list[PreprocessRecord], run: RunDir, spec: DegradeSpec, kernel_digest: str, noise_digest: str, apart: Apart | None = None
) -> list[PairsRecord]:
    log = get_run_logger()
    if apart is None:
        return _each(items, lambda r: r.source, lambda r: stages.make_pairs(r, run, spec, kernel_digest, noise_digest, log.info))
    files = [f"clean_hr/{Path(r.clean_hr).name}" for r in items]
    with on_worker(apart, spec, files=files, banks={"kernels.zarr": kernel_digest, "noise.zarr": noise_digest}) as (here, local):
        outcomes = _outcomes(items, lambda r: r.source, lambda r: stages.make_pairs(stages.in_run(r, here), here, local, kernel_digest, noise_digest, log.info))
    return _settle(outcomes)


@task(name="kernelgan", tags=["gpu"], **_PER_IMAGE)
def estimate_kernels(items: list[Path] | list[str], run: RunDir, spec: DegradeSpec, device: str, apart: Apart | None = None) -> list[KernelRecord]:
    """KernelGAN for a batch of source images trained together; tagged `gpu` so a tag
    concurrency limit can guard the device. A bad image costs only itself."""
    import torch

    from realsr.models.devices import resolve_device  # torch loads in the worker, not when the flow starts

    torch.set_num_threads(1)  # one task per worker process, as OpenCV
    device = str(resolve_device(device))
    log = get_run_logger()
    if apart is None:
        return _settle(list(zip(items, kernel_steps.estimate_source_kernels(items, run, spec, device, log.info))))
    with on_worker(apart, spec, photos=items) as (here, local):
        found = kernel_steps.estimate_source_kernels([local.photo_path(n) for n in items], here, local, device, log.info)
    return _settle(list(zip(items, found)))


@task(name="build-kernel-bank", cache_policy=NO_CACHE)
def build_kernel_bank(run: RunDir, spec: DegradeSpec, kernelgan_records: list[KernelRecord] | None = None) -> dict:
    info = kernel_steps.build_kernel_bank(run, spec, kernelgan_records)
    log = get_run_logger()
    log.info(f"kernel bank {info['path']}: {info['counts']}")
    for r in info["rejected"]:
        log.warning(f"x{r['scale']} kernel of {r['source']} left out: {r['reason']}")
    for r in info["fallbacks"]:
        log.warning(f"{r['source']}: {r['reason']}")
    return info


@task(name="build-noise-bank", cache_policy=NO_CACHE)
def build_noise_bank(records: list[PreprocessRecord], run: RunDir, spec: DegradeSpec) -> dict:
    info = stages.build_noise_bank(records, run, spec)
    log = get_run_logger()
    log.info(f"noise bank {info['path']}: {info['count']} patches, {info['rejected']} candidates rejected")
    if info["warning"]:
        log.warning(info["warning"])
    return info


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(run: RunDir, pair_records: list[PairsRecord], records: list[PreprocessRecord], kernel_records: list[KernelRecord], complete: bool) -> dict:
    """The manifest; stale outputs are pruned only when no image failed for a reason other than bad input."""
    log = get_run_logger()
    info = stages.write_manifest(run, pair_records, remove_stale=complete)
    info["pruned"] = rerun.prune(run, records, pair_records, kernel_records) if complete else 0
    if not complete:
        log.warning("some images failed with errors: outputs of earlier runs were kept, nothing pruned")
    log.info(f"manifest {info['path']}: {info['pairs']} pairs")
    return info
