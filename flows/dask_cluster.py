"""Which Dask cluster degrade-flow runs on, and which of its workers get the GPU work.

`REALSR_DASK_CLUSTER` plugs any Dask cluster class (dask-jobqueue's SLURMCluster, dask-kubernetes'
KubeCluster, a LocalCluster with resources) as a class path, a space and a JSON object of its
keyword arguments; `REALSR_DASK_ADAPT` is a JSON object of `cluster.adapt()`'s. Both are read
and checked here, before any server or cluster starts (flows.runtime `cluster_env`, and
degrade-flow's first second for deployment runs).

GPU work asks Dask for a `GPU` resource only where some worker declares one (`dask worker
--resources GPU=1`, `LocalCluster(resources={"GPU": 1})`): a resource no worker has would leave
the tasks waiting for ever, so without one they run on any worker, and the log says which.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from dataclasses import dataclass

from realsr.flows.settings import SettingsError

CLUSTER_VAR = "REALSR_DASK_CLUSTER"
ADAPT_VAR = "REALSR_DASK_ADAPT"


@dataclass(frozen=True)
class ClusterSpec:
    """REALSR_DASK_CLUSTER and REALSR_DASK_ADAPT, read: what DaskTaskRunner is given."""

    path: str  # e.g. "dask_jobqueue.SLURMCluster"
    kwargs: dict
    adapt: dict


def cluster_setting() -> ClusterSpec | None:
    """REALSR_DASK_CLUSTER (`package.Class {"json": "arguments"}`, the arguments optional) and
    REALSR_DASK_ADAPT, checked: the class imports and is a Dask cluster, both JSON objects, the
    arguments its constructor takes. None where no class is set (the local cluster)."""
    value = os.environ.get(CLUSTER_VAR, "").strip()
    adapt_text = os.environ.get(ADAPT_VAR, "").strip()
    if not value:
        if adapt_text:
            raise SettingsError(f"{ADAPT_VAR} is set but {CLUSTER_VAR} is not: it adapts a cluster class of one's own")
        return None
    path, _, args = value.replace("\t", " ").partition(" ")
    cls = _cluster_class(path)
    kwargs = _json_object(CLUSTER_VAR, args.strip() or "{}", f"{path}'s arguments")
    adapt = _json_object(ADAPT_VAR, adapt_text or "{}", "adapt's arguments")
    if "asynchronous" in kwargs:
        raise SettingsError(f"{CLUSTER_VAR}: leave 'asynchronous' out (Prefect's task runner sets it)")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise SettingsError(f"{CLUSTER_VAR}: {path} refuses its arguments: {e}") from None
    return ClusterSpec(path, kwargs, adapt)


def _cluster_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    if not module:
        raise SettingsError(f"{CLUSTER_VAR}: {path!r} is not a class path (package.Class, then its JSON arguments)")
    try:
        cls = getattr(importlib.import_module(module), name)
    except AttributeError:
        raise SettingsError(f"{CLUSTER_VAR}: module {module} has no {name}") from None
    except Exception as e:  # not installed, or broken on import
        raise SettingsError(f"{CLUSTER_VAR}: cannot import {module}: {e} (install it where the flow runs)") from None
    from distributed.deploy import Cluster

    if not (isinstance(cls, type) and issubclass(cls, Cluster)):
        raise SettingsError(f"{CLUSTER_VAR}: {path} is not a Dask cluster class (a distributed.deploy.Cluster)")
    return cls


def _json_object(var: str, text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{var}: {what} are not JSON: {e}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{var}: {what} must be a JSON object ({{...}}), not {text}")
    return value


def check_cluster(workers: int | None = None, address: str | None = None) -> ClusterSpec | None:
    """The run's cluster settings, refused in one line before anything starts: a bad
    REALSR_DASK_CLUSTER / REALSR_DASK_ADAPT, or a cluster class beside another way to name one."""
    spec = cluster_setting()
    address = address or os.environ.get("REALSR_DASK_ADDRESS")
    if spec and address:
        raise SettingsError(f"{CLUSTER_VAR} and --dask-address (REALSR_DASK_ADDRESS) both name the cluster ({spec.path}, {address}): keep one")
    if spec and workers:
        raise SettingsError(f"--workers sizes the local cluster; with {CLUSTER_VAR} its own arguments do (n_workers)")
    return spec


def declared_slots(spec: ClusterSpec) -> int | None:
    """Threads a cluster class will have, from its arguments: adapt's maximum (workers) or n_workers,
    times threads_per_worker (1 if not given). None where they do not say."""
    workers = spec.adapt.get("maximum") or spec.kwargs.get("n_workers")
    threads = spec.kwargs.get("threads_per_worker") or 1
    if isinstance(workers, int) and isinstance(threads, int) and workers > 0:
        return workers * threads
    return None


def cluster_workers(start: bool = False) -> dict[str, dict] | None:
    """The flow's Dask workers as its scheduler reports them, {address: {"nthreads", "resources", ...}}:
    through the running flow's own client, else REALSR_DASK_ADDRESS's scheduler; None where no
    cluster is known. `start`: start the flow's cluster if it has not started yet (it starts with
    the first task submitted; a rerun with nothing to do must not start one just to count)."""
    client = _flow_client(start)
    if client is not None:
        return client.scheduler_info(n_workers=-1)["workers"]
    address = os.environ.get("REALSR_DASK_ADDRESS")
    if not address:
        return None
    from distributed import Client

    with Client(address, timeout=30) as c:
        return c.scheduler_info(n_workers=-1)["workers"]


def _flow_client(start: bool):
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if not isinstance(runner, DaskTaskRunner):
        return None
    return runner.client if start else runner._client  # prefect-dask makes its client (and cluster) on first use


def gpu_annotations(log, what: str = "KernelGAN tasks") -> dict:
    """dask.annotate arguments that send GPU work to the workers declaring a `GPU` resource, one
    unit per task; none where no worker declares one, so the work runs on any worker. Logged."""
    workers = cluster_workers(start=True)
    if workers is None:  # not on Dask (a thread-pool task runner): nothing to route
        return {}
    gpus = sorted(a for a, w in workers.items() if (w.get("resources") or {}).get("GPU", 0) > 0)
    if not gpus:
        log.info(f"no Dask worker declares a GPU resource: {what} run on any worker")
        return {}
    many = len(gpus) > 1
    log.info(f"{what}: routed to the {len(gpus)} Dask worker{'s' if many else ''} that declare{'' if many else 's'} a GPU resource ({', '.join(gpus)})")
    return {"resources": {"GPU": 1}}
