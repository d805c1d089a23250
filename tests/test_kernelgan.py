"""KernelGAN: the generator's composed kernel, the fast path's equivalence, determinism, checks."""

import numpy as np
import pytest
import torch

from models.kernelgan import (
    BoundariesLoss,
    CentralizedLoss,
    Generator,
    Generators,
    KernelGANConfig,
    LossWeights,
    _penalty_mask,
    estimate_kernel,
    estimate_kernels,
    finalize_kernel,
)
from models.kernels import center_of_mass, check_kernel
from models.synthetic import camera_photo, gaussian_kernel

TINY = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=25)


@pytest.fixture
def float64():
    """Double precision: rounding small enough that two equal algorithms agree to ~1e-12."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_composed_kernel_is_the_delta_read_out_and_has_the_documented_size():
    torch.manual_seed(0)
    g = Generator(KernelGANConfig())
    k = g.kernel()
    assert k.shape == (13, 13)
    torch.testing.assert_close(k, g.kernel_by_delta(), rtol=1e-5, atol=1e-7)
    k.sum().backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in g.layers)
    for one in Generators(g, 3).kernels():  # every image starts from the seed's G
        torch.testing.assert_close(one, k, rtol=1e-5, atol=1e-7)
    assert Generator(KernelGANConfig(g_structure=(5, 3, 1))).kernel().shape == (7, 7)


def test_composed_path_gives_the_deep_output_and_the_same_gradients():
    torch.manual_seed(1)
    gs = Generators(Generator(KernelGANConfig(g_channels=16)), 2)
    with torch.no_grad():
        gs.weights[0][1] *= 1.5  # two different generators
    x = torch.rand(2, 3, 40, 40)
    deep = gs.deep(x)
    assert deep.shape == (2, 3, 14, 14)
    torch.testing.assert_close(gs(x, gs.kernels()), deep, rtol=1e-4, atol=1e-6)
    target = torch.rand_like(deep)
    grads = []
    for fn in (gs.deep, lambda t: gs(t, gs.kernels())):
        gs.zero_grad()
        ((fn(x) - target) ** 2).mean().backward()
        grads.append([p.grad.clone() for p in gs.parameters()])
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


def test_deep_and_composed_training_are_the_same_algorithm(float64):
    img = camera_photo(5, 80, 80).astype(np.float64)
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=10)
    fast, deep = estimate_kernel(img, cfg), estimate_kernel(img, cfg, deep=True)
    np.testing.assert_allclose(fast.raw, deep.raw, rtol=0, atol=1e-10 * np.abs(deep.raw).max())


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
    w = LossWeights()
    for it in range(1, 4):  # three iterations close to bicubic make G "similar to bicubic"
        assert w.needs_loss()
        w.update(it, 0.1)
    assert w.bicubic == 5.0 and not w.needs_loss()
    w.update(200, None)
    assert w.bicubic == pytest.approx(0.05)
    w.update(400, None)
    assert w.bicubic == pytest.approx(5e-4) and (w.centralized, w.sparse) == (1.0, 5.0)
    opt = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=2e-4)
    for it in (0, 749, 750):
        LossWeights.decay_learning_rate(it, [opt])
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)


BATCH = [(7, 80, 90), (8, 96, 72), (9, 70, 70)]


def test_the_batched_path_gives_each_image_its_one_image_kernel(float64):
    """The same algorithm per image, shown in double precision; 40 steps include the schedule's
    switch to `similar` and, for the deep check above, every kind of update."""
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=40)
    images = [camera_photo(*a).astype(np.float64) for a in BATCH]
    batched = estimate_kernels(images, cfg)
    for img, got in zip(images, batched):
        one = estimate_kernel(img, cfg)
        np.testing.assert_allclose(got.raw, one.raw, rtol=0, atol=1e-7 * np.abs(one.raw).max())
        assert got.losses == pytest.approx(one.losses, rel=1e-6)
    assert not np.allclose(batched[0].raw, batched[1].raw)


def test_the_batched_path_in_float32_is_close_and_valid():
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=15)
    images = [camera_photo(*a) for a in BATCH]
    batched = estimate_kernels(images, cfg)
    for img, got in zip(images, batched):
        one = estimate_kernel(img, cfg)
        # grouped and plain convolutions round differently; GAN training amplifies it over steps
        assert np.linalg.norm(got.raw - one.raw) < 0.01 * np.linalg.norm(one.raw)
        assert got.kernel.shape == (13, 13) and check_kernel(got.kernel, 2).valid
