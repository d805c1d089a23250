"""Sources and run folders at s3:// URLs, against a real S3-compatible server (moto's) started on
127.0.0.1 here and stopped by pid. The run works on local mirrors and uploads what changed."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from realsr.flows.cli import main
from realsr.flows.stack import free_port
from realsr.storage.remote import Mirror, RemoteError
from tests.conftest import stop_groups

BUCKET = "camera"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An S3 server on a free loopback port, a bucket, and the AWS settings pointing at it."""
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        for k, v in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        stop_groups([proc], grace=20)
        log.close()


def test_mirror_moves_only_what_changed(s3):
    s3.pipe({f"{BUCKET}/f/a.txt": b"a", f"{BUCKET}/f/sub/b.txt": b"b"})
    m = Mirror(f"s3://{BUCKET}/f", "run")
    assert m.pull() == 2 and (m.tree / "sub" / "b.txt").read_bytes() == b"b"
    assert m.pull() == 0  # in sync: nothing downloaded
    (m.tree / "a.txt").write_bytes(b"a2")
    (m.tree / "new.txt").write_bytes(b"n")
    (m.tree / "sub" / "b.txt").unlink()
    assert m.push() == 2  # a.txt and new.txt; b.txt deleted there
    assert s3.cat(f"{BUCKET}/f/a.txt") == b"a2" and not s3.exists(f"{BUCKET}/f/sub/b.txt")
    assert m.push() == 0
    s3.pipe(f"{BUCKET}/f/new.txt", b"changed there")
    s3.rm(f"{BUCKET}/f/a.txt")
    assert m.pull() == 1
    assert (m.tree / "new.txt").read_bytes() == b"changed there" and not (m.tree / "a.txt").exists()


def test_a_file_twice_in_one_upload_is_sent_once_and_a_filtered_pull_forgets_nothing(s3):
    """A training folder's best, latest and last generator are often one file: sent once, copied
    inside the store. A pull that leaves files out (training's, of a run folder) keeps them known."""
    m = Mirror(f"s3://{BUCKET}/t", "train")
    m.tree.mkdir(parents=True)
    big = np.random.default_rng(0).bytes(2 << 20)
    for name in ("net_g_60.pth", "net_g_latest.pth", "net_g_best.pth"):
        (m.tree / name).write_bytes(big)
    (m.tree / "other.pth").write_bytes(big[::-1])
    sent = []
    put = m.fs.put
    m.fs.put = lambda lpaths, rpaths, **kw: (sent.extend(rpaths), put(lpaths, rpaths, **kw))
    assert m.push() == 4 and len(sent) == 2  # one of the three copies, and the other file
    assert all(s3.cat(f"{BUCKET}/t/{n}") == big for n in ("net_g_60.pth", "net_g_latest.pth", "net_g_best.pth"))
    assert m.pull(keep=lambda rel: rel != "other.pth") == 0 and m.push() == 0  # nothing moves, nothing deleted
    assert s3.exists(f"{BUCKET}/t/other.pth") and (m.tree / "other.pth").exists()


def test_unreachable_store_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(RemoteError, match=r"s3://nowhere/photos: cannot list it"):
        Mirror("s3://nowhere/photos", "sources").pull()


@pytest.mark.slow
def test_degrade_reads_and_writes_s3(s3, prefect_server, photo_dir, tmp_path, capsys):
    import zarr

    for p in sorted(photo_dir.iterdir()):
        s3.put_file(str(p), f"{BUCKET}/photos/{p.name}")
    s3.pipe(f"{BUCKET}/photos/notes.txt", b"not a photo")
    src, out = f"s3://{BUCKET}/photos", f"s3://{BUCKET}/runs/cam1"

    assert main(["degrade", "--source", src, "--out", out, "--pair-hr-size", "64", "--workers", "2"]) == 0
    summary = json.loads(s3.cat(f"{BUCKET}/runs/cam1/summary.json"))
    assert summary["run_dir"] == out and summary["settings"]["source"] == src
    assert summary["processed"] == 4 and summary["pairs"]["pairs"] > 0
    assert "zarr.open_group('s3://camera/runs/cam1/kernels.zarr'" in capsys.readouterr().out
    # the banks are Zarr stores a user opens at the URL, as locally
    kernels = zarr.open_group(f"{out}/kernels.zarr", mode="r")
    local = Mirror(out, "run").tree
    ref = zarr.open_group(str(local / "kernels.zarr"), mode="r")
    assert sorted(kernels.array_keys()) == sorted(ref.array_keys())
    for name in ref.array_keys():
        np.testing.assert_array_equal(kernels[name][:], ref[name][:])
    assert len(s3.find(f"{BUCKET}/runs/cam1/pairs/hr")) == summary["pairs"]["pairs"]

    # a rerun sends no photo to the workers (the mirrors are current)
    assert main(["degrade", "--source", src, "--out", out, "--pair-hr-size", "64", "--workers", "2"]) == 0
    again = json.loads(s3.cat(f"{BUCKET}/runs/cam1/summary.json"))
    assert again["worked_on"] == {"clean-up": 0, "kernelgan": 0, "pairs": 0} and again["cached"] == 4

    # on another machine (an empty cache) it downloads the run and sends no photo to a worker:
    # records and banks name the photos by their URL, and a mirrored photo's size and time are
    # its object's, the same there
    os.environ["XDG_CACHE_HOME"] = str(tmp_path / "other-machine")
    assert main(["degrade", "--source", src, "--out", out, "--pair-hr-size", "64", "--workers", "2"]) == 0
    other = json.loads(s3.cat(f"{BUCKET}/runs/cam1/summary.json"))
    assert other["worked_on"] == {"clean-up": 0, "kernelgan": 0, "pairs": 0} and other["cached"] == 4
    assert other["pairs"] == summary["pairs"] and other["noise_bank"]["digest"] == summary["noise_bank"]["digest"]
    names = zarr.open_group(f"{out}/noise.zarr", mode="r")["source"][:]
    assert all(str(n).startswith(f"{src}/") for n in names)  # the photos' URLs, not a machine's mirror path

    # training reads the run at its URL (the mirror degrade left: nothing to download) and
    # writes its folder there; a rerun with --auto-resume finds the finished run in it
    train = ["train", out, "--out", f"s3://{BUCKET}/train/t1", "--preset", "test-tiny", "--runtime", "local"]
    assert main(train) == 0
    printed = capsys.readouterr()
    assert "run s3://camera/runs/cam1: 0 files downloaded" in printed.err
    assert s3.exists(f"{BUCKET}/train/t1/models/net_g_latest.pth") and s3.exists(f"{BUCKET}/train/t1/train.json")
    model = printed.out.split("--model ")[-1].strip()
    assert Path(model).is_file() and Path(model).read_bytes() == s3.cat(f"{BUCKET}/train/t1/models/net_g_latest.pth")
    assert main(train) == 2  # a finished run is not overwritten
    assert "holds a training run" in capsys.readouterr().err
    assert main([*train, "--auto-resume"]) == 0
    assert main(["train", f"s3://{BUCKET}/photos", "--out", f"s3://{BUCKET}/train/t2", "--preset", "test-tiny"]) == 2
    assert "s3://camera/photos: not a run folder (no run.json)" in capsys.readouterr().err

    # a run that fails after clean-up still uploads what it finished, for the rerun to reuse
    failing = [
        "degrade",
        "--source",
        src,
        "--out",
        f"s3://{BUCKET}/runs/failed",
        "--pair-hr-size",
        "64",
        "--workers",
        "2",
        "--noise-rule",
        "reference",
        "--noise-patch-size",
        "64",
        "--noise-stride",
        "64",
        "--noise-max-var",
        "0.000001",
        "--on-empty-noise",
        "stop",
    ]
    assert main(failing) == 2
    assert "stopped before the pairs" in capsys.readouterr().err
    assert len(s3.find(f"{BUCKET}/runs/failed/clean_hr")) == 4 and s3.find(f"{BUCKET}/runs/failed/.work")
    assert not s3.exists(f"{BUCKET}/runs/failed/pairs/manifest.jsonl")

    # a prefix that holds something else is refused before anything starts
    s3.pipe(f"{BUCKET}/other/data.csv", b"x")
    capsys.readouterr()
    assert main(["degrade", "--source", src, "--out", f"s3://{BUCKET}/other"]) == 2
    assert "s3://camera/other holds other files and is not a run folder" in capsys.readouterr().err
    assert main(["degrade", "--source", f"s3://{BUCKET}/empty", "--out", f"s3://{BUCKET}/runs/x"]) == 2
    assert "no images found in s3://camera/empty" in capsys.readouterr().err
    assert s3.cat(f"{BUCKET}/other/data.csv") == b"x" and not s3.exists(f"{BUCKET}/runs/x")


def test_pipeline_sees_a_changed_photo_at_a_url(s3):
    from realsr.steps.pipeline import degrade_key

    s3.pipe({f"{BUCKET}/p/a.jpg": b"1", f"{BUCKET}/p/b.png": b"2", f"{BUCKET}/p/readme.txt": b"3"})
    key = degrade_key({"scale": 4}, f"s3://{BUCKET}/p")
    s3.pipe(f"{BUCKET}/p/readme.txt", b"not a photo: no change")
    assert degrade_key({"scale": 4}, f"s3://{BUCKET}/p") == key
    s3.pipe(f"{BUCKET}/p/b.png", b"22")
    assert degrade_key({"scale": 4}, f"s3://{BUCKET}/p") != key


@pytest.mark.slow
def test_the_pipeline_takes_its_photos_from_a_url(s3, prefect_server, photo_dir, tmp_path, capsys):
    for p in sorted(photo_dir.iterdir()):
        s3.put_file(str(p), f"{BUCKET}/photos/{p.name}")
    run = ["pipeline", "--source", f"s3://{BUCKET}/photos", "--out", str(tmp_path / "pipe"), "--preset", "test-tiny"]
    assert main(run) == 0
    summary = json.loads((tmp_path / "pipe" / "summary.json").read_text())
    assert summary["degrade"]["processed"] == 4 and (tmp_path / "pipe" / "trained.pth").is_file()
    capsys.readouterr()
    assert main(run) == 0  # nothing changed at the URL: every stage is current
    out = capsys.readouterr().out
    assert "degrade: skipped (current)" in out and "train: skipped (current)" in out
    s3.pipe(f"{BUCKET}/photos/extra.png", (photo_dir / sorted(p.name for p in photo_dir.iterdir())[0]).read_bytes())
    assert main(run) == 0  # a new photo there: degrade runs again
    assert "degrade: ran" in capsys.readouterr().out


@pytest.mark.slow
def test_a_pipeline_folder_at_a_url(s3, prefect_server, photo_dir, capsys):
    for p in sorted(photo_dir.iterdir()):
        s3.put_file(str(p), f"{BUCKET}/photos/{p.name}")
    out = f"s3://{BUCKET}/pipelines/cam1"
    run = ["pipeline", "--source", f"s3://{BUCKET}/photos", "--out", out, "--preset", "test-tiny"]
    assert main(run) == 0
    printed = capsys.readouterr().out
    summary = json.loads(s3.cat(f"{BUCKET}/pipelines/cam1/summary.json"))
    assert summary["out"] == out and summary["model"] == f"{out}/trained.pth" and summary["run_dir"] == f"{out}/run"
    assert "| bicubic |" in printed  # the table, read back from the URL
    local_model = printed.split("--model ")[-1].strip()
    assert Path(local_model).read_bytes() == s3.cat(f"{BUCKET}/pipelines/cam1/trained.pth")
    assert main(run) == 0 and "train: skipped (current)" in capsys.readouterr().out
    s3.pipe(f"{BUCKET}/other/data.csv", b"x")
    assert main([*run[:-4], "--out", f"s3://{BUCKET}/other", "--preset", "test-tiny"]) == 2  # not a pipeline folder
    assert "s3://camera/other holds other files and is not a pipeline folder" in capsys.readouterr().err
    from pydantic import ValidationError

    from realsr.flows.pipeline_settings import PipelineSettings

    assert PipelineSettings(source=f"s3://{BUCKET}/photos", out=out, preset="test-tiny", stages="deployments").stages == "deployments"
    with pytest.raises(ValidationError, match="put the photos at a URL too"):
        PipelineSettings(source=photo_dir, out=out, preset="test-tiny", stages="deployments")


@pytest.mark.slow
def test_dask_workers_that_share_no_disk_with_the_flow(s3, prefect_server, photo_dir, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes, each with its own HOME, cache,
    temp and working folder: with the run at s3:// each task fetches its photos (and the clean HR
    images and banks) from the URLs and uploads what it made there, never to the flow's mirror."""
    import zarr

    from tests.conftest import dask_processes

    for p in sorted(photo_dir.iterdir()):
        s3.put_file(str(p), f"{BUCKET}/photos/{p.name}")
    src, out = f"s3://{BUCKET}/photos", f"s3://{BUCKET}/runs/apart"
    args = ["--source", src, "--pair-hr-size", "64", "--kernels", "kernelgan", "--kernelgan-iterations", "3", "--kernelgan-seeds", "1"]
    homes = [tmp_path / "worker-1", tmp_path / "worker-2"]
    with dask_processes(tmp_path / "dask.log", [[], []], 2, homes) as address:
        assert main(["degrade", *args, "--out", out, "--dask-address", address]) == 0
        summary = json.loads(s3.cat(f"{BUCKET}/runs/apart/summary.json"))
        assert summary["processed"] == 4 and summary["worked_on"] == {"clean-up": 4, "kernelgan": 4, "pairs": 4}
        pairs = s3.find(f"{BUCKET}/runs/apart/pairs/hr")
        assert len(pairs) == summary["pairs"]["pairs"] > 0
        assert not list((Mirror(out, "run").tree / "pairs").rglob("*.png"))  # the workers wrote them at the URL only
        assert any((h / "cache" / "realsr" / "remote" / "banks").is_dir() for h in homes)  # fetched there, per worker machine
        assert not [p for h in homes for p in (h / "cache" / "realsr" / "remote" / "tasks").glob("*")]  # scratch folders removed
        # a rerun sends nothing to the workers
        assert main(["degrade", *args, "--out", out, "--dask-address", address]) == 0
        assert json.loads(s3.cat(f"{BUCKET}/runs/apart/summary.json"))["worked_on"] == {"clean-up": 0, "kernelgan": 0, "pairs": 0}
    # the same banks and pairs as workers on the flow's own disk (the local cluster)
    assert main(["degrade", *args, "--out", f"s3://{BUCKET}/runs/together", "--workers", "2"]) == 0
    for bank, arrays in (("kernels.zarr", ("x4/kernels", "x4/source")), ("noise.zarr", ("noise", "source"))):
        a, b = zarr.open_group(f"{out}/{bank}", mode="r"), zarr.open_group(f"s3://{BUCKET}/runs/together/{bank}", mode="r")
        for name in arrays:
            np.testing.assert_array_equal(a[name][:], b[name][:])
    assert s3.cat(f"{BUCKET}/runs/apart/pairs/manifest.jsonl") == s3.cat(f"{BUCKET}/runs/together/pairs/manifest.jsonl")


def test_missing_credentials_are_one_line(s3, photo_dir, monkeypatch, capsys):
    """No AWS credentials anywhere: refused before any work, in one line naming the URL and the cause."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    assert main(["degrade", "--source", f"s3://{BUCKET}/photos", "--out", f"s3://{BUCKET}/runs/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: s3://camera/") and "credentials" in err[0].lower(), err


def test_a_bucket_gone_mid_run_is_one_line_and_nothing_is_trusted(s3):
    """The bucket disappears between a run's download and its upload: the upload fails in one line
    naming the URL, and the mirror's record claims nothing as uploaded, so the next run sends it again."""
    s3.pipe({f"{BUCKET}/run/a.txt": b"a", f"{BUCKET}/run/.work/r.json": b"{}"})
    m = Mirror(f"s3://{BUCKET}/run", "run")
    assert m.pull() == 2
    (m.tree / "new.txt").write_bytes(b"n")
    (m.tree / ".work" / "r.json").write_bytes(b'{"done": 1}')
    s3.rm(BUCKET, recursive=True)
    with pytest.raises(RemoteError, match=r"^s3://camera/run: uploading \d files failed \(.*\)$"):
        m.push(last=(".work/",))
    s3.mkdir(BUCKET)  # the store is back: the next run uploads what was never confirmed
    assert m.push(last=(".work/",)) == 2 and s3.cat(f"{BUCKET}/run/.work/r.json") == b'{"done": 1}'
