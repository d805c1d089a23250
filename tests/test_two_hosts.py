"""Two machines that share nothing but object storage, on one machine: a real Prefect server with
the process deployments, two worker "hosts" (each its own HOME, cache, temp and Prefect home: no
path in common but the code), and an S3 server (moto) on loopback. The pipeline runs with its
folder at s3://, its stages on the pools the hosts serve; everything is stopped by pid.

It must end as a single machine's run ends (same banks, same table); a rerun from a host that has
never seen the run must recompute and download nothing; a host killed in the middle of a stage
must leave the store consistent, and the next run on a fresh host must finish."""

import csv
import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from realsr.flows.cli import main
from realsr.flows.stack import Stack, _alive
from tests.conftest import small_photo, write_rgb
from tests.test_remote import BUCKET, s3  # noqa: F401  (the S3 server fixture)
from tests.test_server_mode import api, start, wait

pytestmark = pytest.mark.slow


def start_host(stack: Stack, name: str, pool: str, root: Path, weights: Path) -> int:
    """A process worker on `pool` as another machine would run it: its own HOME, cache, temp
    folder and Prefect home; the server's URL and the store's settings are all it shares."""
    for sub in ("home", "cache", "tmp", "prefect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    own = {"HOME": "home", "XDG_CACHE_HOME": "cache", "TMPDIR": "tmp", "PREFECT_HOME": "prefect"}
    # the released models as a host's image or cache would hold them
    return stack.start_worker(name, pool, {**{k: str(root / v) for k, v in own.items()}, "REALSR_WEIGHTS_DIR": str(weights)})


def host_processes(root: Path) -> list[int]:
    """Every process of a host: those whose HOME is the host's (its worker, and the flow runs it
    started, which Prefect puts in sessions of their own)."""
    home = f"HOME={root / 'home'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and home in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def kill_host(stack: Stack, pid: int | None, root: Path) -> None:
    """The machine goes away: every process of it at once (SIGKILL), the worker and its flow runs."""
    for p in [*([pid] if pid else []), *host_processes(root)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while ((pid and _alive(pid)) or host_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid:
        stack.forget(pid)


def mirrors(root: Path) -> set[str]:
    """The roles of the local mirrors a host made (storage/remote.py: cache/realsr/remote/<role>-<digest>)."""
    base = root / "cache" / "realsr" / "remote"
    return {p.name.rsplit("-", 1)[0] for p in base.iterdir()} if base.is_dir() else set()


def table(fs, folder: str) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO(fs.cat(f"{folder}/eval/results.csv").decode()))
    return {(r["model"], r["image"]): {k: v for k, v in r.items() if k not in ("seconds", "cached", "sr")} for r in rows}


def stage_runs(stack: Stack) -> list[dict]:
    flows = {f["id"]: f["name"] for f in api(stack, "/flows/filter", {})}
    return [{**r, "flow": flows[r["flow_id"]]} for r in api(stack, "/flow_runs/filter", {}) if flows[r["flow_id"]] != "realsr-pipeline"]


def test_the_pipeline_across_two_hosts_through_s3(s3, prefect_server, weights_ready, photo_dir, tmp_path, capsys):  # noqa: F811
    weights = Path(os.environ.get("REALSR_WEIGHTS_DIR") or weights_ready["realesrgan-x4plus"].parent)
    for p in sorted(photo_dir.iterdir()):
        s3.put_file(str(p), f"{BUCKET}/photos/{p.name}")
    src, out = f"s3://{BUCKET}/photos", f"s3://{BUCKET}/two"
    settings = {"source": src, "out": out, "preset": "test-tiny", "stages": "deployments"}
    stack = Stack(tmp_path / "stack")
    pids = []
    try:
        stack.up(cpu_workers=0, gpu_workers=0, say=lambda m: None)
        pids += [start_host(stack, "host-a", "cpu-pool", tmp_path / "host-a", weights), start_host(stack, "host-b", "gpu-pool", tmp_path / "host-b", weights)]
        wait(stack, start(stack, "realsr-pipeline/pipeline", {"settings": settings}), timeout=600)

        # each stage ran on its pool's host, which mirrored only what that stage needs
        pools = {r["flow"]: r["work_pool_name"] for r in stage_runs(stack)}
        assert pools == {"degrade-flow": "cpu-pool", "train-flow": "gpu-pool", "evaluate-flow": "gpu-pool"}
        # (host A's `sheets`: the pipeline's artifact shows the stages' contact sheets)
        assert mirrors(tmp_path / "host-a") == {"sources", "run", "sheets"}
        assert mirrors(tmp_path / "host-b") == {"run", "train", "eval-lr", "eval-hr", "evaluate", "model"}
        summary = json.loads(s3.cat(f"{BUCKET}/two/summary.json"))
        assert summary["stages"] == {"degrade": "ran", "train": "ran", "evaluate": "ran"} and summary["model"] == f"{out}/trained.pth"
        trained = json.loads(s3.cat(f"{BUCKET}/two/train/{Path(summary['train_dir']).name}/summary.json"))
        assert trained["latest"].startswith(f"{out}/train/")  # the folder names its files at the URL, not in host B's mirror

        # the same photos on one machine (this process, stages inline): the same banks and table
        assert main(["pipeline", "--source", src, "--out", f"s3://{BUCKET}/one", "--preset", "test-tiny"]) == 0
        for bank, arrays in (("kernels.zarr", ("x4/kernels",)), ("noise.zarr", ("noise", "patches", "source"))):
            two, one = zarr.open_group(f"{out}/run/{bank}", mode="r"), zarr.open_group(f"s3://{BUCKET}/one/run/{bank}", mode="r")
            for name in arrays:
                np.testing.assert_array_equal(two[name][:], one[name][:])
        assert table(s3, out) == table(s3, f"s3://{BUCKET}/one") and {m for m, _ in table(s3, out)} == {"bicubic", "realesrgan-x4plus", "trained"}

        # a rerun from a host that has never seen the run: every stage current, nothing mirrored
        kill_host(stack, pids[0], tmp_path / "host-a")
        pids.append(start_host(stack, "host-c", "cpu-pool", tmp_path / "host-c", weights))
        before = len(stage_runs(stack))
        wait(stack, start(stack, "realsr-pipeline/pipeline", {"settings": settings}), timeout=300)
        again = json.loads(s3.cat(f"{BUCKET}/two/summary.json"))
        assert all(how.startswith("skipped") for how in again["stages"].values()), again["stages"]
        assert len(stage_runs(stack)) == before and mirrors(tmp_path / "host-c") <= {"sheets"}  # no photo, run or model copied

        # a host killed in the middle of degrade (a new photo makes it run): the store keeps the
        # last complete run, and the next run, on a fresh host, finishes with the new photo
        s3.put_file(str(write_rgb(tmp_path / "new.png", small_photo(7))), f"{BUCKET}/photos/new.png")
        seen = {r["id"] for r in stage_runs(stack)}
        killed = start(stack, "realsr-pipeline/pipeline", {"settings": settings})
        deadline = time.monotonic() + 300
        while not any(r["flow"] == "degrade-flow" and r["state_type"] == "RUNNING" and r["id"] not in seen for r in stage_runs(stack)):
            assert time.monotonic() < deadline, "degrade never started"
            time.sleep(0.5)
        time.sleep(2)
        kill_host(stack, pids[-1], tmp_path / "host-c")
        assert json.loads(s3.cat(f"{BUCKET}/two/run/summary.json"))["sources"] == 4  # not half of the new run
        pids.append(start_host(stack, "host-d", "cpu-pool", tmp_path / "host-d", weights))
        wait(stack, start(stack, "realsr-pipeline/pipeline", {"settings": settings}), timeout=600)
        last = json.loads(s3.cat(f"{BUCKET}/two/summary.json"))
        assert last["stages"]["degrade"] == "ran" and last["degrade"]["processed"] == 5 and killed
    finally:
        stack.down(say=lambda m: None)
    assert not [p for p in pids if _alive(p)] and not stack._descendants(), "a host's worker or flow run outlived `stack down`"
