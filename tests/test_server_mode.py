"""Server mode as an operator runs it: `realsr stack up` (a real server on a free loopback port, a
temporary PREFECT_HOME, pools, the gpu limit, `prefect deploy --all`, a CPU and a GPU process
worker), then the pipeline deployment, the nightly schedule's deployment, a train run with the
full parameter set the UI's form submits, and a rerun that recomputes nothing; the stack taken
down by pid at the end, also on failure."""

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from realsr.flows.demo import write_samples
from realsr.flows.stack import Stack, _alive
from realsr.flows.train_settings import FINETUNE_CPU_ITERATIONS
from realsr.storage.banks import open_kernel_bank, open_noise_bank

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "stack")
    pids = []
    try:
        s.said = []
        state = s.up(say=s.said.append)
        pids = [p["pid"] for p in state["processes"]]
        yield s
    finally:
        pids = pids or [p["pid"] for p in s.read().get("processes", [])]
        s.down(say=lambda m: None)
        assert not [p for p in pids if _alive(p)], "a stack process outlived `stack down`"
        assert not s._descendants(), "a process the stack started (a flow run) outlived `stack down`"


def api(stack: Stack, path: str, body=None):
    req = urllib.request.Request(
        stack.read()["url"] + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    for attempt in range(10):  # the server answers 503 while its SQLite database is busy (Prefect's clients retry too)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 9:
                raise
            time.sleep(1)


def start(stack: Stack, name: str, parameters: dict | None = None) -> str:
    """What the UI's Run button does: a flow run of the deployment (with the form's parameters)."""
    dep = api(stack, f"/deployments/name/{name}")
    return api(stack, f"/deployments/{dep['id']}/create_flow_run", {} if parameters is None else {"parameters": parameters})["id"]


def wait(stack: Stack, run_id: str, timeout: float = 900, expect: str = "COMPLETED") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = api(stack, f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert run["state_type"] == expect, f"{run['name']}: {run['state_type']} {run['state']['message']}"
            return run
        assert time.monotonic() < deadline, f"{run['name']} still {run['state_type']}"
        time.sleep(1)


def test_pipeline_schedule_ui_form_and_rerun_through_the_stack(stack):
    data = stack.home / "data"
    write_samples(data / "photos", 3, 0)
    out = data / "runs" / "tiny"
    pipeline = {"source": str(data / "photos"), "out": str(out), "preset": "test-tiny", "stages": "deployments"}
    first = start(stack, "realsr-pipeline/pipeline", {"settings": pipeline})
    nightly = api(stack, "/deployments/name/degrade-flow/nightly")
    assert nightly["schedules"] and nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["parameters"]["settings"]["source"] == str(data / "photos")  # real paths, not placeholders
    scheduled = start(stack, "degrade-flow/nightly")  # the schedule's own parameters
    # a partial `settings` (`prefect deployment run --params`) merges over the deployment's; a bad
    # stage setting fails the run at its start with the one-line reason as its state message
    bad = start(stack, "realsr-pipeline/pipeline", {"settings": {"degrade": {"kernelgan_seeds": "three"}}})
    assert (
        wait(stack, bad, expect="FAILED")["state"]["message"]
        == "invalid settings: degrade.kernelgan_seeds: Input should be a valid integer, unable to parse string as an integer"
    )
    wait(stack, first)
    wait(stack, scheduled)

    # the pipeline: its stages ran on their pools, the stores open, the table has its rows
    runs = api(stack, "/flow_runs/filter", {})
    pools = {r["flow_id"]: r["work_pool_name"] for r in runs if r["parent_task_run_id"]}
    flows = {f["id"]: f["name"] for f in api(stack, "/flows/filter", {})}
    assert {flows[f]: p for f, p in pools.items()} == {"degrade-flow": "cpu-pool", "train-flow": "gpu-pool", "evaluate-flow": "gpu-pool"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == {"degrade": "ran", "train": "ran", "evaluate": "ran"}
    assert len(open_kernel_bank(out / "run" / "kernels.zarr")[1][4].valid_indices()) == 1 and open_noise_bank(out / "run" / "noise.zarr") is not None
    table = (out / "eval" / "results.md").read_text()
    assert all(f"| {row} |" in table for row in ("bicubic", "realesrgan-x4plus", "trained")) and (out / "trained.pth").exists()
    artifacts = {a["key"]: a for a in api(stack, "/artifacts/filter", {})}
    assert "data:image/png;base64," in artifacts["realsr-pipeline"]["data"] and "| trained |" in artifacts["realsr-pipeline"]["data"]
    assert "data:image/png;base64," in artifacts["degrade-summary"]["data"]
    assert json.loads((data / "runs" / "nightly" / "summary.json").read_text())["processed"] == 3

    # the UI's "Custom run" form submits every field (at its default: null = the preset's value,
    # which the field's description lists per preset)
    dep = api(stack, "/deployments/name/train-flow/train")
    fields = dep["parameter_openapi_schema"]["definitions"]["TrainSettings"]["properties"]
    assert f"(paper: 60000, finetune: 5000, finetune-cpu: {FINETUNE_CPU_ITERATIONS}, cpu-small: 2000, test-tiny: 6)" in fields["iterations"]["description"]
    assert api(stack, "/deployments/name/realsr-pipeline/pipeline")["parameters"]["settings"]["preset"] == "auto"  # a Quick run fits the hardware
    form = {k: v.get("default") for k, v in fields.items()} | dep["parameters"]["settings"]
    form |= {"run_dir": str(out / "run"), "out": str(data / "runs" / "ui-train"), "preset": "test-tiny", "init": None}
    wait(stack, start(stack, "train-flow/train", {"settings": form}))
    trained = json.loads((data / "runs" / "ui-train" / "summary.json").read_text())
    assert trained["iterations"] == 6  # test-tiny's, not the paper's 60,000

    # a rerun with nothing changed: every stage skipped, the evaluation's numbers from its summary
    wait(stack, start(stack, "realsr-pipeline/pipeline", {"settings": pipeline}))
    again = json.loads((out / "summary.json").read_text())
    assert all(how.startswith("skipped") for how in again["stages"].values()), again["stages"]
    held = again["evaluations"]["held-out photos"]
    assert held["computed"] == 0 and held["cached"] > 0
    assert os.environ.get("PREFECT_API_URL") != stack.read()["url"]  # the stack did not leak into this process
    # `stack up` said each step as it completed; the next `up` reuses this port while it is free
    steps = [m.split("] ", 1)[1].split(":")[0] for m in stack.said if m.startswith("[")]
    assert steps == ["starting the Prefect server on 127.0.0.1", "server", "pools", "deployments", "workers", "workers"] and stack.said[-1].startswith(
        "point the CLI at it"
    )
    assert (stack.home / "port").read_text().strip() == stack.read()["ui"].rsplit(":", 1)[1]
