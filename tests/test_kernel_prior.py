"""The learned kernel prior: its flow, its training, the shipped file and its verification."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from realsr.flows.cli import main
from realsr.models.kernel_prior import DEQUANTISE, PriorConfig, train_prior, training_kernels
from realsr.models.kernels import bicubic_kernel, center_of_mass
from realsr.models.synthetic import gaussian_kernel
from realsr.storage import kernel_prior_file
from realsr.storage.kernel_prior_file import BUILTIN, PriorFileError

TINY = PriorConfig(blocks=2, hidden=16, steps=60, batch=64)


@pytest.fixture(scope="module")
def shipped():
    prior, record = kernel_prior_file.load("builtin")
    return prior, record


def test_training_kernels_are_kernels_and_cover_the_range():
    k = training_kernels(PriorConfig(), 500, np.random.default_rng(0))
    assert k.shape == (500, 13, 13) and (k >= 0).all()
    np.testing.assert_allclose(k.sum((1, 2)), 1, atol=1e-12)
    var = np.array([((kk * (np.arange(13) - 6) ** 2).sum(0)).sum() for kk in k])  # horizontal second moment
    assert var.min() < 0.5 and var.max() > 5  # from sharper than bicubic to a soft lens


def test_training_is_reproducible_from_the_seed_and_learns():
    a, ra = train_prior(TINY)
    b, _ = train_prior(TINY)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    untrained, _ = train_prior(dataclasses.replace(TINY, steps=0))
    held = torch.from_numpy(training_kernels(TINY, 256, np.random.default_rng(5))).float()
    with torch.no_grad():
        assert a.log_prob(held).mean() > untrained.log_prob(held).mean() + 10  # nats per kernel
    assert ra["held_out_nll_per_tap"] < 0


def test_the_shipped_prior_gives_its_training_kernels_high_density(shipped):
    prior, record = shipped
    cfg = PriorConfig(**record["config"])
    rng = np.random.default_rng(123)
    k = torch.from_numpy(training_kernels(cfg, 400, rng)).float()
    deq = torch.from_numpy(rng.uniform(0, DEQUANTISE, (400, 169))).float()
    with torch.no_grad():
        trained_on = prior.log_prob(k, deq)
        assert -trained_on.mean() / 169 == pytest.approx(record["held_out_nll_per_tap"], abs=0.05)
        # kernels no lens of the prior makes: a double image, a ring (defocus), a box, white noise
        y, x = np.mgrid[-6:7, -6:7]
        double, ring, box = np.zeros((13, 13)), (np.abs(np.hypot(y, x) - 4) < 0.7) * 1.0, ((np.abs(y) <= 3) & (np.abs(x) <= 3)) * 1.0
        double[6, 3] = double[6, 9] = 0.5
        noise = np.random.default_rng(0).uniform(0, 1, (13, 13))
        others = prior.log_prob(torch.tensor(np.stack([k / k.sum() for k in (double, ring, box, noise)])).float())
        clean = prior.log_prob(k)  # read as every kernel is outside training: at the noise's midpoint
    assert others.max() < clean.quantile(0.02)


def test_latent_to_kernel_to_latent_round_trip(shipped):
    prior, _ = shipped
    kernels = torch.tensor(
        np.stack([gaussian_kernel(1.1, 0.7, np.pi / 8), gaussian_kernel(2.0, 1.0, -np.pi / 4), np.clip(bicubic_kernel(2, 13), 0, None)])
    ).float()
    kernels = kernels / kernels.sum((1, 2), keepdim=True)
    with torch.no_grad():
        z, _ = prior.encode(kernels)
        back = prior.decode(z)
        z2, _ = prior.encode(back)
    torch.testing.assert_close(back, kernels, atol=1e-6, rtol=0)
    torch.testing.assert_close(z2, z, atol=1e-3, rtol=1e-4)


def test_a_kernel_from_the_prior_sums_to_one_is_centred_and_has_the_banks_shape(shipped):
    prior, _ = shipped
    with torch.no_grad():
        k = prior.decode(torch.randn(64, prior.dim, generator=torch.Generator().manual_seed(0))).double().numpy()
    assert k.shape == (64, 13, 13) and (k >= 0).all()
    np.testing.assert_allclose(k.sum((1, 2)), 1, atol=1e-6)
    offsets = [np.linalg.norm(center_of_mass(kk) - 6) for kk in k]
    assert np.median(offsets) < 0.3 and max(offsets) < 1.0  # trained on kernels up to 0.25 px off


def test_the_shipped_file_is_verified_and_a_damaged_one_refused(tmp_path):
    assert kernel_prior_file.verify("builtin") == BUILTIN
    mine = tmp_path / "mine.pt"
    shutil.copy(BUILTIN, mine)
    with pytest.raises(PriorFileError, match="mine.pt: no mine.pt.sha256 beside it"):
        kernel_prior_file.verify(str(mine))
    (tmp_path / "mine.pt.sha256").write_text(kernel_prior_file.sha256_of(BUILTIN) + "  mine.pt\n")
    kernel_prior_file.load(str(mine))  # a user's copy with its digest loads
    mine.write_bytes(BUILTIN.read_bytes()[:100_000])  # truncated
    with pytest.raises(PriorFileError, match="mine.pt: kernel prior file damaged or replaced"):
        kernel_prior_file.load(str(mine))


def test_degrade_refuses_a_bad_prior_before_any_work(tmp_path, capsys, photo_dir):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(BUILTIN.read_bytes()[:-10])
    (tmp_path / "bad.pt.sha256").write_text(kernel_prior_file.sha256_of(BUILTIN) + "  bad.pt\n")
    out = tmp_path / "run"
    code = main(["degrade", "--source", str(photo_dir), "--out", str(out), "--kernels", "kernelgan-fkp", "--kernel-prior", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert any("bad.pt: kernel prior file damaged or replaced" in line for line in err)
    assert not out.exists() or not any(out.iterdir())


def test_train_prior_command_writes_a_verified_file_and_keeps_an_existing_one(tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["kernels", "train-prior", "--out", str(out), "--steps", "3"]) == 0
    assert (tmp_path / "p.pt.sha256").read_text().split()[0] == kernel_prior_file.sha256_of(out)
    assert main(["kernels", "check-prior", str(out)]) == 0
    assert "covers 13x13 x2 kernels" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["kernels", "train-prior", "--out", str(out), "--steps", "3"]) == 2
    assert "p.pt: exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before


def _shapes(seed: int, n: int = 256) -> np.ndarray:
    """A sharp synthetic scene: flat discs and boxes (edges at every scale, as cross-scale recurrence assumes)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((n, n, 3), 0.5, np.float32)
    for _ in range(60):
        colour, (x, y), r = tuple(float(v) for v in rng.uniform(0, 1, 3)), rng.integers(0, n, 2), int(rng.integers(4, 40))
        if rng.uniform() < 0.5:
            cv2.circle(img, (int(x), int(y)), r, colour, -1)
        else:
            cv2.rectangle(img, (int(x), int(y)), (int(x + r * rng.uniform(0.5, 2)), int(y + r)), colour, -1)
    return img


def test_kernelgan_fkp_recovers_a_known_blur(shipped):
    """A photo made with a sharp lens (sigma 0.6 px): the estimate leaves its start (sigma 1.2) for
    the truth, and ends nearer it than the start and the bicubic kernel are."""
    from realsr.models.degradation import degrade
    from realsr.models.kernelgan import KernelGANConfig, estimate_kernels

    prior, _ = shipped
    truth = gaussian_kernel(0.6, 0.6, 0.0)
    photo = degrade(_shapes(0), truth, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        est = estimate_kernels([photo], KernelGANConfig(iterations=400, latent_lr=3e-3, retries=0), prior=prior)[0]
    finally:
        torch.set_num_threads(threads)

    def tv(k):
        return 0.5 * np.abs(k - truth).sum()

    start = gaussian_kernel(1.2, 1.2, 0.0)
    assert est.ok
    assert tv(est.kernel) < 0.75 * tv(start) and tv(est.kernel) < tv(bicubic_kernel(2, 13))


def test_kernelgan_fkp_is_batch_independent_and_its_camera_form_shares_one_kernel(shipped):
    from realsr.models.kernelgan import KernelGANConfig, estimate_kernels
    from realsr.models.synthetic import camera_photo

    prior, _ = shipped
    cfg = KernelGANConfig(crop=32, d_channels=8, iterations=20, retries=0)
    photos = [camera_photo(1, 96, 96), camera_photo(2, 96, 112)]
    together = estimate_kernels(photos, cfg, prior=prior)
    alone = estimate_kernels(photos[1:], cfg, prior=prior)
    np.testing.assert_array_equal(together[1].raw, alone[0].raw)  # a photo's kernel does not depend on the others
    assert not np.allclose(together[0].raw, together[1].raw)
    shared = estimate_kernels(photos, dataclasses.replace(cfg, camera=True), prior=prior)
    np.testing.assert_array_equal(shared[0].raw, shared[1].raw)
    assert 0.5 * np.abs(shared[0].raw - together[0].raw).sum() > 1e-4  # trained on both photos, not on the first


def test_a_deployment_run_with_a_bad_prior_is_refused_in_its_first_second(tmp_path, photo_dir, prefect_server):
    """What `prefect deployment run degrade-flow/...` runs: the flow checks the prior after its settings."""
    from realsr.flows.degrade import degrade_flow
    from realsr.flows.settings import DegradeSettings

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a prior")
    (tmp_path / "bad.pt.sha256").write_text("0" * 64 + "  bad.pt\n")
    settings = DegradeSettings(source=photo_dir, out=tmp_path / "run", kernels="kernelgan-fkp", kernel_prior=str(bad))
    with pytest.raises(PriorFileError, match="bad.pt: kernel prior file damaged or replaced"):
        degrade_flow(settings)
    assert not (tmp_path / "run").exists()
