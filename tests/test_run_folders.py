"""Run folders: what a run may touch (never the photos), one writer at a time, stores a rerun repairs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from realsr.flows.cli import main
from realsr.storage.banks import DamagedStoreError, content_digest, open_noise_bank, write_noise_bank
from realsr.storage.run_dir import RunDirError, claim_run_dir
from tests.conftest import small_photo, stop_groups, write_rgb

FAST = ["--pair-hr-size", "32", "--noise-tile", "16", "--workers", "1"]


def test_a_source_and_a_run_folder_that_overlap_are_refused_either_way_and_through_links(tmp_path, capsys):
    run = tmp_path / "run"
    photo = write_rgb(run / "clean_hr" / "mine.png", small_photo(0, 64, 64))
    (run / "run.json").write_text(json.dumps({"tool": "realsr-pipeline"}))  # an earlier run's folder: accepted as an --out
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "photos_link").symlink_to(run / "clean_hr")
    cases = [
        (run / "clean_hr", run, "source folder"),  # the photos inside the run: the case that lost them
        (run / "clean_hr", tmp_path / "link", "source folder"),  # the run named through a link
        (tmp_path / "photos_link", run, "source folder"),  # the photos named through a link
        (run / "clean_hr", run / "clean_hr", "run folder"),
        (run, run / "clean_hr" / "out", "run folder"),  # the other way round, as before
    ]
    for source, out, named in cases:
        assert main(["degrade", "--source", str(source), "--out", str(out), *FAST]) == 2, (source, out)
        err = capsys.readouterr().err
        assert f"the {named}" in err and "must not be inside" in err, err
    assert photo.read_bytes() and sorted(p.name for p in (run / "clean_hr").iterdir()) == ["mine.png"]
    with pytest.raises(RunDirError, match="must not be inside the run folder"):  # where the flow acts (deployments skip the CLI)
        claim_run_dir(tmp_path / "link", {}, source=run / "clean_hr")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _intact(store: Path) -> bool:
    """Every array matches the checksum written with it, read back from disk now (not this
    process's memory of stores it verified)."""
    g = zarr.open_group(str(store), mode="r")
    try:
        return content_digest(g, store) == g.attrs["content_sha256"]
    except DamagedStoreError:
        return False


@pytest.mark.slow
def test_a_rerun_rebuilds_a_damaged_bank_to_the_same_bytes_and_prunes_only_what_it_wrote(tmp_path, prefect_server, capsys):
    src, run = tmp_path / "photos", tmp_path / "run"
    for i in range(2):
        write_rgb(src / f"p{i}.png", small_photo(i, 96, 128))
    args = ["degrade", "--source", str(src), "--out", str(run), *FAST]
    assert main(args) == 0
    first = json.loads((run / "summary.json").read_text())
    noise_meta, kernel_meta = (run / "noise.zarr" / "zarr.json").read_bytes(), (run / "kernels.zarr" / "zarr.json").read_bytes()
    assert open_noise_bank(run / "noise.zarr").count > 0

    next(p for p in (run / "noise.zarr" / "noise" / "c").rglob("*") if p.is_file()).unlink()  # a lost chunk file
    next(p for p in (run / "kernels.zarr" / "x4" / "kernels" / "c").rglob("*") if p.is_file()).unlink()
    assert not _intact(run / "noise.zarr") and not _intact(run / "kernels.zarr")
    assert main(args) == 0, capsys.readouterr().err  # "rerun degrade to rebuild it"
    assert _intact(run / "noise.zarr") and _intact(run / "kernels.zarr")
    assert open_noise_bank(run / "noise.zarr").digest == first["noise_bank"]["digest"]
    # the rebuilt stores are byte for byte the first ones: their metadata too, whose records
    # now come from JSON (keys sorted) where the first run's were made fresh
    assert (run / "noise.zarr" / "zarr.json").read_bytes() == noise_meta
    assert (run / "kernels.zarr" / "zarr.json").read_bytes() == kernel_meta

    before = _tree(run)
    images = [json.loads(x) for x in (run / "pairs" / "images.jsonl").read_text().splitlines()]
    name = next(r["name"] for r in images if r["source"].endswith("p1.png"))
    mine = {f"clean_hr/{name[:-9]}-0000beef.png", "clean_hr/holiday.png", "pairs/hr/holiday_s0000.png", "pairs/lr/holiday_s0000.png"}
    for rel in mine:  # the user's own files among the run's, named as the run names its own
        (run / rel).write_bytes(b"the user's file " + rel.encode())
    (src / "p1.png").unlink()
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    after = _tree(run)
    assert {rel: after.get(rel) for rel in mine} == {rel: b"the user's file " + rel.encode() for rel in mine}
    gone = set(before) - set(after)  # what the run wrote for p1, as its records list it
    assert f"clean_hr/{name}.png" in gone and any(rel.startswith(f"pairs/hr/{name}_s") for rel in gone), sorted(gone)
    assert all(rel.startswith(".work/") or name in rel for rel in gone), sorted(gone)


def test_bank_metadata_is_the_same_bytes_whatever_order_its_attributes_came_in(tmp_path):
    patches = np.zeros((1, 8, 8, 3), np.uint8)
    table = {c: np.zeros(s, np.float32) for c, s in (("gray_mean", (1,)), ("gray_var", (1,)), ("channel_mean", (1, 3)), ("channel_var", (1, 3)))}
    level = {"a": 1.0, "b": [2.0], "c": {"y": 1, "x": 2}}
    fresh = {"patch_size": 8, "sources": [{"source": "p.png", "noise_level": level}]}
    read_back = {"sources": [{"noise_level": dict(reversed(list(level.items()))), "source": "p.png"}], "patch_size": 8}
    write_noise_bank(tmp_path / "a.zarr", patches, table, fresh)
    write_noise_bank(tmp_path / "b.zarr", patches, table, read_back)
    assert (tmp_path / "a.zarr" / "zarr.json").read_bytes() == (tmp_path / "b.zarr" / "zarr.json").read_bytes()


def _degrade(src: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "realsr.flows", "degrade", "--source", str(src), "--out", str(out), *FAST],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_one_writer_per_run_folder_and_a_killed_holder_leaves_no_lock(tmp_path, prefect_server):
    """Two real `realsr degrade` into one folder: the second is refused at once, naming the first;
    after kill -9 of the first, a rerun goes ahead."""
    slow, quick, run = tmp_path / "slow", tmp_path / "quick", tmp_path / "run"
    for i in range(24):  # work enough that it still runs when the second run is refused
        write_rgb(slow / f"s{i}.png", small_photo(i, 384, 512))
    write_rgb(quick / "q.png", small_photo(9, 96, 128))
    env = dict(os.environ)
    procs = []
    try:
        first = _degrade(slow, run, env)
        procs.append(first)
        lock = run / ".lock"
        deadline = time.time() + 60
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and "degrade" in holder["command"]

        t0 = time.time()
        second = subprocess.run(
            [sys.executable, "-m", "realsr.flows", "degrade", "--source", str(quick), "--out", str(run), *FAST],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert f"pid {first.pid} on host " in last and str(run) in last, second.stderr
        assert "Traceback" not in second.stderr and time.time() - t0 < 30  # refused before any server or cluster starts
        assert first.poll() is None, "the first run should still be running"

        os.kill(first.pid, signal.SIGKILL)  # the holder alone: the kernel drops its lock
        first.wait()
        again = subprocess.run(
            [sys.executable, "-m", "realsr.flows", "degrade", "--source", str(quick), "--out", str(run), *FAST],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        summary = json.loads((run / "summary.json").read_text())
        assert summary["processed"] == 1 and summary["sources"] == 1
        assert not lock.exists()  # released on exit
    finally:
        stop_groups(procs, grace=10)


HOLDER = """
import json, sys, time
from realsr.steps.mirrors import held
from contextlib import ExitStack
with ExitStack() as stack:
    for source, out, roles in json.loads(sys.argv[1]):
        stack.enter_context(held(source, out, *roles))
    print("held", flush=True)
    time.sleep(300)
"""


def test_training_and_pipeline_folders_and_url_mirrors_have_one_writer_too(tmp_path, monkeypatch):
    from realsr.steps.mirrors import held
    from realsr.storage.lock import FolderBusy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the mirrors' home, for both processes
    url, train, pipe = "s3://bucket/runs/cam1", tmp_path / "train", tmp_path / "pipe"
    plan = [[url, str(train), ["run", "train"]], [None, str(pipe), ["sources", "pipeline"]]]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(plan)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        for source, out, roles in [(url, tmp_path / "other", ("run", "train")), (None, train, ("run", "train")), (None, pipe, ("sources", "pipeline"))]:
            with pytest.raises(FolderBusy, match=rf"in use by another run: pid {proc.pid} on host "):
                with held(source, out, *roles):
                    pass
        with held(None, pipe / "run"), held(None, pipe / "run"):  # a pipeline's stage locks its own sub-folder; reentrant in one process
            assert (pipe / "run" / ".lock").exists()
        assert not (pipe / "run").exists()  # the lock made the folder and nothing else was written: both gone
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with held(url, train, "run", "train"), held(None, pipe, out_role="pipeline"):
            pass
    finally:
        stop_groups([proc], grace=5)
