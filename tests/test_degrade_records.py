"""degrade-flow's records (storage/degrade_records.py): a JSON round trip per record, and the
shapes written before the records had a version migrated on read, so an old run folder reruns
without redoing any work."""

import json

import cv2

from realsr.flows.settings import DegradeSettings
from realsr.steps import degrade as stages
from realsr.steps import degrade_kernels as kernel_steps
from realsr.storage.degrade_records import ImageRow, PairsRecord, PreprocessRecord, read_image_index
from realsr.storage.run_dir import RunDir, claim_run_dir
from tests.conftest import small_photo, write_rgb


def _run(src, out):
    s = DegradeSettings(source=src, out=out, noise_rule="reference", noise_patch_size=32, noise_stride=32, pair_hr_size=32, scale=4).spec()
    run = RunDir(claim_run_dir(out, {}))
    records = [stages.prepare_source(p, run, s) for p in sorted(src.iterdir())]
    kinfo = kernel_steps.build_kernel_bank(run, s)
    ninfo = stages.build_noise_bank(records, run, s)
    pairs = [stages.make_pairs(r, run, s, kinfo["digest"], ninfo["digest"]) for r in records]
    stages.write_manifest(run, pairs)
    return run, records, pairs


def test_records_round_trip_and_old_shapes_rerun_without_work(tmp_path):
    src = tmp_path / "p"
    write_rgb(src / "a.png", small_photo(0, 96, 128))
    write_rgb(src / "b.jpg", small_photo(1, 96, 128), [cv2.IMWRITE_JPEG_QUALITY, 70])
    run, records, pairs = _run(src, tmp_path / "run")
    for r in [*records, *pairs]:
        back = type(r).from_json(json.loads(json.dumps(r.to_json())))
        assert back == r and r.to_json()["version"] == type(r).VERSION
    assert [r.jpeg_quality for r in records] == [None, 70] and pairs[1].image.source_jpeg_quality == 70
    index = run.images_index.read_bytes()
    # the shapes of before: no version, no `jpeg` in a clean-up record, no `image` in a pairs record
    for stage, drop in (("preprocess", "jpeg"), ("pairs", "image")):
        for path in (run.work / stage).glob("*.json"):
            d = json.loads(path.read_text())
            d.pop("version"), d.pop(drop)
            path.write_text(json.dumps(d))
    mtimes = sorted(p.stat().st_mtime_ns for p in (run.pairs / "lr").iterdir())
    run2, records2, pairs2 = _run(src, tmp_path / "run")
    assert all(r.cached for r in records2) and all(p.cached for p in pairs2)  # nothing redone
    assert [r.jpeg_quality for r in records2] == [None, 70] and [p.image for p in pairs2] == [p.image for p in pairs]
    assert run.images_index.read_bytes() == index and sorted(p.stat().st_mtime_ns for p in (run.pairs / "lr").iterdir()) == mtimes
    # a record of a newer version is not guessed at: its stage reruns
    path = run.record_path("pairs", pairs[0].key)
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": PairsRecord.VERSION + 1}))
    assert PairsRecord.load(run, pairs[0].key) is None and PreprocessRecord.load(run, records[0].key) is not None


def test_an_image_index_is_migrated_from_an_old_manifest(tmp_path):
    run = RunDir(tmp_path)
    run.pairs.mkdir()
    assert read_image_index(run) is None
    row = {
        "name": "a-12345678_s0000",
        "source": str(tmp_path / "gone.jpg"),
        "source_sha256": "0" * 64,
        "hr_position": [0, 0],
        "kernel_index": 0,
        "kernel_id": "bicubic:0",
        "noise_id": "",
        "noise_index": -1,
        "noise_offset": [0, 0],
        "scale": 4,
        "seed": 0,
    }  # before the quality was recorded
    run.manifest.write_text(json.dumps(row) + "\n" + json.dumps({**row, "name": "a-12345678_s0001"}) + "\n")
    rows, notes = read_image_index(run)
    assert [(r.name, r.kernel_index, r.source_jpeg_quality, r.pairs) for r in rows] == [("a-12345678", 0, None, None)]
    assert "gone.jpg not readable" in rows[0].note and "images.jsonl" in notes[0]
    assert ImageRow.from_json(rows[0].to_json()).note is None and "version" not in rows[0].to_json()  # JSON lines carry no version
