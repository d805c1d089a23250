import numpy as np
import pytest

from realsr.models.degradation import crop_to_multiple, degrade
from realsr.models.kernels import (
    KERNEL_SIZE,
    aligned_kernel,
    analytic_x4,
    bicubic_kernel,
    center_of_mass,
    centre_kernel,
    check_kernel,
    consensus_kernel,
    pad_to,
)
from realsr.models.synthetic import camera_photo, gaussian_kernel


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_kernel_follows_the_convention(scale):
    k = bicubic_kernel(scale)
    assert k.shape == (KERNEL_SIZE[scale],) * 2
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(center_of_mass(k), [k.shape[0] // 2] * 2, atol=1e-12)
    np.testing.assert_allclose(k, k.T)  # separable and symmetric
    assert check_kernel(k, scale).valid


def test_bicubic_x2_taps_are_matlab_cubic():
    # cubic(d/2) at d = 0, 1, 2, 3 (Keys a = -0.5), normalised over the 7 taps
    w = np.array([1.0, 0.5625, 0.0, -0.0625])
    w = np.concatenate([w[:0:-1], w])
    w /= w.sum()
    np.testing.assert_allclose(bicubic_kernel(2, 7), np.outer(w, w), atol=1e-12)


def test_centre_kernel_moves_mass_to_the_middle():
    k = np.zeros((13, 13))
    k[2:11, 2:11] = gaussian_kernel(1.5, 0.9, 0.4, 9)
    off = np.roll(np.roll(k, 2, 0), -1, 1) * 0.7  # off-centre and not normalised
    c = centre_kernel(off)
    assert c.shape == (13, 13)
    assert c.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(center_of_mass(c), [6, 6], atol=1e-9)
    np.testing.assert_allclose(c, k / k.sum(), atol=1e-9)


def test_centre_kernel_subpixel_shift():
    k = gaussian_kernel(1.2, 1.2, 0.0, 13)
    rows, cols = np.indices(k.shape)
    shifted = np.exp(-0.5 * (((rows - 6.3) / 1.2) ** 2 + ((cols - 5.6) / 1.2) ** 2))
    c = centre_kernel(shifted)
    np.testing.assert_allclose(center_of_mass(c), [6, 6], atol=1e-5)  # tails wrap at the border
    assert check_kernel(c, 2).valid


def test_analytic_x4_of_a_delta_is_a_delta():
    k2 = np.zeros((13, 13))
    k2[6, 6] = 1
    k4 = analytic_x4(k2)
    assert k4.shape == (25, 25)
    assert k4[12, 12] == pytest.approx(1.0)


def test_analytic_x4_of_a_gaussian_adds_variances():
    # a Gaussian of std s at x2, applied twice (second time on the x2 grid), is std sqrt(s^2 + (2s)^2)
    s = 1.1
    k4 = analytic_x4(gaussian_kernel(s, s, 0.0, 13))
    r = np.arange(25) - 12
    var = (k4.sum(1) * r**2).sum()
    assert var == pytest.approx(s**2 + (2 * s) ** 2, rel=1e-3)
    np.testing.assert_allclose(center_of_mass(k4), [12, 12], atol=1e-9)


def test_analytic_x4_equals_degrading_twice():
    hr = crop_to_multiple(camera_photo(3, 256, 256), 4)
    k2 = gaussian_kernel(1.4, 0.8, 0.6, 13)
    twice = degrade(degrade(hr, k2, 2), k2, 2)
    once = degrade(hr, analytic_x4(k2), 4)
    inner = np.abs(twice - once)[6:-6, 6:-6]
    assert inner.mean() < 0.5 / 255
    assert inner.max() < 4 / 255


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_aligned_kernel_keeps_mass_and_moves_half_a_pixel_for_even_scales(scale):
    k = gaussian_kernel(1.3, 1.0, 0.2, 13)
    a, anchor = aligned_kernel(k, scale)
    assert a.sum() == pytest.approx(1.0)
    expected = anchor + (0.5 if scale % 2 == 0 else 0.0)
    np.testing.assert_allclose(center_of_mass(a), [expected, expected], atol=1e-9)


def test_check_kernel_names_each_failure():
    k = bicubic_kernel(2)
    assert "sum" in check_kernel(k * 1.1, 2).reason
    off = np.zeros((13, 13))
    off[3, 9] = 1.0
    bad = check_kernel(off, 2)
    assert not bad.valid and "centre of mass" in bad.reason
    ring = np.zeros((13, 13))
    ring[0, 6] = ring[12, 6] = 0.5
    r = check_kernel(ring, 2)
    assert "border" in r.reason and not r.valid
    assert not check_kernel(np.ones((12, 12)) / 144, 2).valid
    assert check_kernel(pad_to(bicubic_kernel(4, 15), 25), 4).bicubic_distance == pytest.approx(0.0, abs=1e-12)


def test_consensus_kernel_follows_the_majority_not_the_outliers():
    rng = np.random.default_rng(0)
    true = gaussian_kernel(1.8, 1.1, 0.4, 13)
    good = [centre_kernel(np.clip(true * rng.uniform(0.7, 1.3, true.shape), 0, None)) for _ in range(7)]
    bad = [gaussian_kernel(0.5, 0.5, 0, 13), gaussian_kernel(4, 3.5, 1, 13), np.roll(gaussian_kernel(0.6, 3, 0.2, 13), 1, 0)]
    k = consensus_kernel(good + bad)
    assert k.shape == (13, 13) and k.sum() == pytest.approx(1.0) and k.min() >= 0
    np.testing.assert_allclose(center_of_mass(k), [6, 6], atol=1e-3)
    mean = centre_kernel(np.mean(good + bad, 0))
    assert np.linalg.norm(k - true) < 0.6 * np.linalg.norm(mean - true)
    assert np.linalg.norm(k - true) < np.mean([np.linalg.norm(g - true) for g in good])
