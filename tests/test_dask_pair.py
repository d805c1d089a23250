"""degrade-flow on a Dask cluster of one's own: a real `dask scheduler` and `dask worker` pair on
127.0.0.1, started and stopped (by process group) here. The flow sizes its KernelGAN batches from
that cluster's threads, not this machine's cores."""

import json
import os

import pytest

from realsr.flows.cli import main
from realsr.flows.degrade import kernelgan_batches
from realsr.flows.runtime import cluster_env, cluster_slots
from tests.conftest import dask_processes

pytestmark = pytest.mark.slow
WORKERS = 3  # not this machine's core count, so the sizing shows where it came from


@pytest.fixture
def dask_pair(prefect_server, tmp_path):
    with dask_processes(tmp_path / "dask.log", [["--nworkers", str(WORKERS)]], WORKERS) as address:
        yield address


def test_degrade_runs_on_the_pair_and_sizes_batches_from_it(dask_pair, photo_dir, tmp_path):
    with cluster_env(None, dask_pair):
        assert cluster_slots() == WORKERS
        assert [len(b) for b in kernelgan_batches(list(range(6)), None)] == [2, 2, 2]
    assert main(["degrade", "--source", str(photo_dir), "--out", str(tmp_path / "run"), "--dask-address", dask_pair, "--pair-hr-size", "64"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processed"] == 4 and summary["pairs"]["pairs"] > 0 and not summary["skipped"]
    assert "REALSR_DASK_ADDRESS" not in os.environ  # the flag was for that run only
