"""KernelGAN (Bell-Kligler, Shocher, Irani, NeurIPS 2019): an image's own x2 downscaling kernel.

A deep *linear* generator G downscales crops of the image by 2; a patch discriminator D tells G's
output from real crops of the image at its own scale. What G learns is a blur + subsample that
keeps the image's patch statistics across scales, i.e. its degradation kernel, read out by pushing
a delta through G's layers. Read top to bottom: config, G, D, their batched forms, the training
loop; the loss terms are in `kernelgan_losses`, the crops in `kernelgan_crops`, what the raw
kernel becomes (post-processing, the collapse check) in `kernelgan_post`.

Faithful to the official code (sefibk/KernelGAN), measured side by side with it in
`bench/kernelgan_accuracy.py`: its initialisation (Xavier-normal, gain 0.1; BatchNorm weights
N(1, 0.02)), images in [-1, 1], its crops, D's real crops of G's output size with the noise it
adds to the image in place, its losses, schedule and soft-threshold post-processing. Different
where users of the reference complain: any device, a seed for every draw, the kernel centred on
the middle pixel at its documented size (13x13, as `models.kernels` expects), G applied as the
single stride-2 convolution it equals (exact: the composed kernel is built inside autograd), many
images trained in one loop with every per-image result independent of the others in the batch
(bitwise on the CPU: per-image calls instead of grouped convolutions, whose algorithm changes with
the group count), and a NaN reported as a divergence at its step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from realsr.models.kernelgan_batched import compose_linear, conv_stack, strided_correlation
from realsr.models.kernelgan_crops import CropSampler
from realsr.models.kernelgan_fkp import PriorGenerators
from realsr.models.kernelgan_losses import (
    BoundariesLoss,
    CentralizedLoss,
    ConstraintSchedule,
    DownScaleLoss,
    GANLoss,
    SparsityLoss,
    SumOfWeightsLoss,
)
from realsr.models.kernelgan_post import collapse, consensus_estimate, finalize_kernel  # noqa: F401 (re-exported)

VERSION = "3"  # bump when the kernel estimated for the same image and config changes


@dataclass(frozen=True)
class KernelGANConfig:
    """The reference's defaults (configs.py); `iterations` is its max_iters."""

    crop: int = 64  # G's input crop; D sees crop // 2
    g_structure: tuple[int, ...] = (7, 5, 3, 1, 1, 1)
    g_channels: int = 64
    d_channels: int = 64
    d_layers: int = 7
    d_kernel: int = 7
    iterations: int = 3000
    lr: float = 2e-4
    beta1: float = 0.5
    n_filtering: int = 40  # the post-processing's soft threshold: 0.75 x the 41st largest tap
    retries: int = 1  # an image that diverges or collapses trains again with the next seed, this often
    seeds: int = 1  # train each image this many times (seeds seed, seed + SEED_STRIDE, ...) and average the kernels
    seed: int = 0
    # with a kernel prior (KernelGAN-FKP): the latent's learning rate, its start (the prior's
    # encoding of an isotropic Gaussian of this width, px) and the seeded jitter around it
    latent_lr: float = 1e-3
    latent_start: float = 1.2
    latent_jitter: float = 0.3
    camera: bool = False  # with a kernel prior: one latent for all the images (one camera's optics)

    @property
    def kernel_size(self) -> int:
        return sum(self.g_structure) - len(self.g_structure) + 1  # 13 for (7, 5, 3, 1, 1, 1)

    @property
    def d_crop(self) -> int:
        """D's real crops have the size of G's output (26 for 64 px crops), as the reference's."""
        return (self.crop - self.kernel_size) // 2 + 1

    def too_small(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot be trained on, or None if it can."""
        if min(height, width) < self.crop + 2:
            return f"{width}x{height} is too small for KernelGAN's {self.crop} px crops"
        return None

    def as_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    """Deep linear network: no bias, no activation; the last 1x1 layer has stride 2.

    Holds one seeded set of weights; training runs on `Generators`, which starts every image
    from them and reads their composed kernel.

    Args:
        cfg: sizes of the layers and the channel width.
    """

    def __init__(self, cfg: KernelGANConfig):
        super().__init__()
        s, c = cfg.g_structure, cfg.g_channels
        chans = [1] + [c] * (len(s) - 1) + [1]
        self.layers = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], s[i], stride=2 if i == len(s) - 1 else 1, bias=False) for i in range(len(s)))
        self.kernel_size = cfg.kernel_size
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight, 0.1)  # the reference's weights_init_G


class Discriminator(nn.Module):
    """Fully convolutional patch discriminator: a 7x7 spectral-norm conv, 1x1 conv-BN-ReLU
    blocks, a 1x1 conv and a sigmoid: one real/fake score per receptive field.

    Holds one seeded D; training runs on `Discriminators`, which starts every image from it.

    Args:
        cfg: width, depth and first kernel size.
    """

    def __init__(self, cfg: KernelGANConfig):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        c = cfg.d_channels
        blocks = [sn(nn.Conv2d(3, c, cfg.d_kernel))]
        for _ in range(cfg.d_layers - 2):
            blocks += [sn(nn.Conv2d(c, c, 1)), nn.BatchNorm2d(c), nn.ReLU(True)]
        blocks += [sn(nn.Conv2d(c, 1, 1)), nn.Sigmoid()]
        self.net = nn.Sequential(*blocks)
        with torch.no_grad():  # the reference's weights_init_D
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_normal_(m.parametrizations.weight.original, 0.1)
                    m.bias.zero_()
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.normal_(1.0, 0.02)
                    m.bias.zero_()


class Generators(nn.Module):
    """B independent generators, one per image, all started from one seeded G.

    Their kernels are composed and applied one image at a time (`models.kernelgan_batched`): each image's
    arithmetic is the same whatever else is in the batch.

    Args:
        g: the seeded generator every image starts from.
        b: how many images train together.
    """

    def __init__(self, g: Generator, b: int):
        super().__init__()
        self.b = b
        self.weights = nn.ParameterList(nn.Parameter(layer.weight.detach().unsqueeze(0).repeat(b, 1, 1, 1, 1)) for layer in g.layers)

    def kernels(self) -> torch.Tensor:
        """(B, K, K): every generator's composed kernel, differentiable in every weight."""
        return compose_linear(list(self.weights))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """G as the single stride-2 convolution it equals: (B, 3, H, W) with kernels (B, K, K)."""
        return strided_correlation(x, k, 2)


class Discriminators(nn.Module):
    """B independent discriminators, started from one seeded D's state.

    Each image runs through its own plain convolutions (`models.kernelgan_batched`), so its arithmetic does
    not depend on the batch; BatchNorm is per image; spectral norm runs torch's power iteration
    batched (elementwise), one step per forward, in the same order (u, then v).
    """

    def __init__(self, d: Discriminator, b: int):
        super().__init__()
        self.b = b
        self.weights, self.biases, self.bn_weights, self.bn_biases = (nn.ParameterList() for _ in range(4))
        for m in d.net:
            if isinstance(m, nn.Conv2d):
                p = m.parametrizations.weight
                i = len(self.weights)
                self.weights.append(nn.Parameter(p.original.detach().unsqueeze(0).repeat(b, 1, 1, 1, 1)))
                self.biases.append(nn.Parameter(m.bias.detach().repeat(b)))
                self.register_buffer(f"u{i}", p[0]._u.detach().unsqueeze(0).repeat(b, 1))
                self.register_buffer(f"v{i}", p[0]._v.detach().unsqueeze(0).repeat(b, 1))
            elif isinstance(m, nn.BatchNorm2d):
                self.bn_weights.append(nn.Parameter(m.weight.detach().repeat(b)))
                self.bn_biases.append(nn.Parameter(m.bias.detach().repeat(b)))

    def _sn_weight(self, i: int) -> torch.Tensor:
        w = self.weights[i]  # (B, out, in, kh, kw)
        mat = w.flatten(2)  # (B, out, in*kh*kw)
        u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
        # matrix-vector products as multiply + sum: a batched gemv's rounding depends on the batch
        with torch.no_grad():
            u.copy_(F.normalize((mat * v.unsqueeze(1)).sum(2), dim=1, eps=1e-12))
            v.copy_(F.normalize((mat * u.unsqueeze(2)).sum(1), dim=1, eps=1e-12))
            u, v = u.clone(), v.clone()  # the next forward updates the buffers before this backward
        sigma = (u * (mat * v.unsqueeze(1)).sum(2)).sum(1)  # (B,)
        return w / sigma.view(-1, 1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W), image b's crop in row b -> (B, 1, h, w) scores."""
        n_conv = len(self.weights)
        weights = [self._sn_weight(i) for i in range(n_conv)]
        biases = [bias.view(self.b, -1) for bias in self.biases]
        bn_w = [w.view(self.b, -1).unbind(0) for w in self.bn_weights]
        bn_b = [w.view(self.b, -1).unbind(0) for w in self.bn_biases]

        def between(j: int, image: int, y: torch.Tensor) -> torch.Tensor:
            if j == n_conv - 1:
                return torch.sigmoid(y)
            if j == 0:  # the 7x7 conv has no BN or ReLU after it
                return y
            return F.relu(F.batch_norm(y, None, None, bn_w[j - 1][image], bn_b[j - 1][image], training=True))

        return conv_stack(x, weights, biases, between)


# ------------------------------------------------------------------------------------------------
# training


@dataclass
class KernelEstimate:
    kernel: np.ndarray | None  # (13, 13) float64, centred, sums to 1; None when training failed
    raw: np.ndarray  # G's composed kernel at the end of training, before the post-processing
    losses: dict[str, float]
    iterations: int
    diverged_at: int | None = None  # the first step whose losses were not finite
    problem: str | None = None  # why `kernel` is None, in words
    seed: int = 0  # the seed that gave this estimate (the config's, or a retry's)
    runs: tuple = ()  # with several seeds: each seed's own estimate, that this one is the consensus of

    @property
    def ok(self) -> bool:
        return self.kernel is not None


SEED_STRIDE = 1000  # between the seeds of an average: far from the retries' seed + 1, + 2


def estimate_kernels(
    images: list[np.ndarray], cfg: KernelGANConfig = KernelGANConfig(), device: str = "cpu", progress=None, prior=None
) -> list[KernelEstimate]:
    """Train KernelGAN on each float32 RGB image in [0, 1] (HWC) and return their x2 kernels.

    `train_kernels` on all of them; an image whose training diverged or whose kernel collapsed
    (`collapse`) trains again with the next seed, up to `cfg.retries` times (alone or with the
    other failures: the result is the same), and keeps its problem if every attempt failed.
    With `cfg.seeds` > 1 every image trains that many times and gets their consensus (`consensus_estimate`).
    With a `prior` (`models.kernel_prior.KernelPrior`) G is KernelGAN-FKP's (`PriorGenerators`).
    """
    if cfg.seeds > 1:
        runs = [estimate_kernels(images, replace(cfg, seed=cfg.seed + SEED_STRIDE * j, seeds=1), device, progress, prior) for j in range(cfg.seeds)]
        n = 0 if prior is not None else cfg.n_filtering
        return [consensus_estimate(list(per_image), n) for per_image in zip(*runs)]
    out = train_kernels(images, cfg, device, progress, prior)
    seeds = [cfg.seed]
    for _ in range(cfg.retries):
        failed = [i for i, e in enumerate(out) if not e.ok]
        if not failed:
            break
        retry = replace(cfg, seed=cfg.seed + len(seeds))
        seeds.append(retry.seed)
        for i, e in zip(failed, train_kernels([images[i] for i in failed], retry, device, progress, prior)):
            out[i] = e if e.ok else replace(e, problem=f"{e.problem} (seeds {', '.join(map(str, seeds))})")
    return out


def train_kernels(images: list[np.ndarray], cfg: KernelGANConfig, device: str = "cpu", progress=None, prior=None) -> list[KernelEstimate]:
    """One training run of every image at `cfg.seed`, all in one loop.

    Long on purpose (the issue-36 limit is 60 lines): it is the reference's training step in the
    reference's order, and its kernels are pinned bitwise (tests/test_kernel_golden.py), which any
    reordering of its float arithmetic moves; set-up and finishing are already split out.

    Each image has its own G, D, crops, noise and loss weights, all from the seed's draws, and
    gets exactly the kernel it gets alone (bitwise on the CPU). `progress(iteration, losses)` is called every 500 iterations. An image whose
    losses stop being finite is reported with the step (`diverged_at`); it cannot disturb the
    others, which share no weights, statistics or random streams with it.
    With a `prior`, G is the prior's decoding of a latent per image (`cfg.camera`: one for all),
    the kernel constraints are off (the prior keeps the kernel plausible) and the soft threshold
    too (it would cut a wide Gaussian's tails).
    """
    b, dev = len(images), torch.device(device)
    dtype = torch.get_default_dtype()
    torch.manual_seed(cfg.seed)
    g = Generators(Generator(cfg), b) if prior is None else PriorGenerators(prior, b, cfg.seed, cfg.latent_start, cfg.latent_jitter, cfg.camera)
    g, d = g.to(dev), Discriminators(Discriminator(cfg), b).to(dev)  # G's weights drawn before D's, as always
    gc, dc = cfg.crop, cfg.d_crop
    for img in images:
        if problem := cfg.too_small(*img.shape[:2]):
            raise ValueError(f"image {problem}")
    samplers = [CropSampler(img, gc, dc, np.random.default_rng(cfg.seed)) for img in images]
    g_corners = [s.corners(cfg.iterations, for_g=True) for s in samplers]
    d_corners = [s.corners(cfg.iterations, for_g=False) for s in samplers]
    noises = [torch.Generator(device=dev).manual_seed(cfg.seed) for _ in range(b)]
    # the reference's range: [-1, 1]; every loss weight and threshold of its schedule assumes it
    imgs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(dev, dtype) * 2 - 1 for im in images]
    opt_g = torch.optim.Adam([p for p in g.parameters() if p.requires_grad], lr=cfg.lr if prior is None else cfg.latent_lr, betas=(cfg.beta1, 0.999))
    constraints = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0] if prior is None else [1.0, 0.0, 0.0, 0.0, 0.0], device=dev, dtype=dtype)[:, None]
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    gan, down, sum2one, sparse = GANLoss(), DownScaleLoss().to(dev), SumOfWeightsLoss(), SparsityLoss()
    bounds, central = BoundariesLoss(cfg.kernel_size).to(dev), CentralizedLoss(cfg.kernel_size).to(dev)
    schedules = [ConstraintSchedule() for _ in range(b)]
    diverged = torch.full((b,), -1, dtype=torch.long, device=dev)

    def noise(shape, scale: float) -> list[torch.Tensor]:  # each image's own stream, as if alone
        return [torch.randn(shape, generator=n, device=dev, dtype=dtype) * scale for n in noises]

    def real_crops(it: int) -> torch.Tensor:
        """D's real crops with the reference's noise (1/255 on [0, 1]), left in the image as the
        reference's crop is a view of its image: the noise accumulates there."""
        out = []
        for im, n, (y, x) in zip(imgs, noise((3, dc, dc), 2 / 255), (c[it] for c in d_corners)):
            region = im[:, y : y + dc, x : x + dc]
            region += n
            out.append(region.clone())
        return torch.stack(out)

    def losses_of(i: int) -> dict[str, float]:
        return {"g": loss_g[i].item(), "d": loss_d[i].item(), "bicubic": loss_bic[i].item()}

    for it in range(cfg.iterations):
        d_in = real_crops(it)
        g_in = torch.stack([im[:, y : y + gc, x : x + gc] for im, (y, x) in zip(imgs, (c[it] for c in g_corners))])
        w = torch.tensor([s.as_row() for s in schedules], device=dev, dtype=dtype).T * constraints  # (5, B)

        # G step: fool D, within the kernel constraints
        opt_g.zero_grad(set_to_none=True)
        k = g.kernels()  # (B, K, K)
        g_out = g(g_in, k)
        loss_bic = down(g_in, g_out)
        loss_g = gan(d(g_out), real=True) + w[0] * loss_bic + w[1] * sum2one(k) + w[2] * bounds(k) + w[3] * central(k) + w[4] * sparse(k)
        loss_g.sum().backward()  # images share no weights: each gets its own gradient
        opt_g.step()

        # D step: real crops vs G's output (with a little noise), as the reference
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = g(g_in, g.kernels())
            fake = fake + torch.stack(noise(fake.shape[1:], 1 / 255))
        loss_d = 0.5 * (gan(d(d_in), real=True) + gan(d(fake), real=False))
        loss_d.sum().backward()
        opt_d.step()

        bad = ~(torch.isfinite(loss_g.detach()) & torch.isfinite(loss_d.detach()))
        diverged = torch.where(bad & (diverged < 0), torch.full_like(diverged, it), diverged)  # no sync
        bic = loss_bic.tolist() if any(s.needs_loss() for s in schedules) else [None] * b  # no sync once settled
        for s, value in zip(schedules, bic):
            s.update(it, value)
        ConstraintSchedule.decay_learning_rate(it, (opt_g, opt_d))  # the learning rate is shared
        if progress is not None and (it + 1) % 500 == 0:
            progress(it + 1, {"g": round(loss_g.mean().item(), 5), "d": round(loss_d.mean().item(), 5)})
    with torch.no_grad():
        raws = g.kernels().double().cpu().numpy()
    out = []
    for i, step in enumerate(diverged.tolist()):
        losses = losses_of(i)
        kernel, problem = None, None
        if step >= 0:
            problem = f"KernelGAN diverged: its losses became NaN/inf at step {step} of {cfg.iterations}"
        elif reason := collapse(raws[i]):
            problem = f"KernelGAN failed: {reason}"
        else:
            try:
                kernel = finalize_kernel(raws[i], cfg.n_filtering if prior is None else 0)
            except ValueError as e:  # one image's degenerate kernel must not cost the others theirs
                problem = f"KernelGAN ended with an unusable kernel: {e}"
        out.append(KernelEstimate(kernel, raws[i], losses, cfg.iterations, step if step >= 0 else None, problem, cfg.seed))
    return out
