"""KernelGAN-FKP's generator: the kernel is the prior's decoding of a latent z, and z is what trains.

KernelGAN's deep linear G can draw any filter and its regularisers pull it toward one width
(BENCHMARKS.md); here every step of G lands on a kernel the prior (`models.kernel_prior`) holds
plausible, so the regularisers are off and only the GAN (with KernelGAN's early bicubic term)
moves z. Unlike FKP, z starts at the prior's encoding of a middle-width Gaussian (plus a seeded
jitter) and is not held on a sphere: from FKP's random start on the sphere the estimates scattered
(kernel error 0.33 against 0.24 on four DIV2KRK-style photos, BENCHMARKS.md); a clean kernel's
latent lies well inside that sphere (|z| about 5 against 13).

`camera=True` is this project's camera form: one z for all the photos of a camera, trained
against every photo's discriminator at once. The photos share the optics, so their kernel is one
unknown; pooling their gradients averages out what each photo's scene content adds.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from realsr.models.kernel_prior import KernelPrior
from realsr.models.kernelgan_batched import strided_correlation
from realsr.models.synthetic import gaussian_kernel


class PriorGenerators(nn.Module):
    """B generators over a frozen prior: kernels() -> (B, K, K), forward as `Generators`.

    Each image has its own latent (or all share one, `camera`), all starting at the encoding of
    an isotropic Gaussian of width `start` plus `jitter` x N(0, I) drawn with `seed`. Images are decoded one
    at a time: an image's arithmetic does not depend on the batch (`models.kernelgan_batched`).

    Args:
        prior: the trained flow (its weights are frozen here).
        b: how many images train together.
        seed: the jitter's draw.
        start: the starting kernel's Gaussian width, px.
        jitter: the starting latent's spread around that kernel's.
        camera: one latent for all B images.
    """

    def __init__(self, prior: KernelPrior, b: int, seed: int, start: float = 1.2, jitter: float = 0.3, camera: bool = False):
        super().__init__()
        for p in prior.parameters():
            p.requires_grad_(False)
        self.prior, self.b, self.camera = prior.eval(), b, camera
        with torch.no_grad():
            z0, _ = prior.encode(torch.tensor(gaussian_kernel(start, start, 0.0, prior.size), dtype=prior.mean.dtype)[None])
        gen = torch.Generator().manual_seed(seed)  # one draw for every image, as KernelGAN's G: alone or in a batch, the same start
        z = z0[0] + jitter * torch.randn(prior.dim, generator=gen, dtype=torch.float64).to(prior.mean.dtype)
        self.z = nn.ParameterList(nn.Parameter(z.clone()) for _ in range(1 if camera else b))

    def kernels(self) -> torch.Tensor:
        """(B, K, K): every image's kernel, differentiable in its latent."""
        ks = [self.prior.decode(z.unsqueeze(0))[0] for z in self.z]
        return torch.stack(ks * self.b if self.camera else ks)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """G as one stride-2 correlation per image: (B, 3, H, W) with kernels (B, K, K)."""
        return strided_correlation(x, k, 2)
