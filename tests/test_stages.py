"""Per-image stages: resume points, determinism, and many workers feeding one coordinator."""

import json
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from realsr.flows.settings import DegradeSettings
from realsr.models.kernels import bicubic_kernel
from realsr.steps import degrade as stages
from realsr.steps import degrade_kernels as kernel_steps
from realsr.steps.degrade import DegradeSpec
from realsr.storage.banks import open_noise_bank
from realsr.storage.degrade_records import KernelRecord
from realsr.storage.images import BadImageError, read_image
from realsr.storage.run_dir import RunDir, RunDirError, claim_run_dir
from tests.conftest import small_photo, write_rgb


def _settings(src: Path, out: Path, **kw) -> DegradeSpec:
    base = dict(source=src, out=out, noise_rule="reference", noise_patch_size=32, noise_stride=32, pair_hr_size=32, scale=4)
    return DegradeSettings(**{**base, **kw}).spec()


def _run(photo_dir: Path, tmp_path: Path, **kw):
    s = _settings(photo_dir, tmp_path / "run", **kw)
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    records = [stages.prepare_source(p, run, s) for p in sorted(photo_dir.glob("*.png"))]
    kinfo = kernel_steps.build_kernel_bank(run, s)
    ninfo = stages.build_noise_bank(records, run, s)
    pairs = [stages.make_pairs(r, run, s, kinfo["digest"], ninfo["digest"]) for r in records]
    stages.write_manifest(run, pairs)
    return s, run, records, pairs, ninfo


def test_prepare_source_outputs(photo_dir, tmp_path):
    s, run, records, pairs, ninfo = _run(photo_dir, tmp_path)
    r = records[0]
    assert r.hr_size == [128, 96] and r.source_size == [256, 192]
    # 192x256 source: the flat top half holds 3x8 = 24 whole 32px patches minus none
    assert r.noise_count == 24 and r.noise_rejected == 24
    assert ninfo["count"] == sum(x.noise_count for x in records)
    bank = open_noise_bank(run.noise)
    src = read_image(photo_dir / "photo_0.png").rgb
    y, x = bank.column("position")[0]
    np.testing.assert_array_equal(bank.patches([0])[0], np.rint(src[y : y + 32, x : x + 32] * 255).astype(np.uint8))
    # 128x96 clean HR, 32px pairs at stride 32: 4x3 = 12 pairs per image
    assert sum(len(p.rows) for p in pairs) == 48
    lr = read_image(run.pairs / "lr" / f"{pairs[0].rows[0].name}.png").rgb
    assert lr.shape == (8, 8, 3)
    rows = [json.loads(line) for line in run.manifest.read_text().splitlines()]
    assert len(rows) == 48 and {"kernel_id", "noise_id", "noise_offset", "seed", "hr_position"} <= rows[0].keys()


def test_rerun_skips_finished_work_and_is_identical(photo_dir, tmp_path):
    s, run, records, pairs, ninfo = _run(photo_dir, tmp_path)
    lr_file = run.pairs / "lr" / f"{pairs[0].rows[0].name}.png"
    before = (lr_file.read_bytes(), lr_file.stat().st_mtime_ns, run.manifest.read_bytes())
    s2, run2, records2, pairs2, ninfo2 = _run(photo_dir, tmp_path)
    assert all(r.cached for r in records2) and all(p.cached for p in pairs2)
    assert ninfo2["digest"] == ninfo["digest"]
    assert (lr_file.read_bytes(), lr_file.stat().st_mtime_ns, run.manifest.read_bytes()) == before


def test_pairs_are_deterministic_for_a_seed(photo_dir, tmp_path):
    _, run_a, _, pairs_a, _ = _run(photo_dir, tmp_path / "a", seed=7)
    _, run_b, _, pairs_b, _ = _run(photo_dir, tmp_path / "b", seed=7)
    _, run_c, _, pairs_c, _ = _run(photo_dir, tmp_path / "c", seed=8)
    name = pairs_a[1].rows[2].name
    a, b, c = ((r.pairs / "lr" / f"{name}.png").read_bytes() for r in (run_a, run_b, run_c))
    assert a == b and a != c
    strip = lambda ps: [{k: v for k, v in row.to_json().items() if k != "source"} for p in ps for row in p.rows]
    assert strip(pairs_a) == strip(pairs_b)


def test_lr_is_the_degraded_hr_plus_zero_mean_noise(photo_dir, tmp_path):
    _, run, _, pairs, _ = _run(photo_dir, tmp_path)
    row = pairs[0].rows[0]
    hr = read_image(run.pairs / "hr" / f"{row.name}.png").rgb
    lr = read_image(run.pairs / "lr" / f"{row.name}.png").rgb
    # the noise is mean-removed, so the LR's mean brightness is the HR's (within rounding and clipping)
    np.testing.assert_allclose(lr.mean(axis=(0, 1)), hr.mean(axis=(0, 1)), atol=3 / 255)


def test_an_image_without_flat_patches_still_gives_pairs(tmp_path):
    from tests.conftest import textured

    write_rgb(tmp_path / "p" / "busy.png", textured(96, 128, 3))
    _, run, records, pairs, ninfo = _run(tmp_path / "p", tmp_path)
    assert records[0].noise_count == 0 and records[0].noise_rejected == 12
    assert ninfo["count"] == 0 and open_noise_bank(run.noise).count == 0
    assert len(pairs[0].rows) == 2 and pairs[0].rows[0].noise_id == ""


def test_a_copied_file_is_dropped_as_a_duplicate(photo_dir, tmp_path):
    import shutil

    from realsr.flows.degrade import drop_duplicates

    shutil.copy(photo_dir / "photo_1.png", photo_dir / "photo_1_copy.png")
    s = _settings(photo_dir, tmp_path / "run")
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    records = [stages.prepare_source(p, run, s) for p in sorted(photo_dir.glob("*.png"))]
    by_source = {Path(r.source).name: r for r in records}
    assert by_source["photo_1.png"].key != by_source["photo_1_copy.png"].key  # own records
    kept, dropped = drop_duplicates(records)
    assert [Path(d["source"]).name for d in dropped] == ["photo_1_copy.png"]
    assert "same content as" in dropped[0]["reason"] and dropped[0]["source"] not in {r.source for r in kept}


def test_batch_errors_cross_processes_and_say_whether_to_retry():
    import pickle

    from realsr.tasks.degrade import BatchError

    bad = BatchError([{"name": "a"}], [{"source": "x.png", "reason": "empty file", "bad_input": True}])
    back = pickle.loads(pickle.dumps(bad))
    assert back.done == [{"name": "a"}] and not back.retryable and "x.png: empty file" in str(back)
    assert BatchError([], [{"source": "y.png", "reason": "OSError: disk", "bad_input": False}]).retryable


def test_a_tiny_image_is_a_bad_image(tmp_path):
    write_rgb(tmp_path / "p" / "tiny.png", small_photo(0, 5, 5))
    s = _settings(tmp_path / "p", tmp_path / "run")
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    with pytest.raises(BadImageError, match="tiny.png.*too small"):
        stages.prepare_source(tmp_path / "p" / "tiny.png", run, s)


def test_run_dir_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not a run folder"):
        claim_run_dir(tmp_path, {})
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    claim_run_dir(tmp_path / "new", {})
    claim_run_dir(tmp_path / "new", {})  # a run folder may be reused


def test_concurrent_workers_lose_no_patches(tmp_path):
    src = tmp_path / "photos"
    paths = [write_rgb(src / f"p{i:02d}.png", small_photo(i)) for i in range(12)]
    s = _settings(src, tmp_path / "run")
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        records = client.gather(client.map(stages.prepare_source, paths, run=run, s=s, pure=False))
    info = stages.build_noise_bank(records, run, s)
    bank = open_noise_bank(run.noise)
    assert info["count"] == bank.count == sum(r.noise_count for r in records) == 12 * 24
    pos = bank.column("position")
    sources = bank.column("source")
    assert len({(str(a), int(y), int(x)) for a, (y, x) in zip(sources, pos)}) == bank.count
    for i in (0, bank.count // 2, bank.count - 1):
        img = read_image(str(sources[i])).rgb
        y, x = pos[i]
        np.testing.assert_array_equal(bank.patches([i])[0], np.rint(img[y : y + 32, x : x + 32] * 255).astype(np.uint8))


def test_kernelgan_stage_isolates_small_images_and_caches(tmp_path):
    src = tmp_path / "p"
    write_rgb(src / "ok.png", small_photo(1, 96, 96))
    write_rgb(src / "small.png", small_photo(2, 40, 200))
    s = _settings(src, tmp_path / "run", kernels="kernelgan", kernelgan_iterations=3, kernelgan_seeds=1)
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    paths = [src / "ok.png", src / "small.png"]
    ok, small = kernel_steps.estimate_source_kernels(paths, run, s)
    assert isinstance(small, BadImageError) and "small.png" in str(small) and "too small for KernelGAN" in str(small)
    assert not ok.cached and run.staged_kernel(ok.key).exists()
    again, _ = kernel_steps.estimate_source_kernels(paths, run, s)
    assert again.cached and again.key == ok.key
    sets = kernel_steps.kernelgan_sets(run, [ok])
    assert sets[0].kernels.shape == (1, 13, 13) and sets[1].kernels.shape == (1, 25, 25)
    # 3 steps cannot grow G into a blur: the image keeps the bicubic kernel, and says why
    assert "G's kernel collapsed" in ok.fallback and ok.fallback.endswith("the bicubic kernel stands in")
    assert list(sets[0].method) == ["bicubic-fallback"] == list(sets[1].method)
    np.testing.assert_allclose(sets[0].kernels[0], bicubic_kernel(2), atol=1e-7)
    info = kernel_steps.build_kernel_bank(run, s, [ok])  # the run summary lists it
    assert info["fallbacks"] == [{"source": str(src / "ok.png"), "reason": ok.fallback}]


def test_the_camera_kernel_is_the_consensus_of_the_photos_that_did_not_fail(tmp_path):
    from realsr.models.synthetic import gaussian_kernel
    from realsr.storage.atomic import write_bytes

    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    true = gaussian_kernel(1.6, 1.1, 0.5, 13)
    records = []
    for i, (k, fallback) in enumerate([(true * 1.01, None), (true, None), (np.roll(true, 1, 0), None), (bicubic_kernel(2), "collapsed")]):
        key = f"k{i}"
        write_bytes(run.staged_kernel(key), stages.npz_bytes({"kernel": k / k.sum(), "raw": k}))
        records.append(KernelRecord(key=key, source=f"p/{i}.png", sha256=str(i) * 64, fallback=fallback))
    x2, x4 = kernel_steps.kernelgan_sets(run, records, camera=True)
    assert list(x2.method) == ["kernelgan"] * 3 + ["bicubic-fallback", "kernelgan-camera"]
    assert x2.source[-1] == "camera: consensus of 3 photos" and x4.method[-1] == "kernelgan-camera+analytic-x4"
    assert np.linalg.norm(x2.kernels[-1] - true) < 0.02  # the fallback's bicubic kernel has no say
    assert len(kernel_steps.kernelgan_sets(run, records)[0]) == 4  # per-image only without `camera`


def test_x4_kernels_compose_the_unthresholded_x2_kernel(tmp_path):
    from realsr.models.kernelgan_post import finalize_kernel
    from realsr.models.kernels import analytic_x4
    from realsr.models.synthetic import gaussian_kernel
    from realsr.storage.atomic import write_bytes

    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    raw = gaussian_kernel(2.4, 1.8, 0.4, 13)  # wide: the soft threshold would cut its tails
    write_bytes(run.staged_kernel("k"), stages.npz_bytes({"kernel": finalize_kernel(raw, 40), "raw": raw}))
    x2, x4 = kernel_steps.kernelgan_sets(run, [KernelRecord(key="k", source="p/0.png", sha256="0" * 64)])
    assert np.allclose(x2.kernels[0], finalize_kernel(raw, 40))  # x2: the reference's post-processing
    assert np.allclose(x4.kernels[0], analytic_x4(finalize_kernel(raw, 0)), atol=1e-7)  # x4: the whole kernel, composed
    assert not np.allclose(x4.kernels[0], analytic_x4(finalize_kernel(raw, 40)), atol=1e-4)


def test_with_the_camera_kernel_every_pair_uses_it(photo_dir, tmp_path):
    from realsr.models.synthetic import gaussian_kernel
    from realsr.storage.atomic import write_bytes

    s = _settings(photo_dir, tmp_path / "run", kernels="kernelgan-camera")
    run = RunDir(claim_run_dir(tmp_path / "run", {}))
    records = [stages.prepare_source(p, run, s) for p in sorted(photo_dir.glob("*.png"))]
    kernel_records = []
    for i, r in enumerate(records):
        k = gaussian_kernel(1.0 + 0.2 * i, 1.2, 0.3, 13)
        write_bytes(run.staged_kernel(f"k{i}"), stages.npz_bytes({"kernel": k, "raw": k}))
        kernel_records.append(KernelRecord(key=f"k{i}", source=r.source, sha256=r.sha256))
    kinfo = kernel_steps.build_kernel_bank(run, s, kernel_records)
    ninfo = stages.build_noise_bank(records, run, s)
    rows = [row for r in records for row in stages.make_pairs(r, run, s, kinfo["digest"], ninfo["digest"]).rows]
    assert rows and {row.kernel_id.split(":")[0] for row in rows} == {"kernelgan-camera+analytic-x4"}


def test_the_reference_rule_draws_as_the_released_code(photo_dir, tmp_path):
    """Reference rule, uniform draws: one generator per image, the kernel, then all picks, then all offsets."""
    s, run, records, pairs, ninfo = _run(photo_dir, tmp_path, noise_match_brightness=False)
    r, rows = records[0], next(p.rows for p in pairs if p.source == records[0].source)
    rng = np.random.default_rng([s.seed, int(r.sha256[:15], 16)])
    rng.integers(1)  # the kernel's draw (one valid bicubic kernel)
    picks = rng.integers(ninfo["count"], size=len(rows))
    offsets = rng.integers(0, 32 - 8 + 1, size=(len(rows), 2))
    assert [row.noise_index for row in rows] == picks.tolist()
    assert [row.noise_offset for row in rows] == offsets.tolist()


@pytest.mark.parametrize("pair,scale,tile", [(32, 4, 16), (64, 2, 16)])  # one tile per crop; a 2x2 mosaic
def test_adaptive_rule_bank_and_pairs(photo_dir, tmp_path, pair, scale, tile):
    from realsr.models.degradation import degrade
    from realsr.models.noise import assemble_noise

    s, run, records, pairs, ninfo = _run(photo_dir, tmp_path, noise_rule="adaptive", noise_tile=tile, pair_hr_size=pair, scale=scale)
    bank = open_noise_bank(run.noise)
    assert bank.count == ninfo["count"] > 0 and not ninfo["warning"] and bank.rule == "adaptive"
    level = bank.column("noise_level")
    # the photos' flat halves have noise of 2 levels per channel: luma about 1.34 levels
    assert np.isfinite(level).all() and np.median(level) == pytest.approx(2.0 * 0.668, rel=0.15)
    assert np.median(np.sqrt(bank.column("gray_var"))) == pytest.approx(2.0 * 0.668, rel=0.15)
    assert (bank.column("position")[:, 0] + tile <= 96 + 4).all()  # from the flat top half only
    assert records[0].noise_level["sigma"]  # each photo's own estimate is kept
    row = pairs[0].rows[0]
    hr = read_image(run.pairs / "hr" / f"{row.name}.png").rgb
    lr = read_image(run.pairs / "lr" / f"{row.name}.png").rgb
    index = row.noise_index if isinstance(row.noise_index, list) else [row.noise_index]
    assert len(index) == (1 if pair // scale <= tile else (pair // scale // tile) ** 2)
    noise = bank.rows("noise", index)
    if len(index) == 1:
        y, x = row.noise_offset
        field = noise[0][y : y + pair // scale, x : x + pair // scale].astype(np.float32) / 255
        field -= field.mean((0, 1))
    else:
        field = assemble_noise(list(noise), pair // scale)
    expected = np.clip(degrade(hr, bicubic_kernel(scale), scale) + field, 0, 1)
    inner = slice(2, -2)  # the pair's LR was cut from the whole image's: its border saw more context
    np.testing.assert_allclose(lr[inner, inner], expected[inner, inner], atol=0.6 / 255)


@pytest.mark.parametrize("rule,advice", [("reference", "--noise-rule adaptive"), ("adaptive", "flat areas")])
def test_an_empty_noise_bank_is_a_loud_warning_with_what_to_change(tmp_path, rule, advice):
    from tests.conftest import textured

    write_rgb(tmp_path / "p" / "busy.png", textured(96, 128, 3))
    *_, ninfo = _run(tmp_path / "p", tmp_path, noise_rule=rule)
    assert ninfo["count"] == 0 and "EMPTY" in ninfo["warning"] and advice in ninfo["warning"]
    assert "--on-empty-noise stop" in ninfo["warning"]
