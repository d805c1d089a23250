"""The adaptive noise rule: the noise level estimate, clipped areas, gradient removal, draws."""

import numpy as np
import pytest

from realsr.flows.settings import degrade_spec
from realsr.models.degradation import LUMA_WEIGHTS
from realsr.models.noise import (
    assemble_noise,
    brightness_matched,
    luma,
    noise_cells,
    robust_floor,
    select_noise_tiles,
)

LUMA_GAIN = float(np.sqrt((LUMA_WEIGHTS**2).sum()))  # luma std of independent RGB noise of std 1
RULE = degrade_spec().noise  # the adaptive rule at the settings' defaults (declared once, in DegradeSettings)


def tiles_of(img, tile: int = RULE.tile, max_tiles: int = RULE.max_per_image, opaque=None):
    return select_noise_tiles(img, tile, RULE.tolerance, max_tiles, opaque)


def _ramp(h=256, w=512, lo=0.15, hi=0.85):
    return np.tile(np.linspace(lo, hi, w, dtype=np.float32), (h, 1))[..., None].repeat(3, 2)


@pytest.mark.parametrize("sigma", [1.0, 3.0, 8.0])
def test_noise_level_of_known_white_noise(sigma):
    rng = np.random.default_rng(0)
    img = np.clip(_ramp() + rng.normal(0, sigma / 255, (256, 512, 3)).astype(np.float32), 0, 1)
    nlf = tiles_of(img).nlf
    measured = nlf.sigma[np.isfinite(nlf.sigma)]
    assert len(measured) >= 8  # every brightness of the ramp is measured
    np.testing.assert_allclose(measured, sigma * LUMA_GAIN, rtol=0.06)


def test_noise_level_follows_signal_dependent_noise():
    rng = np.random.default_rng(1)
    clean = _ramp(384, 768)
    sd = np.sqrt(1e-3 * clean + 2e-5)  # Poisson-Gaussian: brighter is noisier
    img = np.clip(clean + sd * rng.standard_normal(clean.shape).astype(np.float32), 0, 1)
    nlf = tiles_of(img).nlf
    ok = np.isfinite(nlf.sigma)
    truth = np.sqrt(1e-3 * nlf.centres[ok] / 255 + 2e-5) * 255 * LUMA_GAIN
    np.testing.assert_allclose(nlf.sigma[ok], truth, rtol=0.1)
    assert nlf.sigma[ok][-1] > 1.5 * nlf.sigma[ok][0]


def test_texture_does_not_raise_the_noise_floor():
    rng = np.random.default_rng(2)
    flat = rng.normal(2.0, 0.1, 200)  # blocks holding only noise
    textured = rng.uniform(4, 30, 800)  # many more blocks holding texture too
    assert robust_floor(np.concatenate([flat, textured])) == pytest.approx(2.0, rel=0.05)


def test_clipped_and_near_black_areas_give_no_tiles():
    rng = np.random.default_rng(3)
    img = np.full((256, 384, 3), 0.5, np.float32)
    img[:, 128:256] = 1.0  # blown highlights: the noise there is clipped away
    img[:, 256:] = 0.0  # crushed shadows
    img = np.clip(img + rng.normal(0, 4 / 255, img.shape).astype(np.float32), 0, 1)
    tiles = tiles_of(img, tile=32)
    assert len(tiles.x) > 0
    assert (tiles.x + 32 <= 128).all()  # only the mid-gray third
    opaque = np.ones(img.shape[:2], bool)
    opaque[:, :64] = False  # transparent pixels are not photo either
    assert (tiles_of(img, tile=32, opaque=opaque).x >= 64).all()


def test_gradients_are_removed_and_the_noise_kept():
    rng = np.random.default_rng(4)
    h, w = 256, 256
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = 0.35 + 0.25 * xx / w + 0.15 * (yy / h) ** 2  # a sky's ramp and shading: 100+ levels
    noise = rng.normal(0, 3 / 255, (h, w, 3)).astype(np.float32)
    tiles = tiles_of(np.clip(sky[..., None] + noise, 0, 1), tile=32, max_tiles=1000)
    assert len(tiles.x) >= 40
    for res, y, x in zip(tiles.residual, tiles.y, tiles.x):
        truth = noise[y : y + 32, x : x + 32] * 255
        # what is left is the noise (less its own best quadratic), not the ramp
        assert np.corrcoef(res.ravel(), truth.ravel())[0, 1] > 0.99
        assert abs(res.std() / truth.std() - 1) < 0.05
    # the reference's mean removal keeps the ramp: its noise reads 20 % and more too high
    y, x = tiles.y[0], tiles.x[0]
    patch = (sky[y : y + 32, x : x + 32, None] + noise[y : y + 32, x : x + 32]) * 255
    assert (patch - patch.mean((0, 1))).std() > 1.2 * (noise[y : y + 32, x : x + 32] * 255).std()


def test_a_textured_photo_gives_no_tiles_and_a_flat_one_many():
    rng = np.random.default_rng(5)
    small = rng.uniform(0.1, 0.9, (40, 40, 3)).astype(np.float32)
    import cv2

    busy = cv2.resize(small, (320, 320), interpolation=cv2.INTER_CUBIC).clip(0.05, 0.95)
    busy = busy + rng.normal(0, 2 / 255, busy.shape).astype(np.float32)
    half = busy.copy()
    half[:160] = 0.5 + rng.normal(0, 2 / 255, (160, 320, 3)).astype(np.float32)
    assert len(tiles_of(busy).x) <= 2
    flat = tiles_of(half)
    assert len(flat.x) >= 40 and (flat.y + 32 <= 160 + 16).mean() > 0.95


def test_tiles_per_image_are_capped_across_brightness():
    rng = np.random.default_rng(6)
    img = np.clip(_ramp(512, 512) + rng.normal(0, 2 / 255, (512, 512, 3)).astype(np.float32), 0, 1)
    tiles = tiles_of(img, max_tiles=12)
    assert len(tiles.x) == 12 and np.ptp(tiles.brightness) > 100  # not 12 of one brightness


def test_a_capped_bank_keeps_the_noise_level_of_its_candidates():
    # 1024 flat candidates, 32 kept: the flattest 32 would read the noise ~5 % low
    rng = np.random.default_rng(9)
    sigma = 4.0
    img = np.clip(0.5 + rng.normal(0, sigma / 255, (1024, 1024, 3)).astype(np.float32), 0, 1)
    every, capped = tiles_of(img, max_tiles=100_000), tiles_of(img, max_tiles=32)
    assert len(every.x) > 500 and len(capped.x) == 32
    assert abs(np.median(capped.sigma) / np.median(every.sigma) - 1) < 0.01
    assert abs(np.median(capped.sigma) / (sigma * LUMA_GAIN) - 1) < 0.03


def test_a_capped_bank_leaves_out_the_faint_texture_at_the_top_of_its_candidates():
    # every third tile carries a ripple that adds ~10 % to its variance: within the rule's
    # tolerance, so a candidate, but it gathers at the top of the noise ratios
    rng = np.random.default_rng(10)
    sigma = 4.0
    yy, xx = np.mgrid[0:1024, 0:1024]
    textured = ((yy // 32) * 32 + xx // 32) % 3 == 0
    ripple = np.sqrt(0.2) * sigma / 255 * np.sin(2 * np.pi * (xx + yy) / 6) * textured
    img = np.clip(0.5 + rng.normal(0, sigma / 255, (1024, 1024, 3)) + ripple[..., None], 0, 1).astype(np.float32)
    every, capped = tiles_of(img, max_tiles=100_000), tiles_of(img, max_tiles=64)
    share_every, share_capped = textured[every.y, every.x].mean(), textured[capped.y, capped.x].mean()
    assert share_every > 0.15 and len(capped.x) == 64
    assert share_capped < share_every / 3  # drawing across all the candidates keeps ~22 %


def test_areas_emptied_by_compression_neither_set_the_level_nor_enter_the_bank():
    # half of a flat photo has no noise left (as JPEG leaves a clean camera's flat areas): the
    # floor of the level estimate sat on it and the bank held its empty tiles, i.e. no noise
    rng = np.random.default_rng(11)
    img = np.full((512, 512, 3), 0.5, np.float32)
    img[:, 256:] += rng.normal(0, 2 / 255, (512, 256, 3)).astype(np.float32)
    img = (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)
    tiles = tiles_of(img)
    assert len(tiles.x) > 0 and (tiles.x >= 256).all()
    assert abs(np.median(tiles.sigma) / (2 * LUMA_GAIN) - 1) < 0.05
    assert abs(tiles_of(img).nlf(128.0) / (2 * LUMA_GAIN) - 1) < 0.05


def test_a_brightness_with_only_textured_blocks_gets_no_level_of_its_own_and_no_tiles():
    # three stripes: flat, a fine texture of 10 levels, flat; the texture's brightness has no
    # flat block, so its floor was the texture (7 levels against 1.3) and its tiles passed
    rng = np.random.default_rng(12)
    img = np.empty((480, 512, 3), np.float32)
    img[:160], img[160:320], img[320:] = 0.30, 0.41, 0.52
    img[160:320] += (10 / 255 * np.sin(2 * np.pi * np.arange(512) / 4))[None, :, None]
    img = np.clip(img + rng.normal(0, 2 / 255, img.shape), 0, 1).astype(np.float32)
    assert tiles_of(img).nlf(104.0) == pytest.approx(2 * LUMA_GAIN, rel=0.05)  # its neighbours stand in
    tiles = tiles_of(img)
    assert len(tiles.y) > 0 and not ((tiles.y >= 160) & (tiles.y < 320)).any()


def test_brightness_matched_draws_stay_near_the_wanted_brightness():
    rng = np.random.default_rng(7)
    bank = np.linspace(10, 240, 60)
    picks = brightness_matched(bank, [20.0, 128.0, 250.0] * 50, rng)
    got = bank[picks].reshape(50, 3)
    assert (np.abs(got[:, 0] - 20) <= 8).all() and (np.abs(got[:, 1] - 128) <= 8).all()
    assert (got[:, 2] >= 220).all()  # beyond the bank: its nearest tiles
    assert len(np.unique(picks)) > 6  # a choice, not always the same tile


def test_a_mosaic_of_tiles_covers_a_larger_crop_with_zero_mean_noise():
    rng = np.random.default_rng(8)
    tiles = [rng.normal(5, 3, (16, 16, 3)).astype(np.float32) for _ in range(9)]
    assert len(noise_cells(40, 16)) == 9
    field = assemble_noise(tiles, 40)
    assert field.shape == (40, 40, 3)
    np.testing.assert_allclose(field[:16, :16] * 255, tiles[0] - tiles[0].mean((0, 1)), atol=1e-4)
    assert abs(luma(field).mean()) < 1.0
