"""Where degrade-flow runs: the embedded Prefect API and the Dask cluster.

Plain ephemeral mode breaks with process-based Dask workers (each worker starts its own
temporary API server on one SQLite file: time-outs, "database is locked"). So when no
PREFECT_API_URL is set we start one API server for the whole run, export its URL before the
cluster starts (workers inherit it), and drain the log and event queues before stopping it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

# Offline-friendly defaults; an operator's own environment wins.
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}
# One compute thread per worker process: threads x processes must not exceed the cores.
# Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold:
# every buffer over 128 KB is then a fresh mmap, zero-filled page by page (KernelGAN in a worker
# spent 40 % of its time in page faults, 2.3x slower). A fixed 64 MB threshold keeps them in the
# heap; the trim still returns freed memory at the top of it.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
}


def apply_env_defaults() -> None:
    os.environ.setdefault("REALSR_USER_THREADS", os.environ.get("OMP_NUM_THREADS", ""))  # the command's own compute uses them (models.devices.compute_threads)
    for k, v in {**OFFLINE_ENV, **WORKER_ENV}.items():
        os.environ.setdefault(k, v)


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the URL of a Prefect API: the configured server, or one started for this run."""
    apply_env_defaults()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from realsr.flows import stopping

    server = _server_class(SubprocessASGIServer)()
    # a fresh database migrates for ~10 s on an idle core and twice that beside a busy one;
    # Prefect's 20 s default then fails the whole run (seen here with KernelGAN on the other core)
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:  # stopped by Ctrl-C, the run's workers go at once, the server when the flow run is marked
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), stopping.spared(server.server_process.pid):
            try:
                yield server.api_url
            finally:  # a failed run's last logs matter most; a stopped run's are not worth a wait
                if not stopping.requested():
                    APILogWorker.drain_all()
                    EventsWorker.drain_all()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@functools.cache
def _server_class(base):
    """Prefect's subprocess API server, whose process gets SIGTERM from the kernel when the
    thread that started it dies, SIGKILL of the run included (Linux parent-death signal): a
    killed run leaves no server behind. Elsewhere it is Prefect's own."""
    if not sys.platform.startswith("linux"):
        return base
    from prefect.server.api import server as module

    class ParentBoundServer(base):
        def _run_uvicorn_command(self):
            popen = module.subprocess.Popen
            module.subprocess.Popen = functools.partial(popen, preexec_fn=_die_with_parent)
            try:
                return super()._run_uvicorn_command()
            finally:
                module.subprocess.Popen = popen

    return ParentBoundServer


def local_workers() -> int:
    """Workers of the local cluster: REALSR_DASK_WORKERS, else one per core."""
    return int(os.environ.get("REALSR_DASK_WORKERS", "0") or 0) or (os.cpu_count() or 1)


@contextmanager
def cluster_env(workers: int | None, address: str | None) -> Iterator[None]:
    """REALSR_DASK_WORKERS / REALSR_DASK_ADDRESS set from command-line flags for one run (as a
    deployment's environment sets them), restored after. The cluster settings are checked first,
    before any server or cluster starts (flows/dask_cluster.py)."""
    from realsr.flows.dask_cluster import check_cluster

    check_cluster(workers, address)
    env = {"REALSR_DASK_WORKERS": str(workers) if workers else None, "REALSR_DASK_ADDRESS": address}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v})
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cluster_slots() -> int:
    """Tasks the flow's cluster runs at once: the threads of its workers as its scheduler reports
    them (the running flow's cluster, or the one at REALSR_DASK_ADDRESS), not this machine's cores.
    A REALSR_DASK_CLUSTER class not started yet counts what its arguments ask for, and an adaptive
    one what it may grow to (adapt's maximum); else the local cluster's workers."""
    from realsr.flows.dask_cluster import cluster_setting, cluster_workers, declared_slots

    workers = cluster_workers()
    running = sum(w["nthreads"] for w in workers.values()) if workers else 0
    spec = cluster_setting()
    declared = declared_slots(spec) if spec else None
    if spec and spec.adapt and declared:
        return max(running, declared)
    return running or declared or local_workers()


def task_runner(workers: int | None = None, address: str | None = None):
    """A DaskTaskRunner on an existing scheduler (tcp://...), on a cluster class of one's own
    (REALSR_DASK_CLUSTER, flows/dask_cluster.py) or on a local process cluster.

    REALSR_DASK_ADDRESS / REALSR_DASK_WORKERS set the same from a deployment's environment.
    """
    apply_env_defaults()
    from prefect_dask import DaskTaskRunner

    address = address or os.environ.get("REALSR_DASK_ADDRESS") or None
    if address:
        return DaskTaskRunner(address=address)
    import dask

    from realsr.flows.dask_cluster import cluster_setting
    from realsr.flows.settings import SettingsError

    # Dask queues only "root-ish" tasks on the scheduler and hands the others to workers at once:
    # the two KernelGAN batches took both workers while five clean-up batches waited in the
    # queue. With queuing off every task reaches a worker, which runs them by priority.
    # (A scheduler in this process only: the local cluster's, or a LocalCluster of REALSR_DASK_CLUSTER.)
    if "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION" not in os.environ:
        dask.config.set({"distributed.scheduler.worker-saturation": float("inf")})
    try:
        spec = cluster_setting()
    except SettingsError as e:  # degrade-flow builds its runner on import, which a bad setting must not break:
        return DaskTaskRunner(cluster_class=_refusal(e))  # the flow refuses it first (dask_cluster.check_cluster)
    if spec:
        return DaskTaskRunner(cluster_class=spec.path, cluster_kwargs=spec.kwargs, adapt_kwargs=spec.adapt)
    n = workers or local_workers()
    processes = os.environ.get("REALSR_DASK_PROCESSES", "1") != "0"
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        # scheduler, workers and dashboard on loopback: nothing of a local run listens outside
        # (thread workers talk in-process, where a host is not taken)
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": processes,
            "dashboard_address": "127.0.0.1:0",
            **({"host": "127.0.0.1"} if processes else {}),
        },
    )


def _refusal(error: Exception):
    """A cluster 'class' that raises the setting's error where the cluster would start."""

    def refused_cluster(**_):
        raise error

    return refused_cluster
