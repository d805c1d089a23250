"""GPU routing on Dask and the cluster-class setting (flows/dask_cluster.py), on real parts: a real
`dask scheduler` with two `dask worker` processes on 127.0.0.1 (one declaring `GPU=1`), the
default local cluster, and a LocalCluster plugged through REALSR_DASK_CLUSTER."""

import json

import pytest

from realsr.flows.cli import main
from realsr.flows.dask_cluster import check_cluster, declared_slots
from realsr.flows.runtime import cluster_slots, task_runner
from realsr.flows.settings import SettingsError
from tests.conftest import dask_processes, small_photo, write_rgb

pytestmark = pytest.mark.slow
FAST_KERNELGAN = ["--kernels", "kernelgan", "--kernelgan-iterations", "3", "--kernelgan-seeds", "1", "--pair-hr-size", "64"]
NO_GPU = "no Dask worker declares a GPU resource: KernelGAN tasks run on any worker"


@pytest.fixture
def photo_dir(tmp_path):
    """Two photos (KernelGAN's time is per photo): enough for two KernelGAN tasks."""
    for i in range(2):
        write_rgb(tmp_path / "photos" / f"photo_{i}.png", small_photo(i))
    return tmp_path / "photos"


def _degrade(photo_dir, out, *extra) -> dict:
    assert main(["degrade", "--source", str(photo_dir), "--out", str(out), *FAST_KERNELGAN, *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 2 and summary["worked_on"]["kernelgan"] == 2
    assert not summary["kernel_failures"]  # every photo went through a KernelGAN task (3 iterations may fall back to bicubic inside it)
    return summary


def test_kernelgan_tasks_run_only_on_the_worker_that_declares_a_gpu(prefect_server, photo_dir, tmp_path, caplog):
    from distributed import Client, get_task_stream

    workers = [["--resources", "GPU=1", "--name", "gpu"], ["--name", "cpu"]]
    with dask_processes(tmp_path / "dask.log", workers, 2) as address, Client(address, timeout=60) as client:
        by_name = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        with get_task_stream(client) as stream:  # the scheduler's own record of where each task ran
            _degrade(photo_dir, tmp_path / "run", "--dask-address", address, "--kernelgan-batch", "1")
    ran: dict[str, set[str]] = {}
    for t in stream.data:
        ran.setdefault(t["key"].rpartition("-")[0], set()).add(t["worker"])
    assert ran["estimate_kernels"] == {by_name["gpu"]}, ran  # both KernelGAN tasks, on the GPU worker only
    assert by_name["cpu"] in ran["prepare_sources"] | ran["make_pairs"], ran  # the rest is anyone's
    assert f"KernelGAN tasks: routed to the 1 Dask worker that declares a GPU resource ({by_name['gpu']})" in caplog.text  # the flow's log


def test_without_a_gpu_worker_kernelgan_runs_on_any_worker(prefect_server, photo_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("REALSR_DASK_PROCESSES", "0")  # the default local cluster, thread workers (quick to start)
    monkeypatch.setenv("REALSR_DASK_WORKERS", "2")
    _degrade(photo_dir, tmp_path / "run")
    assert NO_GPU in caplog.text and "routed to" not in caplog.text


def test_a_cluster_class_from_the_setting_runs_degrade(prefect_server, photo_dir, tmp_path, caplog, monkeypatch):
    """Its arguments reach the cluster: the GPU its workers declare is what the routing sees."""
    kwargs = {"n_workers": 2, "threads_per_worker": 1, "processes": False, "dashboard_address": None, "resources": {"GPU": 1}}
    monkeypatch.setenv("REALSR_DASK_CLUSTER", "distributed.LocalCluster " + json.dumps(kwargs))
    _degrade(photo_dir, tmp_path / "run")
    assert "KernelGAN tasks: routed to the 2 Dask workers that declare a GPU resource (inproc://" in caplog.text


def test_a_bad_cluster_setting_is_refused_in_one_line_before_anything_starts(photo_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("REALSR_DASK_CLUSTER", 'distributed.LocalClustr {"n_workers": 2}')
    out = tmp_path / "run"
    assert main(["degrade", "--source", str(photo_dir), "--out", str(out)]) == 2
    assert capfd.readouterr().err.strip().splitlines() == ["error: REALSR_DASK_CLUSTER: module distributed has no LocalClustr"]
    assert not (out / "summary.json").exists() and not (out / "kernels.zarr").exists()


def test_a_bad_setting_does_not_break_the_flow_modules_import_and_is_refused_by_the_flow(prefect_server, photo_dir, tmp_path, monkeypatch):
    """degrade-flow builds its runner on import (a deployment's environment): the runner carries the
    refusal, and the flow refuses the setting in its first second, before the cluster starts."""
    from realsr.flows.degrade import degrade_flow
    from realsr.flows.settings import DegradeSettings

    monkeypatch.setenv("REALSR_DASK_CLUSTER", "distributed.LocalCluster {n_workers: 2}")
    runner = task_runner()
    with pytest.raises(SettingsError, match="^REALSR_DASK_CLUSTER: distributed.LocalCluster's arguments are not JSON"):
        runner.cluster_class()
    with pytest.raises(SettingsError, match="^REALSR_DASK_CLUSTER: .* not JSON"):
        degrade_flow.with_options(task_runner=runner)(DegradeSettings(source=photo_dir, out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "env, flags, message",
    [
        ({"REALSR_DASK_CLUSTER": "no_such_package.Cluster"}, {}, "cannot import no_such_package: No module named 'no_such_package'"),
        ({"REALSR_DASK_CLUSTER": "LocalCluster"}, {}, "is not a class path"),
        ({"REALSR_DASK_CLUSTER": "distributed.Client {}"}, {}, "distributed.Client is not a Dask cluster class"),
        ({"REALSR_DASK_CLUSTER": "distributed.LocalCluster [2]"}, {}, "must be a JSON object"),
        ({"REALSR_DASK_CLUSTER": "distributed.LocalCluster", "REALSR_DASK_ADAPT": "{maximum: 3}"}, {}, "REALSR_DASK_ADAPT: adapt's arguments are not JSON"),
        ({"REALSR_DASK_ADAPT": '{"maximum": 3}'}, {}, "REALSR_DASK_ADAPT is set but REALSR_DASK_CLUSTER is not"),
        ({"REALSR_DASK_CLUSTER": "distributed.LocalCluster"}, {"address": "tcp://127.0.0.1:8786"}, "both name the cluster"),
        ({"REALSR_DASK_CLUSTER": "distributed.LocalCluster"}, {"workers": 2}, "--workers sizes the local cluster"),
    ],
)
def test_cluster_settings_refused(env, flags, message, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        check_cluster(**flags)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_slots_of_a_cluster_class_not_started_yet(monkeypatch):
    monkeypatch.delenv("REALSR_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("REALSR_DASK_CLUSTER", 'distributed.LocalCluster {"n_workers": 3, "threads_per_worker": 2}')
    assert cluster_slots() == 6
    monkeypatch.setenv("REALSR_DASK_ADAPT", '{"minimum": 1, "maximum": 5}')
    assert cluster_slots() == 10  # an adaptive cluster grows to its maximum as the KernelGAN tasks queue
    spec = check_cluster()
    assert spec.adapt == {"minimum": 1, "maximum": 5} and declared_slots(spec) == 10
