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

from storage import stages
from storage.images import BadImageError
from storage.run_dir import RunDir


class BatchError(Exception):
    """Some images of a batch failed; `done` holds the records of the others.

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
    """Retry transient failures (disk, worker loss), never a bad image: it would fail again."""
    try:
        state.result()
    except BatchError as e:
        return e.retryable
    except Exception:
        return True
    return False


def _batch_name() -> str:
    from prefect.runtime import task_run

    items = task_run.parameters.get("items") or []
    first = items[0] if items else ""
    label = Path(first).name if isinstance(first, (str, Path)) else first.get("name", "?")
    more = f" +{len(items) - 1}" if len(items) > 1 else ""
    return f"{task_run.task_name} {label}{more}"


def _each(items: list, label: Callable, work: Callable[[object], dict]) -> list[dict]:
    """Run `work` on every item; a BadImageError costs only its own item."""
    cv2.setNumThreads(1)  # one task per worker process: OpenCV's pool would oversubscribe the cores
    log = get_run_logger()
    done, failures = [], []
    for item in items:
        try:
            record = work(item)
        except BadImageError as e:
            log.error(str(e))
            failures.append({"source": str(label(item)), "reason": e.reason, "bad_input": True})
            continue
        except Exception as e:  # one image's unexpected error must not cost its batch
            log.exception(f"{label(item)}: {type(e).__name__}: {e}")
            failures.append({"source": str(label(item)), "reason": f"{type(e).__name__}: {e}", "bad_input": False})
            continue
        if record.get("cached"):
            log.info(f"{label(item)}: cached (done in an earlier run)")
        done.append(record)
    if failures:
        raise BatchError(done, failures)
    return done


_PER_IMAGE = dict(
    task_run_name=_batch_name,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_retry_unless_bad_input,
    cache_policy=NO_CACHE,
)


@task(name="clean-up", **_PER_IMAGE)
def prepare_sources(items: list[Path], run: RunDir, settings) -> list[dict]:
    """Clean-up and noise extraction of each source image (one decode serves both)."""
    log = get_run_logger()

    def one(path: Path) -> dict:
        record = stages.prepare_source(path, run, settings, log.info)
        for note in record["notes"]:
            log.warning(f"{path}: {note}")
        return record

    return _each(items, lambda p: p, one)


@task(name="pairs", **_PER_IMAGE)
def make_pairs(items: list[dict], run: RunDir, settings, kernel_digest: str, noise_digest: str) -> list[dict]:
    log = get_run_logger()
    return _each(
        items,
        lambda r: r["source"],
        lambda r: stages.make_pairs(r, run, settings, kernel_digest, noise_digest, log.info),
    )


@task(name="kernelgan", tags=["gpu"], **_PER_IMAGE)
def estimate_kernels(items: list[Path], run: RunDir, settings) -> list[dict]:
    """KernelGAN for a batch of source images trained together; tagged `gpu` so a tag
    concurrency limit can guard the device. A bad image costs only itself."""
    import torch

    from models.devices import resolve_device  # torch loads in the worker, not when the flow starts

    torch.set_num_threads(1)  # one task per worker process, as OpenCV
    device = str(resolve_device(settings.kernelgan_device))
    log = get_run_logger()
    done, failures = [], []
    for path, result in zip(items, stages.estimate_source_kernels(items, run, settings, device, log.info)):
        if isinstance(result, BadImageError):
            log.error(str(result))
            failures.append({"source": str(path), "reason": result.reason, "bad_input": True})
        else:
            if result["cached"]:
                log.info(f"{path}: cached (done in an earlier run)")
            done.append(result)
    if failures:
        raise BatchError(done, failures)
    return done


@task(name="build-kernel-bank", cache_policy=NO_CACHE)
def build_kernel_bank(run: RunDir, settings, kernelgan_records: list[dict] | None = None) -> dict:
    info = stages.build_kernel_bank(run, settings, kernelgan_records)
    log = get_run_logger()
    log.info(f"kernel bank {info['path']}: {info['counts']}")
    for r in info["rejected"]:
        log.warning(f"x{r['scale']} kernel of {r['source']} left out: {r['reason']}")
    for r in info["fallbacks"]:
        log.warning(f"{r['source']}: {r['reason']}")
    return info


@task(name="build-noise-bank", cache_policy=NO_CACHE)
def build_noise_bank(records: list[dict], run: RunDir, settings) -> dict:
    info = stages.build_noise_bank(records, run, settings)
    log = get_run_logger()
    log.info(f"noise bank {info['path']}: {info['count']} patches, {info['rejected']} candidates rejected")
    if info["warning"]:
        log.warning(info["warning"])
    return info


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(run: RunDir, pair_records: list[dict], records: list[dict], kernel_records: list[dict], complete: bool) -> dict:
    """The manifest; stale outputs are pruned only when no image failed for a reason other than bad input."""
    log = get_run_logger()
    info = stages.write_manifest(run, pair_records, remove_stale=complete)
    info["pruned"] = stages.prune(run, records, pair_records, kernel_records) if complete else 0
    if not complete:
        log.warning("some images failed with errors: outputs of earlier runs were kept, nothing pruned")
    log.info(f"manifest {info['path']}: {info['pairs']} pairs")
    return info
