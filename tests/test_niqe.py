"""NIQE: its estimator on known distributions, Eq. 10 on a pristine model made here, the golden values
of MATLAB and BasicSR with the released pristine model, and that model's way through the weight store.

The algorithm tests need no file. The golden test needs the released `niqe_pris_params.npz`: like
every weight it comes from REALSR_WEIGHTS_DIR, the cache, or the package index (CI reaches it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from realsr.models.niqe import Pristine, aggd, distance, features, niqe
from realsr.storage import weights as W
from tests.conftest import textured
from tests.test_weights import served, user  # noqa: F401  (fixtures: a loopback file server and package index, an empty cache)

SHARED = Path(__file__).resolve().parents[2] / "shared"
WINDOW = (lambda k: k @ k.T)(cv2.getGaussianKernel(7, 7 / 6))  # the shape of the released window


def made_pristine(mu: np.ndarray | None = None) -> Pristine:
    return Pristine(np.zeros(36) if mu is None else mu, np.eye(36), WINDOW)


def test_aggd_recovers_shape_and_spreads_of_known_distributions():
    rng = np.random.default_rng(0)
    gauss = rng.normal(0, 1.5, (1, 200_000))
    alpha, bl, br = aggd(gauss)  # a Gaussian is the GGD of shape 2 and spread sigma * sqrt(2)
    assert alpha[0] == pytest.approx(2.0, abs=0.05) and bl[0] == pytest.approx(1.5 * 2**0.5, rel=0.02) and br[0] == pytest.approx(1.5 * 2**0.5, rel=0.02)
    alpha, bl, br = aggd(rng.laplace(0, 1.0, (1, 200_000)))  # Laplace: shape 1, spread its scale
    assert alpha[0] == pytest.approx(1.0, abs=0.05) and bl[0] == pytest.approx(1.0, rel=0.03)
    halves = np.abs(rng.normal(0, 1, 200_000)) * np.where(rng.random(200_000) < 0.25, -1.0, 3.0)  # AGGD of shape 2: a side's mass is its spread's share
    alpha, bl, br = aggd(halves[None])
    assert alpha[0] == pytest.approx(2.0, abs=0.1) and br[0] / bl[0] == pytest.approx(3.0, rel=0.03)
    alpha, bl, br = aggd(np.ones((1, 100)))  # nothing left of zero: NaN spread, as BasicSR
    assert np.isnan(bl[0]) and alpha[0] == pytest.approx(0.2)


def test_niqe_is_eq10_against_a_pristine_model_made_here():
    img = textured(288, 384, 3).astype(np.float32) / 255
    y = np.round((img.astype(np.float64) @ (np.array([65.481, 128.553, 24.966]) / 255)) * 255 + 16)
    f = features(y, WINDOW)
    assert f.shape == (12, 36) and not np.isnan(f).any()  # 3 x 4 blocks of 96, 18 features at each of 2 scales
    mu = f.mean(0)
    assert niqe(img, made_pristine(mu)) == pytest.approx(0.0, abs=1e-9)  # the image's own mean: distance 0
    d = np.zeros(36)
    d[0] = 0.3
    expected = np.sqrt(d @ np.linalg.pinv((np.eye(36) + np.cov(f, rowvar=False)) / 2) @ d)
    assert niqe(img, made_pristine(mu + d)) == pytest.approx(expected, rel=1e-9)
    assert niqe(img, made_pristine(mu), crop_border=4) > 0  # the crop moves the blocks


def test_images_smaller_than_two_blocks_or_flat_get_a_clear_error():
    p = made_pristine()
    with pytest.raises(ValueError, match=r"at least two 96x96 blocks; the image is 100x100 px"):
        niqe(np.random.default_rng(0).random((100, 100, 3)).astype(np.float32), p)
    with pytest.raises(ValueError, match=r"the image is 184x88 px \(after the border crop\)"):
        niqe(np.random.default_rng(0).random((96, 192, 3)).astype(np.float32), p, crop_border=4)
    assert np.isfinite(niqe(np.random.default_rng(0).random((96, 192, 3)).astype(np.float32), p))  # two blocks: defined
    with pytest.raises(ValueError, match="undefined here: only 0 of 4 blocks"):
        niqe(np.full((192, 192, 3), 0.5, np.float32), p)
    with pytest.raises(ValueError, match="undefined here: only 0 of 2 blocks"):
        distance(np.full((2, 36), np.nan), p)


GOLDEN = [  # (file, rows, cols, crop_border, BasicSR 1.4.2's calculate_niqe, unmodified, on the BGR uint8 image)
    ("set14/baboon.png", slice(None), slice(None), 0, 5.729572592446551),  # MATLAB R2021a: 5.72957338
    ("set5/bird.png", slice(None), slice(None), 0, 4.362078438448211),  # flat sky: in float64 this one is 1.8% off
    ("set5/butterfly.png", slice(None), slice(None), 0, 5.154898254953524),
    ("set5/baby.png", slice(0, 200), slice(0, 256), 0, 4.097438893135317),
    ("set5/baby.png", slice(100, 300), slice(50, 250), 4, 3.5037603781275832),
    ("set5/baby.png", slice(0, 96), slice(0, 192), 0, 6.804688483674952),  # two blocks, the least there can be
]


@pytest.mark.skipif(not (SHARED / "data" / "hr" / "set5").exists(), reason="the Set5/Set14 images (shared data) are not on this machine")
def test_niqe_reproduces_basicsr_and_matlab_with_the_released_pristine_model():
    pristine = Pristine.load(W.require("niqe"))
    for name, rows, cols, crop, ref in GOLDEN:
        bgr = cv2.imread(str(SHARED / "data" / "hr" / name))[rows, cols]
        assert niqe(bgr[..., ::-1].astype(np.float32) / 255, pristine, crop) == pytest.approx(ref, rel=1e-3), name
    assert niqe(cv2.imread(str(SHARED / "data" / "hr" / "set14/baboon.png"))[..., ::-1].astype(np.float32) / 255, pristine) == pytest.approx(
        5.72957338, rel=1e-5
    )


def sdist(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_registry_carried_npz_is_kept_byte_for_byte_and_verified(served, user, monkeypatch, tmp_path):  # noqa: F811
    npz = io.BytesIO()
    np.savez(npz, mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36), gaussian_window=WINDOW)
    data = npz.getvalue()
    archive = sdist({"pkg-1.0/pkg/metrics/p.npz": data, "pkg-1.0/setup.py": b""})
    (served.root / "files").mkdir()
    (served.root / "files" / "pkg-1.0.tar.gz").write_bytes(archive)
    page = served.root / "simple" / "pkg"
    page.mkdir(parents=True)
    (page / "index.html").write_text('<a href="../../files/pkg-1.0.tar.gz">pkg-1.0.tar.gz</a>')
    monkeypatch.setenv("REALSR_PYPI_INDEX", f"{served.url}/simple")
    source = W.Source(
        "p.npz",
        "file",
        hashlib.sha256(data).hexdigest(),
        len(archive),
        dist="pkg==1.0",
        archive="pkg-1.0.tar.gz",
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        members=("pkg/metrics/p.npz",),
    )
    monkeypatch.setitem(W.CATALOG, "p", W.Weight("p", "a pristine model for tests", "MIT", (source,)))
    path = W.require("p", log=lambda m: None)
    assert path == user / "p.npz" and path.read_bytes() == data and not (user / ".downloads" / "pkg-1.0.tar.gz").exists()
    assert np.array_equal(Pristine.load(path).cov, np.eye(36))
    path.unlink()
    W._VERIFIED.clear()
    wrong = W.Weight("p", "a pristine model for tests", "MIT", (dataclasses.replace(source, sha256="0" * 64),))
    monkeypatch.setitem(W.CATALOG, "p", wrong)
    with pytest.raises(W.WeightsError, match=r"pkg/metrics/p.npz has sha256 .*expected 0000"):
        W.require("p", log=lambda m: None)
    assert not path.exists()
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz: not a NIQE pristine model"):
        Pristine.load(tmp_path / "bad.npz")


def test_the_catalog_takes_niqe_from_basicsr_release_and_its_sdist():
    w = W.CATALOG["niqe"]
    assert w.files == ("niqe_pris_params.npz",) and "Apache-2.0" in w.licence
    official, carried = w.sources
    assert official.url.endswith("/v1.4.2/basicsr/metrics/niqe_pris_params.npz") and carried.dist == "basicsr==1.4.2"
    assert official.sha256 == carried.sha256 and carried.convert is None and carried.check == "file"
