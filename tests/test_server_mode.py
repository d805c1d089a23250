"""Server mode: prefect.yaml deploys, a worker on cpu-pool runs `prefect deployment run degrade-flow/degrade`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from realsr.flows.demo import write_samples

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_env(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "REALSR_REPO": str(REPO),
        "REALSR_DASK_WORKERS": "1",
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read() == b"true":
                    break
            except OSError:
                pass
            assert time.time() < deadline and server.poll() is None, "prefect server did not start"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _ok(args, env, timeout=180):
    p = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_deployment_run_through_a_worker(server_env, tmp_path):
    write_samples(tmp_path / "photos", 2, 0)
    out = tmp_path / "run"
    _ok(["work-pool", "create", "cpu-pool", "--type", "process"], server_env)
    _ok(["work-pool", "create", "gpu-pool", "--type", "process"], server_env)
    deployed = _ok(["--no-prompt", "deploy", "--all"], server_env)
    assert "evaluate-flow/evaluate" in deployed or "evaluate" in _ok(["deployment", "ls"], server_env)
    params = json.dumps({"source": str(tmp_path / "photos"), "out": str(out)})
    _ok(["deployment", "run", "degrade-flow/degrade", "-p", f"settings={params}"], server_env)
    _ok(["worker", "start", "--pool", "cpu-pool", "--run-once"], server_env, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 2 and summary["pairs"]["pairs"] == 4
    assert (out / "noise.zarr").exists() and (out / "kernels.zarr").exists()
