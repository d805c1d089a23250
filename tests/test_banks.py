"""The Zarr banks: round trips, atomic replacement, recovery after a kill, and no lost rows."""

import os

import numpy as np
import pytest
import zarr

from realsr.models.kernels import bicubic_kernel
from realsr.steps.degrade_kernels import kernel_set, kernel_sets_for
from realsr.storage.atomic import recover_dir, replace_dir
from realsr.storage.banks import open_kernel_bank, open_noise_bank, patches_per_chunk, write_kernel_bank, write_noise_bank


def _noise_table(n: int) -> dict:
    return {
        "source": np.array([f"img{i % 3}.png" for i in range(n)]),
        "source_sha256": np.array([str(i % 3) * 64 for i in range(n)]),
        "position": np.arange(2 * n, dtype=np.int32).reshape(n, 2),
        "gray_mean": np.linspace(0, 1, n, dtype=np.float32),
        "gray_var": np.linspace(1, 2, n, dtype=np.float32),
        "channel_mean": np.ones((n, 3), np.float32),
        "channel_var": np.ones((n, 3), np.float32),
    }


def test_noise_bank_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (70, 16, 16, 3), dtype=np.uint8)
    digest = write_noise_bank(tmp_path / "noise.zarr", patches, _noise_table(70), {"patch_size": 16, "max_var": 20})
    bank = open_noise_bank(tmp_path / "noise.zarr")
    assert bank.count == 70 and bank.patch_size == 16 and bank.digest == digest
    np.testing.assert_array_equal(bank.patches([69, 0, 5]), patches[[69, 0, 5]])
    assert bank.patch_id(4) == "1" * 16 + "@8,9"
    g = zarr.open_group(str(tmp_path / "noise.zarr"), mode="r")  # plain zarr can read it
    assert g.attrs["max_var"] == 20 and g["patches"].chunks == (1024, 16, 16, 3)


def test_chunks_hold_about_a_megabyte():
    assert patches_per_chunk(256) == 4 and patches_per_chunk(64) == 64 and patches_per_chunk(4096) == 1


def test_noise_bank_rejects_inconsistent_tables(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        write_noise_bank(tmp_path / "n.zarr", np.zeros((3, 8, 8, 3), np.uint8), _noise_table(2), {"patch_size": 8})
    assert not (tmp_path / "n.zarr").exists()


def test_kernel_bank_round_trip_with_checks(tmp_path):
    good, bad = bicubic_kernel(2), np.zeros((13, 13))
    bad[0, 0] = 1
    ks = kernel_set(2, [good, bad], ["a.png", "b.png"], ["1" * 64, "2" * 64], ["test", "test"])
    write_kernel_bank(tmp_path / "k.zarr", [ks], {"kernel_source": "test"}, {2: {"resize_convention": "x"}})
    attrs, sets = open_kernel_bank(tmp_path / "k.zarr")
    got = sets[2]
    np.testing.assert_allclose(got.kernels[0], good, atol=1e-7)
    assert got.checks["valid"].tolist() == [True, False]
    assert "centre of mass" in got.reason[1] and got.valid_indices().tolist() == [0]
    assert attrs["kernel_source"] == "test" and got.source.tolist() == ["a.png", "b.png"]


def test_bank_source_derives_x4_from_an_x2_only_bank(tmp_path):
    ks = kernel_set(2, [bicubic_kernel(2)], ["a.png"], ["1" * 64], ["kernelgan"])
    write_kernel_bank(tmp_path / "x2only.zarr", [ks], {}, {})
    sets, attrs = kernel_sets_for(f"bank:{tmp_path / 'x2only.zarr'}", required=4)
    assert [s.scale for s in sets] == [2, 4]
    assert sets[1].kernels.shape == (1, 25, 25) and sets[1].method[0] == "kernelgan+analytic-x4"
    with pytest.raises(ValueError, match="does not exist"):
        kernel_sets_for(f"bank:{tmp_path / 'missing.zarr'}", required=4)


def test_a_bank_with_only_x4_serves_scale_4_but_not_2(tmp_path):
    ks = kernel_set(4, [bicubic_kernel(4)], ["a.png"], ["1" * 64], ["imported"])
    write_kernel_bank(tmp_path / "x4only.zarr", [ks], {}, {})
    sets, _ = kernel_sets_for(f"bank:{tmp_path / 'x4only.zarr'}", required=4)
    assert [s.scale for s in sets] == [4]
    with pytest.raises(ValueError, match="no x2 kernels"):
        kernel_sets_for(f"bank:{tmp_path / 'x4only.zarr'}", required=2)


def test_a_failed_write_leaves_the_old_store(tmp_path):
    path = tmp_path / "noise.zarr"
    write_noise_bank(path, np.zeros((2, 8, 8, 3), np.uint8), _noise_table(2), {"patch_size": 8})
    with pytest.raises(RuntimeError):
        with replace_dir(path) as tmp:
            (tmp / "partial").mkdir(parents=True)
            raise RuntimeError("killed")
    assert open_noise_bank(path).count == 2
    assert sorted(os.listdir(tmp_path)) == ["noise.zarr"]


def test_recover_after_a_kill_between_the_two_renames(tmp_path):
    path = tmp_path / "noise.zarr"
    write_noise_bank(path, np.zeros((2, 8, 8, 3), np.uint8), _noise_table(2), {"patch_size": 8})
    os.replace(path, tmp_path / ".noise.zarr.old")  # the first rename happened, the second did not
    (tmp_path / ".noise.zarr.tmp-dead").mkdir()
    assert open_noise_bank(path).count == 2  # a reader finds the old copy and touches nothing
    assert sorted(os.listdir(tmp_path)) == [".noise.zarr.old", ".noise.zarr.tmp-dead"]
    recover_dir(path)  # the next writer finishes the recovery
    assert sorted(os.listdir(tmp_path)) == ["noise.zarr"]
    recover_dir(path)  # idempotent
    assert open_noise_bank(path).count == 2


def test_an_identical_bank_is_not_rewritten(tmp_path):
    path = tmp_path / "noise.zarr"
    args = (np.ones((2, 8, 8, 3), np.uint8), _noise_table(2), {"patch_size": 8})
    first = write_noise_bank(path, *args)
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert write_noise_bank(path, *args) == first
    assert (path / "zarr.json").stat().st_mtime_ns == stamp
    assert write_noise_bank(path, args[0], args[1], {"patch_size": 8, "max_var": 5}) != first


def _bank_with_noise(path, noise_scale: float = 1.0) -> str:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (70, 16, 16, 3), dtype=np.uint8)
    table = {**_noise_table(70), "noise": (rng.normal(0, 2, (70, 16, 16, 3)) * noise_scale).astype(np.float16)}
    return write_noise_bank(path, patches, table, {"patch_size": 16})


def test_a_missing_or_truncated_chunk_is_refused_with_the_store_and_what_is_wrong(tmp_path):
    from realsr.storage.banks import DamagedStoreError

    store = tmp_path / "noise.zarr"
    _bank_with_noise(store)
    chunk = next(p for p in (store / "noise" / "c").rglob("*") if p.is_file())
    data = chunk.read_bytes()
    chunk.unlink()  # zarr alone would read it back as zeros
    with pytest.raises(DamagedStoreError, match=rf"{store}: damaged store"):
        open_noise_bank(store)
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedStoreError, match=r"array 'noise' cannot be read"):
        open_noise_bank(store)
    chunk.write_bytes(data)
    assert open_noise_bank(store).count == 70
    k = tmp_path / "k.zarr"
    write_kernel_bank(k, [kernel_set(2, [bicubic_kernel(2)], ["a.png"], ["1" * 64], ["test"])], {}, {2: {}})
    next(p for p in (k / "x2" / "kernels" / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(DamagedStoreError, match=rf"{k}: damaged store"):
        open_kernel_bank(k)


def test_the_noise_banks_digest_covers_what_injection_reads(tmp_path):
    assert _bank_with_noise(tmp_path / "a.zarr") != _bank_with_noise(tmp_path / "b.zarr", noise_scale=0.5)
