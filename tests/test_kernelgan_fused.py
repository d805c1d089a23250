"""The fused KernelGAN engine (models/kernelgan_fused.py): a run's kernel independent of its slot
companions (bitwise on the CPU), empty and diverging slots without effect on the others, no read
to the host inside the loop, and the per-image engine's kernel to rounding.

Tiny nets (as tests/test_kernelgan.py) where only the arithmetic matters; the full-size nets where
the kernel is compared with the per-image engine's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from realsr.models.kernelgan import KernelGANConfig, train_kernels
from realsr.models.kernelgan_fused import estimate_kernels_fused, train_slots
from realsr.models.synthetic import camera_photo

TINY = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=12, retries=0)
PHOTOS = [camera_photo(i, 72 + 8 * i, 80) for i in range(4)]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the threads' split of a sum is the one rounding the slots do not fix."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def raw(images, seeds, slots, at=0, cfg=TINY):
    return train_slots(images, seeds, cfg, slots=slots)[at].raw


def test_a_runs_kernel_does_not_depend_on_its_companions():
    a, b, c, d = PHOTOS
    ref = raw([a, b], [0, 7], 4)
    assert np.abs(ref).max() > 0 and not np.array_equal(ref, raw([b], [7], 4))  # the companions do train something else
    np.testing.assert_array_equal(raw([a, c, d], [0, 3, 5], 4), ref)  # other companions, same slot
    np.testing.assert_array_equal(raw([a], [0], 4), ref)  # alone: three empty slots


def test_on_avx512_neither_the_slot_position_nor_a_multiple_of_four_slots_moves_a_kernel():
    """What the product's default (`slots=None`: multiples of SLOT_MULTIPLE) relies on, as measured
    on AVX512; not a guarantee of construction (3 or 5 slots do round a last slot differently)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip(f"measured on AVX512 only, this CPU is {torch.backends.cpu.get_cpu_capability()}")
    a, b, c, d = PHOTOS
    ref = raw([a], [0], 4)
    np.testing.assert_array_equal(raw([b, c, d, a], [1, 3, 5, 0], 4, at=3), ref)
    np.testing.assert_array_equal(raw([b, c, a], [1, 3, 0], 8, at=2), ref)


def test_a_diverging_companion_is_reported_and_costs_the_others_nothing():
    a, b = PHOTOS[:2]
    bad = b.copy()
    bad[10:30, 10:30] = np.nan
    ests = train_slots([a, bad], [0, 0], TINY, slots=4)
    assert ests[1].diverged_at is not None and "diverged" in ests[1].problem and ests[1].kernel is None
    np.testing.assert_array_equal(ests[0].raw, raw([a], [0], 4))
    assert ests[0].diverged_at is None and len(ests) == 2  # empty slots give no estimate


def test_the_loop_reads_nothing_back_between_its_reads(monkeypatch):
    """Reads to the host from the engine's own code (torch's CPU Adam reads its CPU step counter,
    which is no device sync; on CUDA the engine uses fused Adam, whose counters stay there)."""
    reads = []
    engine = {str(Path(sys.modules[m].__file__)) for m in ("realsr.models.kernelgan_fused", "realsr.models.kernelgan_losses")}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename in engine:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = {}
    for iterations in (4, 12):
        reads.clear()
        train_slots(PHOTOS[:1], [0], KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=iterations), slots=4)
        counts[iterations] = len(reads)
    assert counts[4] == counts[12] > 0  # the final read only, whatever the step count
    reads.clear()
    seen = []
    train_slots(
        PHOTOS[:1], [0], KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=12), slots=4, read_every=4, progress=lambda it, losses: seen.append(it)
    )
    assert seen == [4, 8, 12] and len(reads) == counts[12] + 2 * 3  # two losses read every 4 steps


def test_one_step_is_the_per_image_engines_to_rounding():
    """The same draws (G, D, crops, noise): after one step only float rounding separates the
    engines (the order of sums in grouped convolutions and batched products), ~1e-5 relative."""
    cfg = KernelGANConfig(iterations=1, retries=0)
    a = train_kernels(PHOTOS[:1], cfg)[0].raw
    b = raw(PHOTOS[:1], [0], 4, cfg=cfg)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()


def test_the_golden_photos_kernel_is_the_per_image_engines_within_rounding_grown_by_chaos():
    """100 steps on tests/test_kernel_golden.py's photo: KernelGAN's chaos grows the rounding to
    ~5e-3 per tap (as another thread count does there), held to that file's ATOL_ELSEWHERE."""
    from tests.test_kernel_golden import ATOL_ELSEWHERE, GOLDEN, ITERATIONS, PHOTO

    want = json.loads(GOLDEN.read_text())["kernelgan"]
    est = estimate_kernels_fused([camera_photo(**PHOTO)], KernelGANConfig(iterations=ITERATIONS, seeds=1))[0]
    assert est.ok and est.seed == want["seed"]
    np.testing.assert_allclose(est.kernel, np.array(want["kernel"]), rtol=0, atol=ATOL_ELSEWHERE)


def test_seeds_and_retries_are_the_per_image_engines():
    """Seeds seed + 1000 j side by side; a failed run retried at its seed + 1 (tiny nets collapse)."""
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=3, seeds=2, retries=1)
    for e in estimate_kernels_fused(PHOTOS[:2], cfg):  # every seed failed: the first seed's last try stands, as per image
        assert not e.ok and e.seed == 1 and e.problem.endswith("(seeds 0, 1)")


def test_the_engine_setting_picks_the_engine_and_gpu_workers_get_large_batches():
    from realsr.flows.degrade import kernelgan_batches
    from realsr.flows.settings import degrade_spec
    from realsr.steps.degrade_kernels import CPU_ENGINE, kernel_engine

    assert kernel_engine(degrade_spec(kernels="kernelgan"), "cuda:0") == "fused"
    assert kernel_engine(degrade_spec(kernels="kernelgan"), "cpu") == CPU_ENGINE
    assert kernel_engine(degrade_spec(kernels="kernelgan", kernelgan_engine="fused"), "cpu") == "fused"
    assert kernel_engine(degrade_spec(kernels="kernelgan-fkp"), "cuda") == "per-image"
    with pytest.raises(ValueError, match="kernelgan_engine 'fused' is plain KernelGAN's"):
        degrade_spec(kernels="kernelgan-fkp", kernelgan_engine="fused")
    assert [len(b) for b in kernelgan_batches(list(range(100)), None, slots=8, gpu=True)] == [50, 50]  # one large task per GPU, split evenly
    assert [len(b) for b in kernelgan_batches(list(range(10)), None, slots=8, gpu=True)] == [10]
    assert [len(b) for b in kernelgan_batches(list(range(10)), None, slots=8)] == [2, 2, 2, 2, 2]  # CPU workers: per-core batches, as before
