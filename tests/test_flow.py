"""degrade-flow end to end: a real Prefect API server, a real process-based Dask cluster, real stores."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from realsr.flows.cli import main
from realsr.flows.cli_degrade import run_degrade
from realsr.flows.settings import DegradeSettings
from realsr.storage.banks import open_kernel_bank, open_noise_bank
from tests.conftest import small_photo, write_rgb

pytestmark = pytest.mark.slow
SMALL = dict(noise_rule="reference", noise_patch_size=32, noise_stride=32, pair_hr_size=32, scale=4)


def _bad_inputs(src: Path) -> None:
    (src / "garbage.png").write_bytes(b"not a png at all" * 20)
    (src / "empty.jpg").write_bytes(b"")
    write_rgb(src / "tiny.png", small_photo(9, 6, 6))
    (src / "notes.txt").write_text("not an image")
    import cv2

    cv2.imwrite(str(src / "gray.png"), small_photo(5)[..., 0])
    (src / "zz_copy.png").write_bytes((src / "photo_0.png").read_bytes())


def test_degrade_flow_end_to_end_with_bad_inputs_and_rerun(photo_dir, tmp_path, prefect_server):
    _bad_inputs(photo_dir)
    settings = DegradeSettings(source=photo_dir, out=tmp_path / "run", **SMALL)
    summary = run_degrade(settings, workers=2)

    skipped = {Path(x["source"]).name: x["reason"] for x in summary["skipped"]}
    assert set(skipped) == {"garbage.png", "empty.jpg", "tiny.png", "zz_copy.png"}
    assert skipped["zz_copy.png"].startswith("same content as") and skipped["zz_copy.png"].endswith("photo_0.png")
    assert "empty file" in skipped["empty.jpg"] and "too small" in skipped["tiny.png"]
    assert summary["processed"] == 5 and [Path(x["file"]).name for x in summary["ignored_files"]] == ["notes.txt"]
    assert any("gray" in n for c in summary["converted"] for n in c["notes"])
    run = tmp_path / "run"
    bank = open_noise_bank(run / "noise.zarr")
    assert bank.count == summary["noise_bank"]["count"] == 5 * 24
    _, kernels = open_kernel_bank(run / "kernels.zarr")
    assert kernels[4].kernels.shape == (1, 25, 25) and kernels[2].kernels.shape == (1, 13, 13)
    assert summary["pairs"]["pairs"] == 5 * 12 == len((run / "pairs" / "manifest.jsonl").read_text().splitlines())
    assert json.loads((run / "summary.json").read_text())["processed"] == 5

    again = run_degrade(settings, workers=2)
    assert again["cached"] == 5 and again["noise_bank"]["digest"] == summary["noise_bank"]["digest"]
    assert again["kernel_bank"]["digest"] == summary["kernel_bank"]["digest"]
    # unchanged photos are decided in the flow (no task); only the files that failed go to workers again
    assert again["worked_on"] == {"clean-up": 4, "kernelgan": 0, "pairs": 0}
    assert again["pairs"]["pairs"] == summary["pairs"]["pairs"]

    write_rgb(photo_dir / "photo_new.png", small_photo(11))
    photo = photo_dir / "photo_1.png"
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))  # touched, same content
    more = run_degrade(settings, workers=2)
    assert more["processed"] == 6 and more["cached"] == 5  # the touched photo: sent, found done by content
    assert more["worked_on"]["clean-up"] == 4 + 2
    assert more["noise_bank"]["count"] == 6 * 24


def test_missing_or_empty_source_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["degrade", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["degrade", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "run2")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["degrade", "--source", str(tmp_path), "--out", str(tmp_path / "r"), "--scale", "3"]) == 2
    assert "scale" in capsys.readouterr().err


def _cli(args, env=None, **kw):
    env = {**(env or os.environ), "REALSR_DASK_WORKERS": "2"}
    return subprocess.Popen([sys.executable, "-m", "realsr.flows", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (every process a run starts inherits it)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and mark.encode() in (d / "environ").read_bytes() and (d / "stat").read_text().split(")")[-1].split()[0] != "Z":
                found.append(int(d.name))
        except OSError:
            continue
    return found


def process_tree(root: int) -> set[int]:
    """`root` and every process below it, zombies included (a zombie holds a pid until reaped)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
        except OSError:
            continue
    tree, todo = set(), [root]
    while todo:
        tree.add(pid := todo.pop())
        todo += children.get(pid, [])
    return tree


def left_behind(pids: set[int], mark: str) -> list[int]:
    """What remains of a killed run: any of its processes seen before the kill (a zombie counts)
    and any live process carrying its mark (one started after the snapshot)."""
    return sorted({p for p in pids if Path(f"/proc/{p}").exists()} | set(processes_marked(mark)))


def test_a_killed_run_leaves_no_process_and_resumes_to_the_same_result(tmp_path, prefect_server):
    src = tmp_path / "photos"
    for i in range(16):
        write_rgb(src / f"p{i:02d}.png", small_photo(i, 384, 512))
    flags = ["--noise-rule", "reference", "--noise-patch-size", "32", "--noise-stride", "32", "--pair-hr-size", "32", "--images-per-task", "1"]
    killed = tmp_path / "killed"
    mark = f"REALSR_TEST_RUN={uuid.uuid4().hex}"
    own = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own embedded API server, as a user's run
    proc = _cli(["degrade", "--source", str(src), "--out", str(killed), *flags], env={**own, mark.split("=")[0]: mark.split("=")[1]})
    records = killed / ".work" / "preprocess"
    deadline = time.time() + 180
    while time.time() < deadline and (not records.exists() or len(list(records.glob("*.json"))) < 3):
        time.sleep(0.05)
    assert len(processes_marked(mark)) >= 3, "the run, its API server and its Dask workers"
    tree = process_tree(proc.pid)
    proc.kill()  # SIGKILL of the command alone: what it started must go with it
    proc.wait()
    assert 3 <= len(list(records.glob("*.json"))) < 16, "the kill should land mid-run"
    deadline = time.time() + 15
    while left_behind(tree, mark) and time.time() < deadline:
        time.sleep(0.2)
    assert left_behind(tree, mark) == []

    for out in (killed, tmp_path / "fresh"):
        p = _cli(["degrade", "--source", str(src), "--out", str(out), *flags])
        log = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, log
    a, b = (json.loads((d / "summary.json").read_text()) for d in (killed, tmp_path / "fresh"))
    assert a["cached"] >= 3 and b["cached"] == 0
    assert a["noise_bank"]["digest"] == b["noise_bank"]["digest"]
    assert (killed / "pairs" / "manifest.jsonl").read_bytes() == (tmp_path / "fresh" / "pairs" / "manifest.jsonl").read_bytes()
    assert open_noise_bank(killed / "noise.zarr").count == 16 * 12 * 16 // 2


def test_kernelgan_fills_the_kernel_bank(photo_dir, tmp_path, prefect_server, capsys):
    settings = DegradeSettings(source=photo_dir, out=tmp_path / "run", kernels="kernelgan", kernelgan_iterations=200, kernelgan_seeds=1, **SMALL)
    summary = run_degrade(settings, workers=2)
    attrs, kernels = open_kernel_bank(tmp_path / "run" / "kernels.zarr")
    assert attrs["kernel_source"] == "kernelgan" and attrs["kernelgan"]["iterations"] == 200
    assert kernels[2].kernels.shape == (4, 13, 13) and kernels[4].kernels.shape == (4, 25, 25)
    assert sorted(Path(s).name for s in kernels[2].source) == [f"photo_{i}.png" for i in range(4)]
    assert set(kernels[4].method) == {"kernelgan+analytic-x4"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "pairs" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(r["kernel_id"].startswith("kernelgan+analytic-x4:") for r in rows)
    again = run_degrade(settings, workers=2)
    assert again["kernel_bank"]["digest"] == summary["kernel_bank"]["digest"]  # cached, same kernels
    assert again["worked_on"] == {"clean-up": 0, "kernelgan": 0, "pairs": 0}


def test_inspect_writes_contact_sheets(photo_dir, tmp_path, prefect_server, capsys):
    import cv2

    run_degrade(DegradeSettings(source=photo_dir, out=tmp_path / "run", pair_hr_size=32, noise_tile=16), workers=1)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "run" / "noise.zarr"), "--sheet", str(tmp_path / "noise.png")]) == 0
    assert main(["inspect", str(tmp_path / "run" / "kernels.zarr")]) == 0
    out = capsys.readouterr().out
    assert "patches of 16px from 4/4 sources" in out and "rule adaptive" in out and "x4: 1 kernels 25x25, 1 valid" in out
    assert cv2.imread(str(tmp_path / "noise.png")) is not None
    plot = cv2.imread(str(tmp_path / "noise_level.png"))  # the noise level against brightness, beside the sheet
    assert plot is not None and (plot[..., 2] > 180).any() and (plot[..., 0] < 60).any()  # red median line drawn
    assert cv2.imread(str(tmp_path / "run" / "kernels_sheet.png")) is not None
    assert main(["inspect", str(photo_dir)]) == 2


def test_an_empty_noise_bank_warns_loudly_or_stops(tmp_path, prefect_server, capsys):
    from tests.conftest import textured

    for i in range(2):
        write_rgb(tmp_path / "busy" / f"b{i}.png", textured(96, 128, i))
    flags = ["degrade", "--source", str(tmp_path / "busy"), "--pair-hr-size", "32", "--workers", "1"]
    assert main([*flags, "--out", str(tmp_path / "warn")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: noise bank is EMPTY: every pair will be noise-free" in err and "flat areas" in err
    summary = json.loads((tmp_path / "warn" / "summary.json").read_text())
    assert summary["noise_bank"]["count"] == 0 and "EMPTY" in summary["noise_bank"]["warning"]
    assert main([*flags, "--out", str(tmp_path / "stop"), "--on-empty-noise", "stop"]) == 2
    err = capsys.readouterr().err
    assert "stopped before the pairs (on_empty_noise=stop)" in err
    assert not (tmp_path / "stop" / "pairs" / "manifest.jsonl").exists()


def test_bad_settings_are_one_line_before_any_server_starts(tmp_path, photo_dir):
    """Each refusal comes in about a second, with no API server or cluster started (no Prefect
    tracebacks): the process would otherwise spend 10-50 s starting one first."""
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("a user's file")
    (tmp_path / "empty").mkdir()
    cases = {
        "does not exist": ["degrade", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "r1")],
        "no images found": ["degrade", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")],
        "is not a run folder": ["degrade", "--source", str(photo_dir), "--out", str(tmp_path / "foreign")],
        "not a degrade-flow run folder": ["train", str(tmp_path / "foreign"), "--out", str(tmp_path / "t"), "--preset", "test-tiny"],
        "no such checkpoint": ["evaluate", "--lr", str(photo_dir), "--model", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "e")],
    }
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    for expected, args in cases.items():
        p = subprocess.run([sys.executable, "-m", "realsr.flows", *args], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and expected in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr and "Starting temporary server" not in p.stderr + p.stdout, p.stderr
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["mine.txt"]


def test_a_local_cluster_listens_on_loopback_only():
    from realsr.flows.runtime import task_runner

    runner = task_runner(workers=1)
    assert runner.cluster_kwargs["host"] == "127.0.0.1" and runner.cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")
    from distributed import LocalCluster

    with LocalCluster(**runner.cluster_kwargs) as cluster:
        ports = {cluster.scheduler.http_server.port, int(cluster.scheduler.address.rsplit(":", 1)[1])}
        ports |= {int(w.rsplit(":", 1)[1]) for w in cluster.scheduler.workers}
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"]
        for port in ports:  # the dashboard, the scheduler and the worker
            assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening, port
