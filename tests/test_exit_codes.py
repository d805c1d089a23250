"""The exit-code rule (0 all done, 1 some items failed, 2 nothing done), a full disk said in one
line and not retried, and a damaged noise bank refused before train starts anything."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from realsr.flows.cli import main

pytestmark = pytest.mark.slow
FAST = ["--workers", "1", "--pair-hr-size", "32", "--noise-rule", "reference", "--noise-patch-size", "32", "--noise-stride", "32"]


def test_degrade_exits_1_when_a_photo_failed_and_train_refuses_a_damaged_noise_bank_at_once(photo_dir, tmp_path, prefect_server, capsys):
    (photo_dir / "garbage.png").write_bytes(b"not a png at all" * 20)
    run = tmp_path / "run"
    assert main(["degrade", "--source", str(photo_dir), "--out", str(run), *FAST]) == 1
    assert "1 of 5 photos failed (listed above): garbage.png" in capsys.readouterr().err

    chunk = next(p for p in (run / "noise.zarr" / "noise" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:10])
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # an embedded server would start after the preflight
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "realsr.flows", "train", str(run), "--out", str(tmp_path / "t"), "--preset", "test-tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.time() - t0
    lines = [line for line in p.stderr.splitlines() if not line.startswith("preset ")]  # the resolved settings come first
    assert p.returncode == 2 and lines == [lines[0]] and lines[0].startswith("error: noise bank:") and str(run / "noise.zarr") in lines[0], p.stderr
    assert "server" not in p.stderr + p.stdout and not (tmp_path / "t").exists()
    assert seconds < 30  # the preflight's second, not the API server's start (13 s and 100 lines before)


def test_a_full_disk_is_said_in_one_line_with_the_path_and_not_retried(photo_dir, tmp_path, prefect_server, monkeypatch, capsys):
    run = tmp_path / "run"
    real_write, tries = os.write, []

    def write(fd, data):  # the disk under run/clean_hr is full: write(2) fails as it does there
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target.startswith(str(run / "clean_hr")):
            tries.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setenv("REALSR_DASK_PROCESSES", "0")  # thread workers: the patched write is theirs too
    assert main(["degrade", "--source", str(photo_dir), "--out", str(run), "--kernels", "bicubic", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the flow run's log, then the command's one line
    assert err[-1].startswith(f"error: no space left on device writing {run / 'clean_hr'}") and err[-1].endswith("MB free on that filesystem)"), err[-5:]
    assert "Traceback" not in "\n".join(err[-3:])
    images = [Path(t).name.split(".tmp-")[0] for t in tries]
    assert 1 <= len(images) <= 4 and len(set(images)) == len(images), f"a full disk was retried: {images}"  # each image's write failed once
