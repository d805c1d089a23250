import numpy as np
import pytest

from realsr.models.degradation import (
    clean_up,
    crop_to_multiple,
    degrade,
    gray255,
    inject_noise,
    noise_crop,
    patch_grid,
    select_noise_patches,
)
from realsr.models.kernels import bicubic_kernel, cubic
from realsr.models.synthetic import camera_photo
from tests.conftest import flat_noisy, textured


def matlab_imresize_reference(img: np.ndarray, factor: int) -> np.ndarray:
    """MATLAB's imresize(img, 1/factor, 'bicubic') written out directly (slow, per output pixel)."""

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        n = x.shape[axis]
        out_n = n // factor
        width = 4.0 * factor
        rows = []
        for i in range(1, out_n + 1):
            u = i * factor + 0.5 * (1 - factor)  # 1-based input coordinate of output pixel i
            left = int(np.floor(u - width / 2))
            idx = np.arange(left, left + int(np.ceil(width)) + 2)
            w = cubic((u - idx) / factor) / factor
            w /= w.sum()
            j = idx - 1  # to 0-based, then symmetric padding
            j = np.where(j < 0, -j - 1, j)
            j = np.where(j >= n, 2 * n - j - 1, j)
            rows.append(np.tensordot(w, np.take(x, j, axis=axis), axes=([0], [axis])))
        return np.moveaxis(np.stack(rows), 0, axis)

    return along(along(img.astype(np.float64), 0), 1)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_clean_up_is_matlab_bicubic(factor):
    img = camera_photo(1, 50, 61)
    ours = clean_up(img, factor)
    ref = matlab_imresize_reference(img, factor)
    assert ours.shape == ref.shape == (50 // factor, 61 // factor, 3)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_clean_up_sizes_and_crop():
    img = np.zeros((1001, 750, 3), np.float32)
    hr = crop_to_multiple(clean_up(img, 2), 4)
    assert hr.shape == (500, 372, 3)
    assert clean_up(img, 1).shape == img.shape
    with pytest.raises(ValueError, match="smaller than the clean-up factor"):
        clean_up(np.zeros((1, 5, 3), np.float32), 2)


def test_degrade_with_a_delta_on_an_odd_scale_is_subsampling():
    img = camera_photo(2, 63, 48)
    k = np.zeros((13, 13))
    k[6, 6] = 1
    np.testing.assert_allclose(degrade(img, k, 3), img[1::3, 1::3], atol=1e-6)


@pytest.mark.parametrize("scale,mean_tol", [(2, 0.3), (4, 0.1)])
def test_degrade_with_the_bicubic_kernel_matches_clean_up(scale, mean_tol):
    hr = crop_to_multiple(camera_photo(5, 160, 200), scale)
    diff = np.abs(degrade(hr, bicubic_kernel(scale), scale) - clean_up(hr, scale)) * 255
    assert diff.mean() < mean_tol and diff.max() < 3


def test_degrade_refuses_sizes_off_the_scale():
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(np.zeros((10, 12, 3), np.float32), bicubic_kernel(4), 4)


def test_gray_is_the_reference_luma():
    # PIL's convert('L') gives 76, 150, 29, 128, 87 for these 8-bit pixels
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [100, 80, 90]]], np.float32)
    np.testing.assert_array_equal(gray255(px / 255), [[76, 150, 29, 128, 87]])


def test_patch_grid_includes_the_last_whole_patch():
    np.testing.assert_array_equal(patch_grid(512, 256, 256), [0, 256])  # the reference loop dropped 256
    np.testing.assert_array_equal(patch_grid(255, 256, 256), [])
    np.testing.assert_array_equal(patch_grid(100, 32, 30), [0, 30, 60])


def _mosaic() -> np.ndarray:
    """2x3 grid of 32 px tiles: flat noisy (sigma 2), textured, dark flat, bright flat, textured, flat noisy (sigma 10)."""
    tiles = [
        flat_noisy(32, 32, 120, 2.0, 0),
        textured(32, 32, 1),
        flat_noisy(32, 32, 20, 2.0, 2),
        flat_noisy(32, 32, 200, 1.0, 3),
        textured(32, 32, 4),
        flat_noisy(32, 32, 120, 10.0, 5),  # luma var = 100 * 0.447 > 20
    ]
    rows = [np.concatenate(tiles[i : i + 3], 1) for i in (0, 3)]
    return np.concatenate(rows, 0).astype(np.float32) / 255


def test_noise_selection_keeps_flat_patches_only():
    sel, rejected = select_noise_patches(_mosaic(), patch=32, stride=32, max_var=20, min_mean=0)
    assert sorted(zip(sel["y"].tolist(), sel["x"].tolist())) == [(0, 0), (0, 64), (32, 0)]
    assert rejected == 3
    # variance figures are those of np.var on the rounded luma patch
    g = gray255(_mosaic()).astype(np.float64)
    np.testing.assert_allclose(sorted(sel["var"]), sorted([g[0:32, 0:32].var(), g[0:32, 64:96].var(), g[32:64, 0:32].var()]), rtol=1e-9)


def test_noise_selection_min_mean_drops_dark_patches():
    sel, _ = select_noise_patches(_mosaic(), patch=32, stride=32, max_var=20, min_mean=50)
    assert sorted(zip(sel["y"].tolist(), sel["x"].tolist())) == [(0, 0), (32, 0)]


def test_noise_selection_skips_transparent_pixels():
    opaque = np.ones((64, 96), bool)
    opaque[5, 5] = False
    sel, _ = select_noise_patches(_mosaic(), patch=32, stride=32, max_var=20, min_mean=0, opaque=opaque)
    assert (0, 0) not in set(zip(sel["y"].tolist(), sel["x"].tolist()))


def test_noise_crop_is_zero_mean_and_keeps_the_noise():
    patch = flat_noisy(64, 64, 100, 3.0, 7)
    n = noise_crop(patch, (32, 32), (8, 16))
    assert n.shape == (32, 32, 3) and n.dtype == np.float32
    np.testing.assert_allclose(n.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(n.std(axis=(0, 1)) * 255, patch[8:40, 16:48].astype(float).std(axis=(0, 1)), rtol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        noise_crop(patch, (32, 32), (40, 0))


def test_injection_statistics_and_clipping():
    rng = np.random.default_rng(0)
    lr = np.full((64, 64, 3), 0.5, np.float32)
    patch = flat_noisy(64, 64, 90, 4.0, 1)
    out = inject_noise(lr, noise_crop(patch, (64, 64), (0, 0)))
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.5, atol=1e-5)  # mean removed: brightness unchanged
    assert out.std() * 255 == pytest.approx(4.0, rel=0.1)
    dark = inject_noise(np.zeros((8, 8, 3), np.float32), rng.normal(0, 0.1, (8, 8, 3)).astype(np.float32))
    assert dark.min() >= 0 and dark.max() <= 1
