"""A learned prior over blur kernels: a normalising flow (FKP, Liang et al., CVPR 2021).

KernelGAN's generator can draw any 13x13 filter, and on real cameras it drifts: every estimate
comes out near-isotropic at about 2 px^2 per axis, whatever the optics (BENCHMARKS.md). FKP's
answer is to let the estimator move only on the kernels a lens can have: an invertible network
maps a standard normal latent z to a kernel, trained on anisotropic Gaussians. An estimator then
optimises z, and every step lands on a plausible kernel (non-negative, compact, sums to 1).

Read top to bottom: the config, the training kernels (what the prior covers), the kernel <->
flow-space transforms, the coupling layer, the flow, its training loop. The flow follows FKP's
RealNVP (affine couplings on alternating checkerboard halves, kernels in logit space with
dequantisation noise) with two changes that make it train in CPU minutes and stay exactly
invertible: a fixed per-tap standardisation measured from the training kernels in place of
FKP's BatchNorm layers (whose inverse depends on batch statistics), and log-scales bounded by a
tanh.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from realsr.models.kernels import bicubic_kernel

PRIOR_VERSION = "1"  # bump when the training kernels, the flow or its transforms change


@dataclass(frozen=True)
class PriorConfig:
    """What the prior covers (x2 kernels on the HR grid, as the bank stores them) and how it trains."""

    size: int = 13  # the bank's x2 kernel size
    sigma_min: float = 0.35  # Gaussian axis widths, px on the HR grid: bicubic-sharp ...
    sigma_max: float = 3.0  # ... to a soft phone lens (the x4 analytic kernel of 3.0 is sigma 6.7)
    tap_noise: float = 0.25  # up to this multiplicative noise on each tap (real optics are not Gaussian)
    jitter: float = 0.25  # the Gaussian's centre up to this far off the middle pixel, px
    bicubic_share: float = 0.05  # this share of the training kernels is the bicubic kernel (>= 0), noised
    blocks: int = 6  # affine coupling layers
    hidden: int = 64  # width of their scale and translation networks
    steps: int = 6000
    batch: int = 256
    lr: float = 1e-3
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


ALPHA = 1e-6  # logit margin: taps map into [ALPHA, 1 - ALPHA] before the logit (FKP's)
# Uniform noise on the normalised taps in training (FKP's dequantisation, there 1/720): the flow
# learns a density, which a kernel's exact zeros do not have. A clean kernel is read at the noise's
# midpoint and a decoded one has it taken off again, so kernel -> z -> kernel is exact; at 1/720
# the floor left 12 % of a sampled kernel's mass spread over its square (second moments +1.7 px^2).
DEQUANTISE = 1 / 2000


# ------------------------------------------------------------------------------------------------
# the kernels the prior is trained on


def training_kernels(cfg: PriorConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) kernels: anisotropic Gaussians of random widths, angle and a small
    off-centring, with multiplicative tap noise; a `bicubic_share` of them the (clipped, noised)
    bicubic kernel. Each sums to 1 and is >= 0."""
    r = cfg.size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    sx, sy = rng.uniform(cfg.sigma_min, cfg.sigma_max, (2, n, 1, 1))
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    dy, dx = rng.uniform(-cfg.jitter, cfg.jitter, (2, n, 1, 1))
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * (x - dx) + s * (y - dy), -s * (x - dx) + c * (y - dy)
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    bic = np.clip(bicubic_kernel(2, cfg.size), 0, None)
    k[rng.uniform(size=n) < cfg.bicubic_share] = bic
    amount = cfg.tap_noise * rng.uniform(size=(n, 1, 1))  # each kernel its own noise level, 0 .. tap_noise
    k = k * rng.uniform(1 - amount, 1 + amount, k.shape)
    return k / k.sum((1, 2), keepdims=True)


def normalisation(cfg: PriorConfig) -> float:
    """The tap scale that maps every training kernel into [0, 1): the sharpest one's peak + 0.01 (FKP's)."""
    r = cfg.size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    sharp = np.exp(-0.5 * (x**2 + y**2) / cfg.sigma_min**2)
    peak = max(float((sharp / sharp.sum()).max()), float(np.clip(bicubic_kernel(2, cfg.size), 0, None).max()))
    return round(peak * (1 + cfg.tap_noise), 5) + 0.01


# ------------------------------------------------------------------------------------------------
# the flow


class AffineCoupling(nn.Module):
    """RealNVP's coupling: the taps where `mask` is 1 pass through and set a scale and a shift
    for the others. Exactly invertible whatever the networks compute.

    Args:
        dim: number of taps.
        hidden: width of the scale and translation networks.
        mask: (dim,) 0/1, the taps that condition.
    """

    def __init__(self, dim: int, hidden: int, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.s = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.t = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        for net in (self.s, self.t):  # start as the identity: a stable first step
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def _scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        free = 1 - self.mask
        return 2.0 * torch.tanh(self.s(cond) / 2.0) * free, self.t(cond) * free  # |log s| < 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kernel side -> latent side; returns (u, log|det du/dx|) per row."""
        log_s, t = self._scale_shift(x * self.mask)
        return x * self.mask + (x - t) * torch.exp(-log_s) * (1 - self.mask), -log_s.sum(1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        log_s, t = self._scale_shift(u * self.mask)
        return u * self.mask + (u * torch.exp(log_s) + t) * (1 - self.mask)


class KernelPrior(nn.Module):
    """The flow: kernel (B, K, K) <-> latent z (B, K*K) ~ N(0, I).

    kernel -> flow space: taps / `norm`, logit, standardised per tap (`mean`, `std`, fixed from
    the training kernels); then the couplings. `decode` runs it backwards and renormalises the
    kernel to sum 1 (the flow's taps sum to 1 only approximately).

    Args:
        cfg: the prior's config (size, blocks, hidden width).
    """

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.size, dim = cfg.size, cfg.size * cfg.size
        self.register_buffer("norm", torch.tensor(normalisation(cfg), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        parity = torch.arange(dim) % 2  # 13 is odd: index parity is a checkerboard
        self.layers = nn.ModuleList(AffineCoupling(dim, cfg.hidden, (parity if i % 2 == 0 else 1 - parity).float()) for i in range(cfg.blocks))

    @property
    def dim(self) -> int:
        return self.size * self.size

    def to_flow_space(self, kernels: torch.Tensor, dequantise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, K) kernels -> (B, K*K) standardised logits, and log|det| of that map per row.
        `dequantise`: the training noise on the normalised taps; None reads the kernel at its midpoint."""
        y = kernels.flatten(1).clamp(min=0) / self.norm.to(kernels.dtype)
        y = y + (DEQUANTISE / 2 if dequantise is None else dequantise)
        p = ALPHA + (1 - 2 * ALPHA) * y
        x = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)).sum(1) - torch.log(self.norm).to(kernels.dtype) * self.dim
        return (x - self.mean) / self.std, logdet - torch.log(self.std).sum()

    def encode(self, kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, K) -> latent z (B, K*K) and log|det dz/dk| per row."""
        x, logdet = self.to_flow_space(kernels)
        return self._forward(x, logdet)

    def _forward(self, x: torch.Tensor, logdet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, kernels: torch.Tensor, dequantise: torch.Tensor | None = None) -> torch.Tensor:
        """log density of each kernel's taps (nats; a change of variables from N(0, I))."""
        x, logdet = self.to_flow_space(kernels, dequantise)
        z, logdet = self._forward(x, logdet)
        return -0.5 * (z * z).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent (B, K*K) -> kernels (B, K, K), >= 0 and summing to 1; differentiable in z."""
        x = z
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        x = x * self.std + self.mean
        y = ((torch.sigmoid(x) - ALPHA) / (1 - 2 * ALPHA) - DEQUANTISE / 2).clamp(min=0)
        k = y.view(-1, self.size, self.size)
        return k / k.sum((1, 2), keepdim=True)


# ------------------------------------------------------------------------------------------------
# training


def fit_standardisation(prior: KernelPrior, cfg: PriorConfig, rng: np.random.Generator, n: int = 20000) -> None:
    """Set the per-tap mean and std of the flow-space logits from fresh training kernels."""
    k = torch.from_numpy(training_kernels(cfg, n, rng)).float()
    deq = torch.from_numpy(rng.uniform(0, DEQUANTISE, (n, prior.dim))).float()
    prior.mean.zero_()
    prior.std.fill_(1.0)
    x, _ = prior.to_flow_space(k, deq)
    prior.mean.copy_(x.mean(0))
    prior.std.copy_(x.std(0).clamp(min=1e-3))


def train_prior(cfg: PriorConfig = PriorConfig(), progress=None) -> tuple[KernelPrior, dict]:
    """Train the flow by maximum likelihood on fresh training kernels every step, from `cfg.seed`.

    Deterministic on one machine and thread count. `progress(step, nll)` is called every 500
    steps. Returns the prior (eval mode, on the CPU) and a record of the training: the final
    negative log-likelihood per kernel on a held-out draw, and the config.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    prior = KernelPrior(cfg)
    with torch.no_grad():
        fit_standardisation(prior, cfg, rng)
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 100)
    for step in range(cfg.steps):
        k = torch.from_numpy(training_kernels(cfg, cfg.batch, rng)).float()
        deq = torch.from_numpy(rng.uniform(0, DEQUANTISE, (cfg.batch, prior.dim))).float()
        loss = -prior.log_prob(k, deq).mean() / prior.dim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 10.0)
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 500 == 0:
            progress(step + 1, round(loss.item(), 4))
    prior.eval()
    held = np.random.default_rng(cfg.seed + 1)
    with torch.no_grad():
        k = torch.from_numpy(training_kernels(cfg, 2000, held)).float()
        deq = torch.from_numpy(held.uniform(0, DEQUANTISE, (2000, prior.dim))).float()
        nll = float(-prior.log_prob(k, deq).mean() / prior.dim)
    return prior, {"version": PRIOR_VERSION, "config": cfg.as_dict(), "held_out_nll_per_tap": round(nll, 4)}
