"""KernelGAN: the generator's composed kernel, the fast path's equivalence, the reference's
initialisation, batch independence, the loss guards, divergence reports, determinism, checks."""

import numpy as np
import pytest
import torch

from realsr.models.kernelgan import (
    Discriminator,
    Generator,
    Generators,
    KernelGANConfig,
    estimate_kernels,
    finalize_kernel,
)
from realsr.models.kernelgan_crops import CropSampler, gradient_map
from realsr.models.kernelgan_losses import BoundariesLoss, CentralizedLoss, ConstraintSchedule, SparsityLoss, penalty_mask
from realsr.models.kernels import center_of_mass, centre_kernel
from realsr.models.synthetic import camera_photo, gaussian_kernel

# tiny nets for speed: too small to grow into a blur (their kernels "collapse"), which the
# tests of the arithmetic do not need; no retries, so each test trains once
TINY = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=25, retries=0)


def estimate_kernel(image, cfg):
    """One image alone: what the product computes for it in any batch."""
    return estimate_kernels([image], cfg)[0]


def composed(g: Generator) -> torch.Tensor:
    """G's composed (K, K) kernel, as training reads it."""
    return Generators(g, 1).kernels()[0]


def delta_read_out(g: Generator) -> torch.Tensor:
    """The reference's read-out: a delta pushed through G's layers at stride 1, flipped."""
    k = g.kernel_size
    y = torch.zeros(1, 1, 2 * k - 1, 2 * k - 1)
    y[0, 0, k - 1, k - 1] = 1.0
    for layer in g.layers:
        y = torch.nn.functional.conv2d(y, layer.weight)
    return y[0, 0].flip(0, 1)


def deep_forward(gs: Generators, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's G, layer by layer with grouped convolutions: RGB channels go through as
    gray images (image b's channel c is row c, group b); `k` is ignored."""
    b = x.shape[0]
    y = x.transpose(0, 1)
    for i, w in enumerate(gs.weights):
        y = torch.nn.functional.conv2d(y, w.flatten(0, 1), stride=2 if i == len(gs.weights) - 1 else 1, groups=b)
    return y.transpose(0, 1)


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
    gs = Generators(g, 3)
    ks = gs.kernels()
    assert ks.shape == (3, 13, 13)
    for one in ks:  # every image starts from the seed's G, whose reference read-out this is
        torch.testing.assert_close(one, delta_read_out(g), rtol=1e-5, atol=1e-7)
    ks[1].sum().backward()
    assert all(w.grad is not None and w.grad[1].abs().sum() > 0 and w.grad[0].abs().sum() == 0 for w in gs.weights)
    assert composed(Generator(KernelGANConfig(g_structure=(5, 3, 1)))).shape == (7, 7)


def test_composed_path_gives_the_deep_output_and_the_same_gradients():
    torch.manual_seed(1)
    gs = Generators(Generator(KernelGANConfig(g_channels=16)), 2)
    with torch.no_grad():
        gs.weights[0][1] *= 1.5  # two different generators
    x = torch.rand(2, 3, 40, 40)
    deep = deep_forward(gs, x)
    assert deep.shape == (2, 3, 14, 14)
    torch.testing.assert_close(gs(x, gs.kernels()), deep, rtol=1e-4, atol=1e-6)
    target = torch.rand_like(deep)
    grads = []
    for fn in (lambda t: deep_forward(gs, t), lambda t: gs(t, gs.kernels())):
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
    assert a.raw.shape == (13, 13) and a.problem == b.problem


def test_deep_and_composed_training_are_the_same_algorithm(float64, monkeypatch):
    img = camera_photo(5, 80, 80).astype(np.float64)
    cfg = KernelGANConfig(crop=32, g_channels=8, d_channels=8, iterations=10)
    fast = estimate_kernel(img, cfg)
    monkeypatch.setattr(Generators, "forward", deep_forward)  # the reference's G in the same loop
    deep = estimate_kernel(img, cfg)
    np.testing.assert_allclose(fast.raw, deep.raw, rtol=0, atol=1e-10 * np.abs(deep.raw).max())


def test_weights_start_as_the_references():
    torch.manual_seed(0)
    g, d = Generator(KernelGANConfig()), Discriminator(KernelGANConfig())
    w = g.layers[1].weight  # 64 -> 64, 5x5: Xavier-normal std = 0.1 * sqrt(2 / (fan_in + fan_out))
    assert w.std().item() == pytest.approx(0.1 * np.sqrt(2 / (2 * 64 * 25)), rel=0.05)
    bn = [m for m in d.net if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight for m in bn])
    assert abs(weights.mean().item() - 1) < 0.01 and weights.std().item() == pytest.approx(0.02, rel=0.2)
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias.abs().max() == 0 for m in convs)
    assert composed(g).abs().sum() < 1e-3  # G starts near zero; the bicubic term pulls it up


def test_crops_favour_the_strongest_edges():
    img = np.full((120, 120, 3), 0.5, np.float32)
    img[:, 60:] += np.random.default_rng(0).normal(0, 0.01, (120, 60, 3)).astype(np.float32)  # faint grain
    img[30:90, 20:24] = 1.0  # one strong edge pair on the left
    m = gradient_map(img)
    assert m.mean() == pytest.approx(1.0)
    assert m[30:90, 15:30].max() > 5 * m[30:90, 70:110].mean()


def test_crop_probabilities_are_valid_on_flat_and_graphic_images():
    flat = np.full((120, 130, 3), 0.5, np.float32)
    graphic = np.zeros((120, 130, 3), np.float32)
    graphic[40:80, 30:90] = 1.0  # a flat-colour graphic: gradients only on a few edges
    for img in (flat, graphic):
        sampler = CropSampler(img, 64, 26, np.random.default_rng(0))
        for p in sampler.p.values():
            assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        corners = sampler.corners(50, for_g=True)
        assert corners.min() >= 0 and (corners % 2 == 0).all()
        assert corners[:, 0].max() <= 120 - 64 and corners[:, 1].max() <= 130 - 64


def test_an_image_too_small_for_the_crops_is_refused():
    with pytest.raises(ValueError, match="too small for KernelGAN's 64 px crops"):
        estimate_kernel(camera_photo(0, 50, 200), KernelGANConfig(iterations=1))


def test_finalize_soft_thresholds_as_the_reference_and_centres():
    raw = np.roll(gaussian_kernel(1.6, 1.0, 0.3, 13), (1, -1), (0, 1)) + np.random.default_rng(0).normal(0, 1e-3, (13, 13))
    k = finalize_kernel(raw, n=40)
    assert k.sum() == pytest.approx(1.0) and k.min() >= 0
    np.testing.assert_allclose(center_of_mass(k), [6, 6], atol=1e-9)
    # the reference's zeroize_negligible_val: subtract 0.75 x the 41st largest tap, clip, normalise
    t = 0.75 * np.sort(raw.ravel())[-41]
    expect = np.clip(raw - t, 0, None)
    np.testing.assert_allclose(k, centre_kernel(expect / expect.sum()), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="no positive mass"):
        finalize_kernel(-np.ones((13, 13)))
    with pytest.raises(ValueError, match="non-finite"):
        finalize_kernel(np.full((13, 13), np.nan))


def test_constraint_losses():
    k = torch.tensor(gaussian_kernel(1.2, 1.2, 0, 13), dtype=torch.float32)
    assert CentralizedLoss(13)(k).item() == pytest.approx(0.0, abs=1e-9)
    assert CentralizedLoss(13)(torch.roll(k, 2, 0)).item() == pytest.approx(2.0, rel=1e-3)  # (2^2 + 0) / 2
    mask = penalty_mask(13, 30.0)
    assert mask[3:10, 3:10].max() == 0 and mask[0, 0] > 0
    assert BoundariesLoss(13)(k).item() < BoundariesLoss(13)(torch.roll(k, 5, 1)).item()


def test_weight_schedule_follows_the_reference():
    w = ConstraintSchedule()
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
        ConstraintSchedule.decay_learning_rate(it, [opt])
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)


BATCH = [(7, 80, 90), (8, 96, 72), (9, 70, 70)]


@pytest.mark.parametrize("threads", [1, 2])
def test_an_image_gets_the_same_kernel_bitwise_whatever_its_batch(threads):
    """float32, as the product runs: alone, with two others, in another order, first or last."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = KernelGANConfig(**{**TINY.as_dict(), "iterations": 60})
        images = [camera_photo(*a) for a in BATCH]
        alone = [estimate_kernel(img, cfg) for img in images]
        together = estimate_kernels(images, cfg)
        reordered = estimate_kernels(images[::-1][:2], cfg)  # images 2 and 1 only
    finally:
        torch.set_num_threads(old)
    for one, got in zip(alone, together):
        np.testing.assert_array_equal(got.raw, one.raw)
        assert got.losses == one.losses and got.problem == one.problem
    np.testing.assert_array_equal(reordered[0].raw, alone[2].raw)
    np.testing.assert_array_equal(reordered[1].raw, alone[1].raw)
    assert not np.allclose(together[0].raw, together[1].raw)
    # the product's network sizes (other matrix shapes), a few steps
    full = KernelGANConfig(iterations=6, retries=0)
    photos = [camera_photo(s, 100, 110) for s in (1, 2, 3)]
    assert estimate_kernels(photos, full)[2].raw.tobytes() == estimate_kernel(photos[2], full).raw.tobytes()


def test_guarded_terms_have_finite_gradients_where_the_references_are_singular():
    k = torch.tensor(gaussian_kernel(1.2, 1.2, 0, 13), dtype=torch.float32)
    k[0, 0] = 0.0  # an exactly-zero tap: d|k|^0.2/dk is infinite there
    k.requires_grad_(True)
    reference = (k.abs() ** 0.2).mean()
    reference.backward()
    assert torch.isnan(k.grad).any()  # what made an image's losses NaN near step 2500
    k.grad = None
    loss = SparsityLoss()(k)
    assert loss.item() == pytest.approx(reference.item(), rel=0.02)  # taps far below 1e-8 count a little more
    loss.backward()
    assert torch.isfinite(k.grad).all()
    guarded, k.grad = k.grad.clone(), None
    (k.abs() ** 0.2).mean().backward()
    big = k.detach() > 1e-4
    torch.testing.assert_close(guarded[big], k.grad[big], rtol=1e-4, atol=0)
    zero_sum = torch.zeros(13, 13)
    zero_sum[6, 5], zero_sum[6, 7] = 1.0, -1.0  # sums to zero: no centre of mass
    zero_sum.requires_grad_(True)
    CentralizedLoss(13)(zero_sum).backward()
    assert torch.isfinite(zero_sum.grad).all()


def test_a_diverging_image_is_reported_as_such_and_spares_the_others():
    cfg = KernelGANConfig(**{**TINY.as_dict(), "iterations": 20, "retries": 1})
    images = [camera_photo(*a) for a in BATCH]
    broken = images[1].copy()
    broken[40:50, 40:50] = np.nan  # losses turn NaN as soon as a crop touches it
    got = estimate_kernels([images[0], broken, images[2]], cfg)
    assert got[1].kernel is None and got[1].diverged_at is not None
    assert got[1].problem.startswith(f"KernelGAN diverged: its losses became NaN/inf at step {got[1].diverged_at} of 20")
    assert got[1].problem.endswith("(seeds 0, 1)") and got[1].seed == 1  # retried once with the next seed
    alone = estimate_kernel(images[0], cfg)
    np.testing.assert_array_equal(got[0].raw, alone.raw)
    assert got[0].diverged_at is None and got[2].diverged_at is None and np.isfinite(got[2].raw).all()


def test_a_collapsed_kernel_is_named_and_a_blur_is_not():
    from realsr.models.kernelgan import collapse

    blur = gaussian_kernel(1.5, 1.0, 0.2, 13)
    tail = blur - 2e-4 * (blur < blur.max() / 5)  # a real estimate's small negative taps
    assert collapse(blur) is None and collapse(tail / tail.sum()) is None
    assert "sum -0.001" in collapse(-0.001 * blur)  # the sum-to-one term lost: G is close to zero
    ringing = blur - 0.5 * np.roll(blur, 3, 0)
    ringing /= ringing.sum()
    assert "negative" in collapse(ringing)


def test_a_failed_image_trains_again_with_the_next_seed(monkeypatch):
    import realsr.models.kernelgan as kg

    calls = []

    def flaky(images, cfg, *a, **k):  # the second image collapses with seed 0, nothing else fails
        calls.append((len(images), cfg.seed))
        fail = cfg.seed == 0
        return [
            kg.KernelEstimate(
                None if fail and i == 1 else np.eye(13), np.full((13, 13), cfg.seed), {}, 1, None, "collapsed" if fail and i == 1 else None, cfg.seed
            )
            for i in range(len(images))
        ]

    monkeypatch.setattr(kg, "train_kernels", flaky)
    images = [camera_photo(*a) for a in BATCH]
    got = kg.estimate_kernels(images, KernelGANConfig(iterations=5))
    assert calls == [(3, 0), (1, 1)] and all(e.ok for e in got) and [e.seed for e in got] == [0, 1, 0]
    calls.clear()
    monkeypatch.setattr(kg, "train_kernels", lambda images, cfg, *a, **k: [kg.replace(e, kernel=None, problem="collapsed") for e in flaky(images, cfg)])
    got = kg.estimate_kernels(images, KernelGANConfig(iterations=5, retries=2))
    assert calls == [(3, 0), (3, 1), (3, 2)] and got[0].problem == "collapsed (seeds 0, 1, 2)"


def test_seeds_are_averaged_and_a_failed_seed_has_no_say(monkeypatch):
    import realsr.models.kernelgan as kg
    from realsr.models.kernelgan_post import x4_base

    calls = []
    wide, narrow = gaussian_kernel(2.0, 1.6, 0.3, 13), gaussian_kernel(1.0, 0.8, 0.3, 13)

    def runs(images, cfg, *a, **k):  # seed 0: narrow kernels; seed 1000: wide ones, the last image fails
        calls.append((len(images), cfg.seed))
        raw = narrow if cfg.seed == 0 else wide
        fail = lambda i: cfg.seed == 1000 and i == len(images) - 1  # noqa: E731
        return [
            kg.KernelEstimate(None if fail(i) else finalize_kernel(raw), raw, {}, 10, None, "collapsed" if fail(i) else None, cfg.seed)
            for i in range(len(images))
        ]

    monkeypatch.setattr(kg, "train_kernels", runs)
    got = kg.estimate_kernels([camera_photo(0, 96, 96)] * 2, KernelGANConfig(iterations=10, seeds=2, retries=0))
    assert calls == [(2, 0), (2, 1000)]
    assert np.allclose(got[0].kernel, centre_kernel((finalize_kernel(narrow) + finalize_kernel(wide)) / 2)) and got[0].iterations == 20
    assert np.allclose(x4_base(got[0].raw), centre_kernel((x4_base(narrow) + x4_base(wide)) / 2))  # x4 composes the average too
    assert np.allclose(got[1].kernel, finalize_kernel(narrow)) and got[1].iterations == 10  # the failed seed is left out


def test_seeds_agree_by_geometric_median_so_a_stray_seed_does_not_drag_the_kernel():
    import realsr.models.kernelgan as kg
    from realsr.models.kernelgan_post import consensus_estimate, x4_base

    agree, stray = [gaussian_kernel(1.6, 1.2, 0.3, 13), gaussian_kernel(1.65, 1.2, 0.35, 13)], gaussian_kernel(0.7, 2.6, 1.6, 13)
    est = lambda raw, seed: kg.KernelEstimate(finalize_kernel(raw), raw, {}, 10, None, None, seed)  # noqa: E731
    got = consensus_estimate([est(agree[0], 0), est(stray, 1000), est(agree[1], 2000)], 40)
    mean = centre_kernel(np.mean([finalize_kernel(k) for k in (*agree, stray)], 0))
    to_agree = lambda k: np.linalg.norm(k - finalize_kernel(agree[0]))  # noqa: E731
    assert to_agree(got.kernel) < 0.5 * to_agree(mean)
    assert np.linalg.norm(x4_base(got.raw) - x4_base(agree[0])) < 0.15 * np.linalg.norm(x4_base(stray) - x4_base(agree[0]))  # the mean: 0.33
    assert got.iterations == 30 and got.seed == 0
