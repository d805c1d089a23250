"""KernelGAN's loss terms and weight schedule, one small module each as the reference's loss.py.

Every term gives one value per image: kernels (..., K, K), images (B, C, H, W). Two terms are
guarded where the reference's formulas have a singular gradient (each found by a NaN in
training): the sparsity term's |k|^0.2 at an exactly-zero tap and the centre of mass of a kernel
whose sum passes through zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from realsr.models.kernelgan_batched import strided_correlation
from realsr.models.kernels import bicubic_kernel


class GANLoss(nn.Module):
    """L1 distance of D's score map to all-real or all-fake labels."""

    def forward(self, scores: torch.Tensor, real: bool) -> torch.Tensor:
        return (scores - (1.0 if real else 0.0)).abs().flatten(1).mean(1)


class DownScaleLoss(nn.Module):
    """G's output should stay close to a bicubic downscale of its input (decays in training).

    The bicubic x2 kernel is centred on a pixel (7 taps), so that it agrees with the centre the
    CentralizedLoss asks for (the reference uses 8 taps and a centre half a pixel off: the same
    blur on the other sampling phase).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("bicubic", torch.tensor(bicubic_kernel(2, 7), dtype=torch.get_default_dtype()))

    def forward(self, g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        k = self.bicubic.expand(g_input.shape[0], -1, -1)
        down = strided_correlation(F.pad(g_input, (3, 3, 3, 3)), k, 2)
        return ((g_output - shave_to(down, g_output)) ** 2).flatten(1).mean(1)


class SumOfWeightsLoss(nn.Module):
    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (1.0 - k.sum((-2, -1))).abs()


class BoundariesLoss(nn.Module):
    """Penalises kernel mass away from the centre with the reference's Gaussian-shaped mask."""

    def __init__(self, k_size: int):
        super().__init__()
        self.register_buffer("mask", torch.tensor(penalty_mask(k_size, 30.0), dtype=torch.get_default_dtype()))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (k * self.mask).abs().mean((-2, -1))


class CentralizedLoss(nn.Module):
    """Squared distance of the kernel's centre of mass to the middle pixel.

    The sum in the denominator is kept at least `MIN_SUM` in magnitude (sign kept): a kernel
    whose sum crosses zero would otherwise send an infinite gradient into G.
    """

    MIN_SUM = 1e-3

    def __init__(self, k_size: int):
        super().__init__()
        self.register_buffer("indices", torch.arange(k_size, dtype=torch.get_default_dtype()))
        self.center = float(k_size // 2)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        total = k.sum((-2, -1))
        total = torch.where(total.abs() < self.MIN_SUM, torch.full_like(total, self.MIN_SUM).copysign(total), total)
        r = (k.sum(-1) * self.indices).sum(-1) / total
        c = (k.sum(-2) * self.indices).sum(-1) / total
        return ((r - self.center) ** 2 + (c - self.center) ** 2) / 2


class SparsityLoss(nn.Module):
    """mean |k|^0.2, as (k^2 + eps^2)^0.1: the same value to 1e-5 of a tap's size, and a finite
    gradient at k = 0, where the reference's |k|^0.2 has an infinite one (0 * inf = NaN in
    autograd: one exactly-zero tap turns every weight of that image's G into NaN)."""

    EPS = 1e-8

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (k * k + self.EPS**2).pow(0.1).mean((-2, -1))


@dataclass
class ConstraintSchedule:
    """The reference's weight schedule (learner.py), as named constants and one update rule."""

    bicubic: float = 5.0  # G's output near the bicubic downscale: strong at first, decayed once close
    sum2one: float = 0.5  # the kernel sums to one
    boundaries: float = 0.5  # no mass at the kernel's border
    centralized: float = 0.0  # centre of mass in the middle: switched on with `sparse` late
    sparse: float = 0.0  # few large taps

    UPDATE_EVERY = 200
    BICUBIC_LOSS_TO_START = 0.4
    BICUBIC_DECAY = 100.0
    BICUBIC_MIN = 5e-6
    LR_EVERY = 750
    LR_DECAY = 10.0
    SPARSE_END = 5.0
    CENTRALIZED_END = 1.0

    _below: int = 0
    _similar: bool = False
    _constraints_on: bool = False

    @classmethod
    def decay_learning_rate(cls, iteration: int, optimizers) -> None:
        """Divide every learning rate by LR_DECAY each LR_EVERY steps (shared by all images)."""
        if iteration > 0 and iteration % cls.LR_EVERY == 0:
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] /= cls.LR_DECAY

    def needs_loss(self) -> bool:
        """Whether `update` reads the bicubic loss (only until G is similar to bicubic)."""
        return not self._similar

    def update(self, iteration: int, loss_bicubic: float | None) -> None:
        if iteration == 0:
            return
        if not self._similar:  # wait until G is close to bicubic three times in a row
            self._below = self._below + 1 if loss_bicubic < self.BICUBIC_LOSS_TO_START else 0
            self._similar = self._below > 2
        elif iteration % self.UPDATE_EVERY == 0 and self.bicubic > self.BICUBIC_MIN:
            self.bicubic = max(self.bicubic / self.BICUBIC_DECAY, self.BICUBIC_MIN)
            if not self._constraints_on and self.bicubic < 5e-3:
                self.centralized, self.sparse = self.CENTRALIZED_END, self.SPARSE_END
                self._constraints_on = True

    def as_row(self) -> list[float]:
        return [self.bicubic, self.sum2one, self.boundaries, self.centralized, self.sparse]


def shave_to(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Centre-crop `a` to `b`'s spatial size."""
    dh, dw = (a.shape[-2] - b.shape[-2]) // 2, (a.shape[-1] - b.shape[-1]) // 2
    return a[..., dh : dh + b.shape[-2], dw : dw + b.shape[-1]]


def penalty_mask(k_size: int, scale: float) -> np.ndarray:
    """1 - a wide Gaussian, zero in the centre: the reference's create_penalty_mask."""
    z = np.arange(-k_size // 2 + 1, k_size // 2 + 1, dtype=np.float64)
    g1 = np.exp(-(z**2) / (2 * k_size**2))
    mask = np.outer(g1, g1)
    mask = 1.0 - mask / mask.max()
    center = k_size // 2 + k_size % 2
    margin = (k_size - center) // 2 - 1
    mask[margin:-margin, margin:-margin] = 0
    return scale * mask
