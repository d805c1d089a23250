"""Ctrl-C and SIGTERM stop a run: every process of it gone in seconds, one line, exit 130/143,
and the same command continues where it stopped (flows/stopping.py). Real commands, real
Prefect servers, real Dask and DataLoader worker processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import small_photo, stop_groups, write_rgb
from tests.test_flow import process_tree

pytestmark = pytest.mark.slow
LINE = "stopped; rerun the same command to continue"
# KernelGAN (a few seconds a photo here) keeps a worker busy long after clean-up has written its records
DEGRADE = [
    "--kernels",
    "kernelgan",
    "--kernelgan-iterations",
    "150",
    "--kernelgan-seeds",
    "1",
    "--workers",
    "1",
    "--pair-hr-size",
    "32",
    "--noise-rule",
    "reference",
    "--noise-patch-size",
    "32",
    "--noise-stride",
    "32",
]


def _photos(root: Path) -> Path:
    for i in range(2):
        write_rgb(root / "photos" / f"p{i}.png", small_photo(i))
    return root / "photos"


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "realsr.flows", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_when(proc: subprocess.Popen, ready, sig: int, to_group: bool) -> tuple[int, str, float, set[int]]:
    """Wait for `ready()`, send `sig`; the exit code, the output, the seconds until every process
    seen below the command just before the signal was gone (zombies count), and those pids."""
    deadline = time.time() + 180
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before it could be stopped"
    tree = process_tree(proc.pid)
    t0 = time.time()
    os.killpg(proc.pid, sig) if to_group else os.kill(proc.pid, sig)
    out = proc.communicate(timeout=60)[0].decode()
    while any(Path(f"/proc/{p}").exists() for p in tree) and time.time() - t0 < 30:
        time.sleep(0.05)
    return proc.returncode, out, time.time() - t0, tree


def _own_server_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # an embedded API server, as a user's run


@pytest.mark.parametrize(
    "sig, to_group, own_server",
    [(signal.SIGINT, True, True), (signal.SIGINT, False, False), (signal.SIGTERM, False, False)],
    ids=["ctrl-c-to-the-group", "sigint-to-the-command", "sigterm-to-the-command"],
)
def test_a_signal_stops_degrade_and_every_process_of_it_and_the_rerun_continues(tmp_path, prefect_server, sig, to_group, own_server):
    src, run = _photos(tmp_path), tmp_path / "run"
    env = _own_server_env() if own_server else {**os.environ, "PREFECT_API_URL": prefect_server}
    args = ["degrade", "--source", str(src), "--out", str(run), *DEGRADE]
    records = run / ".work" / "preprocess"
    proc = _start(args, env)
    try:
        code, out, seconds, tree = _stop_when(proc, lambda: len(list(records.glob("*.json"))) == 2, sig, to_group)
    finally:
        stop_groups([proc])
    assert code == (130 if sig == signal.SIGINT else 143), out
    assert out.rstrip().splitlines()[-1] == LINE and out.count(LINE) == 1, out
    assert "Traceback" not in out, out
    assert len(tree) >= 3, "the command, its Dask worker and more were running"
    assert seconds < 15, f"processes of the run were left for {seconds:.1f} s: {[p for p in tree if Path(f'/proc/{p}').exists()]}"
    assert not (run / "summary.json").exists(), "the signal should land mid-run"
    if not own_server:
        return
    again = _start(args, {**os.environ, "PREFECT_API_URL": prefect_server})  # the same command continues: clean-up is not redone
    try:
        log = again.communicate(timeout=300)[0].decode()
    finally:
        stop_groups([again])
    assert again.returncode == 0, log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cached"] == 2 and summary["worked_on"]["kernelgan"] == 2 and summary["pairs"]["pairs"] > 0


def test_sigterm_stops_train_with_its_data_loader_workers(tmp_path, prefect_server):
    from realsr.flows.cli import main

    src = _photos(tmp_path)
    assert main(["degrade", "--source", str(src), "--out", str(tmp_path / "run"), "--workers", "1", "--pair-hr-size", "32"]) == 0
    out = tmp_path / "train"
    args = [
        "train",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--preset",
        "test-tiny",
        "--iterations",
        "100000",
        "--save-every",
        "5",
        "--val-every",
        "100000",
        "--perceptual-weight",
        "0",
        "--workers",
        "2",
    ]
    proc = _start(args, {**os.environ, "PREFECT_API_URL": prefect_server})
    states = out / "training_states"
    try:
        code, log, seconds, tree = _stop_when(proc, lambda: states.is_dir() and any(states.glob("*.state")), signal.SIGTERM, False)
    finally:
        stop_groups([proc])
    assert code == 143 and log.rstrip().splitlines()[-1] == LINE, log
    assert len(tree) >= 3, "the command and its two data-loader workers"
    assert seconds < 15, f"processes of the run were left for {seconds:.1f} s: {[p for p in tree if Path(f'/proc/{p}').exists()]}"
