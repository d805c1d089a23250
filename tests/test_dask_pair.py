"""degrade-flow on a Dask cluster of one's own: a real `dask scheduler` and `dask worker` pair on
127.0.0.1, started and stopped (by process group) here. The flow sizes its KernelGAN batches from
that cluster's threads, not this machine's cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from realsr.flows.cli import main
from realsr.flows.degrade import kernelgan_batches
from realsr.flows.runtime import WORKER_ENV, cluster_env, cluster_slots
from realsr.flows.stack import free_port
from tests.conftest import stop_groups

pytestmark = pytest.mark.slow
DASK = str(Path(sys.executable).with_name("dask"))
WORKERS = 3  # not this machine's core count, so the sizing shows where it came from


@pytest.fixture
def dask_pair(prefect_server, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **WORKER_ENV}
    logs = open(tmp_path / "dask.log", "wb")
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
            env=env,
            stdout=logs,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [DASK, "worker", address, "--nworkers", str(WORKERS), "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                env=env,
                stdout=logs,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(WORKERS, timeout=120)
        yield address
    finally:
        stop_groups(procs)
        logs.close()


def test_degrade_runs_on_the_pair_and_sizes_batches_from_it(dask_pair, photo_dir, tmp_path):
    with cluster_env(None, dask_pair):
        assert cluster_slots() == WORKERS
        assert [len(b) for b in kernelgan_batches(list(range(6)), None)] == [2, 2, 2]
    assert main(["degrade", "--source", str(photo_dir), "--out", str(tmp_path / "run"), "--dask-address", dask_pair, "--pair-hr-size", "64"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processed"] == 4 and summary["pairs"]["pairs"] > 0 and not summary["skipped"]
    assert "REALSR_DASK_ADDRESS" not in os.environ  # the flag was for that run only
