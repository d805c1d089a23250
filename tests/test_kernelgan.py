"""KernelGAN: the generator's composed kernel, the fast path's equivalence, determinism, checks."""

import numpy as np
import pytest
import torch

from models.kernelgan import (
    BoundariesLoss,
    CentralizedLoss,
    Generator,
    KernelGANConfig,
    LossWeights,
    _penalty_mask,
    estimate_kernel,
    finalize_kernel,
)
from models.kernels import center_of_mass, check_kernel
from models.synthetic import camera_photo, gaussian_kernel

TINY = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=25)


def test_composed_kernel_is_the_delta_read_out_and_has_the_documented_size():
    torch.manual_seed(0)
    g = Generator(KernelGANConfig())
    k = g.kernel()
    assert k.shape == (13, 13)
    torch.testing.assert_close(k, g.kernel_by_delta(), rtol=1e-5, atol=1e-7)
    assert Generator(KernelGANConfig(g_structure=(5, 3, 1))).kernel().shape == (7, 7)


def test_fast_path_gives_the_deep_output_and_the_same_gradients():
    torch.manual_seed(1)
    g = Generator(KernelGANConfig(g_channels=16))
    x = torch.rand(1, 3, 40, 40)
    deep = g(x)
    torch.testing.assert_close(g.forward_composed(x), deep, rtol=1e-4, atol=1e-6)
    target = torch.rand_like(deep)
    grads = []
    for fn in (g.forward, g.forward_composed):
        g.zero_grad()
        ((fn(x) - target) ** 2).mean().backward()
        grads.append([p.grad.clone() for p in g.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-7)


def test_estimation_is_deterministic_for_a_seed():
    img = camera_photo(4, 96, 96)
    a = estimate_kernel(img, TINY)
    b = estimate_kernel(img, TINY)
    c = estimate_kernel(img, KernelGANConfig(**{**TINY.as_dict(), "seed": 1}))
    np.testing.assert_array_equal(a.raw, b.raw)
    assert not np.array_equal(a.raw, c.raw)
    assert a.kernel.shape == (13, 13) and check_kernel(a.kernel, 2).valid


def test_deep_and_fast_training_agree():
    img = camera_photo(5, 80, 80)
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=10)
    fast, deep = estimate_kernel(img, cfg, fast=True), estimate_kernel(img, cfg, fast=False)
    # same gradients up to float rounding, which Adam's normalisation amplifies on tiny gradients
    assert np.linalg.norm(fast.raw - deep.raw) < 0.02 * np.linalg.norm(deep.raw)


def test_crop_probabilities_are_valid_on_flat_and_graphic_images():
    from models.kernelgan import CropSampler

    flat = np.full((120, 130, 3), 0.5, np.float32)
    graphic = np.zeros((120, 130, 3), np.float32)
    graphic[40:80, 30:90] = 1.0  # a flat-colour graphic: gradients only on a few edges
    for img in (flat, graphic):
        sampler = CropSampler(img, KernelGANConfig(), np.random.default_rng(0))
        for p in (sampler.p_g, sampler.p_d):
            assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        corners = sampler.corners(50, for_g=True)
        assert corners.min() >= 0 and (corners % 2 == 0).all()
        assert corners[:, 0].max() <= 120 - 64 and corners[:, 1].max() <= 130 - 64


def test_an_image_too_small_for_the_crops_is_refused():
    with pytest.raises(ValueError, match="too small for KernelGAN's 64 px crops"):
        estimate_kernel(camera_photo(0, 50, 200), KernelGANConfig(iterations=1))


def test_finalize_keeps_the_strongest_taps_and_centres():
    raw = np.roll(gaussian_kernel(1.6, 1.0, 0.3, 13), (1, -1), (0, 1)) + np.random.default_rng(0).normal(0, 1e-3, (13, 13))
    k = finalize_kernel(raw, keep=40)
    assert k.sum() == pytest.approx(1.0) and k.min() >= 0
    np.testing.assert_allclose(center_of_mass(k), [6, 6], atol=1e-9)
    with pytest.raises(ValueError, match="no positive mass"):
        finalize_kernel(-np.ones((13, 13)))


def test_constraint_losses():
    k = torch.tensor(gaussian_kernel(1.2, 1.2, 0, 13), dtype=torch.float32)
    assert CentralizedLoss(13)(k).item() == pytest.approx(0.0, abs=1e-9)
    assert CentralizedLoss(13)(torch.roll(k, 2, 0)).item() == pytest.approx(2.0, rel=1e-3)  # (2^2 + 0) / 2
    mask = _penalty_mask(13, 30.0)
    assert mask[3:10, 3:10].max() == 0 and mask[0, 0] > 0
    assert BoundariesLoss(13)(k).item() < BoundariesLoss(13)(torch.roll(k, 5, 1)).item()


def test_weight_schedule_follows_the_reference():
    g = torch.nn.Linear(1, 1)
    opt = torch.optim.Adam(g.parameters(), lr=2e-4)
    w = LossWeights()
    for it in range(1, 4):  # three iterations close to bicubic make G "similar to bicubic"
        w.update(it, 0.1, [opt])
    assert w.bicubic == 5.0 and w._similar
    w.update(200, 0.1, [opt])
    assert w.bicubic == pytest.approx(0.05)
    w.update(400, 0.1, [opt])
    assert w.bicubic == pytest.approx(5e-4) and (w.centralized, w.sparse) == (1.0, 5.0)
    w.update(750, 0.1, [opt])
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)


def test_the_batched_path_gives_each_image_its_one_image_kernel():
    from models.kernelgan import estimate_kernels

    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=15)
    images = [camera_photo(7, 80, 90), camera_photo(8, 96, 72), camera_photo(9, 70, 70)]
    batched = estimate_kernels(images, cfg)
    for img, got in zip(images, batched):
        one = estimate_kernel(img, cfg)
        # same draws and updates; grouped convolutions round differently, Adam amplifies it a little
        assert np.linalg.norm(got.raw - one.raw) < 0.02 * np.linalg.norm(one.raw)
        assert got.kernel.shape == (13, 13) and check_kernel(got.kernel, 2).valid
    assert not np.allclose(batched[0].raw, batched[1].raw)
