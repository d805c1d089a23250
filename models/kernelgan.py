"""KernelGAN (Bell-Kligler, Shocher, Irani, NeurIPS 2019): an image's own x2 downscaling kernel.

A deep *linear* generator G downscales crops of the image by 2; a patch discriminator D tells G's
output from real crops of the image at its own scale. What G learns is a blur + subsample that
keeps the image's patch statistics across scales, i.e. its degradation kernel, read out by pushing
a delta through G's layers. Read top to bottom: config, G, D, the loss terms, the weight schedule,
the crop sampler, the training loop.

Faithful to the reference (sefibk/KernelGAN) in structure, losses, schedule and crops; different
where users of the reference complain: no `.cuda()` (any device), a seed for every draw, the
kernel returned at its documented size (13x13, centred on the middle pixel, as `models.kernels`
expects), G applied as the single stride-2 convolution it equals (the composed kernel is built
inside autograd, so every layer gets the same gradient; `deep=True` keeps the reference's way),
and many images trained in one loop, each with its own G and D as groups of one convolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.kernels import bicubic_kernel, centre_kernel


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
    n_filtering: int = 40  # taps kept by the final clean-up of the kernel
    seed: int = 0

    @property
    def kernel_size(self) -> int:
        return sum(self.g_structure) - len(self.g_structure) + 1  # 13 for (7, 5, 3, 1, 1, 1)

    def too_small(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot be trained on, or None if it can."""
        if min(height, width) < self.crop + 2:
            return f"{width}x{height} is too small for KernelGAN's {self.crop} px crops"
        return None

    def as_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    """Deep linear network: no bias, no activation; the last 1x1 layer has stride 2.

    Holds one seeded set of weights and the ways to read its kernel; training runs on
    `Generators`, which starts every image from these weights.

    Args:
        cfg: sizes of the layers and the channel width.
    """

    def __init__(self, cfg: KernelGANConfig):
        super().__init__()
        s, c = cfg.g_structure, cfg.g_channels
        chans = [1] + [c] * (len(s) - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], s[i], stride=2 if i == len(s) - 1 else 1, bias=False) for i in range(len(s))
        )
        self.kernel_size = cfg.kernel_size

    def kernel(self) -> torch.Tensor:
        """The composed correlation kernel (K, K), differentiable in every weight."""
        return _compose([layer.weight.unsqueeze(0) for layer in self.layers])[0]

    def kernel_by_delta(self) -> torch.Tensor:
        """The reference's read-out: a delta pushed through the layers, flipped."""
        k = self.kernel_size
        delta = torch.zeros(1, 1, 2 * k - 1, 2 * k - 1, device=self.layers[0].weight.device)
        delta[0, 0, k - 1, k - 1] = 1.0
        y = delta
        for layer in self.layers:
            y = F.conv2d(y, layer.weight)  # stride 1: the composition, not the subsampling
        return y[0, 0].flip(0, 1)


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


class Generators(nn.Module):
    """B independent generators, one per image, as grouped convolutions from one seeded G.

    Args:
        g: the seeded generator every image starts from.
        b: how many images train together.
    """

    def __init__(self, g: Generator, b: int):
        super().__init__()
        self.b = b
        self.weights = nn.ParameterList(nn.Parameter(l.weight.detach().unsqueeze(0).repeat(b, 1, 1, 1, 1)) for l in g.layers)

    def kernels(self) -> torch.Tensor:
        """(B, K, K): every generator's composed kernel, differentiable in every weight."""
        return _compose(list(self.weights))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """G as the single stride-2 convolution it equals: (B, 3, H, W) with kernels (B, K, K)."""
        b, ch, h, w = x.shape
        weight = k.repeat_interleave(ch, dim=0)[:, None]  # (B*3, 1, K, K)
        y = F.conv2d(x.reshape(1, b * ch, h, w), weight, stride=2, groups=b * ch)
        return y.reshape(b, ch, y.shape[-2], y.shape[-1])

    def deep(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's path, layer by layer: RGB channels go through as gray images."""
        b, ch = x.shape[:2]
        y = x.transpose(0, 1)  # (3, B, H, W): image b's channel c is row c, group b
        for i, w in enumerate(self.weights):
            y = F.conv2d(y, w.flatten(0, 1), stride=2 if i == len(self.weights) - 1 else 1, groups=b)
        return y.transpose(0, 1)


class Discriminators(nn.Module):
    """B independent discriminators as grouped convolutions, started from one seeded D's state.

    Grouped convs keep the images apart, BatchNorm over B*C channels is per-image BN (its
    statistics are per channel), and spectral norm runs torch's power iteration batched, one step
    per forward, in the same order (u, then v), from the same u and v.
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
        with torch.no_grad():
            u.copy_(F.normalize(torch.bmm(mat, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-12))
            v.copy_(F.normalize(torch.bmm(mat.transpose(1, 2), u.unsqueeze(2)).squeeze(2), dim=1, eps=1e-12))
            u, v = u.clone(), v.clone()  # the next forward updates the buffers before this backward
        sigma = (u * torch.bmm(mat, v.unsqueeze(2)).squeeze(2)).sum(1)  # (B,)
        return (w / sigma.view(-1, 1, 1, 1, 1)).flatten(0, 1)  # (B*out, in, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W), image b's crop in row b -> (B, 1, h, w) scores."""
        b = self.b
        y = x.reshape(1, b * x.shape[1], x.shape[2], x.shape[3])
        n_conv = len(self.weights)
        for i in range(n_conv):
            y = F.conv2d(y, self._sn_weight(i), self.biases[i], groups=b)
            if 1 <= i < n_conv - 1:  # the 1x1 blocks: BN and ReLU after the conv
                y = F.relu(F.batch_norm(y, None, None, self.bn_weights[i - 1], self.bn_biases[i - 1], training=True))
        return torch.sigmoid(y).reshape(b, 1, y.shape[-2], y.shape[-1])


# ------------------------------------------------------------------------------------------------
# loss terms: one small module each, as the reference's loss.py; each gives one value per image
# (kernels (..., K, K), images (B, C, H, W))


class GANLoss(nn.Module):
    """L1 distance of D's score map to all-real or all-fake labels."""

    def forward(self, scores: torch.Tensor, real: bool) -> torch.Tensor:
        return (scores - (1.0 if real else 0.0)).abs().flatten(1).mean(1)


class DownScaleLoss(nn.Module):
    """G's output should stay close to a bicubic downscale of its input (decays in training)."""

    def __init__(self):
        super().__init__()
        # the bicubic x2 kernel centred on a pixel (7 taps), so that it agrees with the centre the
        # CentralizedLoss asks for (the reference used an 8-tap kernel and a centre half a pixel off)
        self.register_buffer("bicubic", torch.tensor(bicubic_kernel(2, 7), dtype=torch.get_default_dtype())[None, None])

    def forward(self, g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        n, c, h, w = g_input.shape
        down = F.conv2d(g_input.reshape(n * c, 1, h, w), self.bicubic, stride=2, padding=3)
        down = down.reshape(n, c, down.shape[-2], down.shape[-1])
        return ((g_output - _shave_to(down, g_output)) ** 2).flatten(1).mean(1)


class SumOfWeightsLoss(nn.Module):
    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (1.0 - k.sum((-2, -1))).abs()


class BoundariesLoss(nn.Module):
    """Penalises kernel mass away from the centre with the reference's Gaussian-shaped mask."""

    def __init__(self, k_size: int):
        super().__init__()
        self.register_buffer("mask", torch.tensor(_penalty_mask(k_size, 30.0), dtype=torch.get_default_dtype()))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (k * self.mask).abs().mean((-2, -1))


class CentralizedLoss(nn.Module):
    """Squared distance of the kernel's centre of mass to the wanted centre.

    The reference wants k_size // 2 + 0.5 (half a pixel off the middle, its grid); ours is the
    middle pixel: the pixel-centre alignment is applied later, when the kernel is used.
    """

    def __init__(self, k_size: int):
        super().__init__()
        self.register_buffer("indices", torch.arange(k_size, dtype=torch.get_default_dtype()))
        self.center = float(k_size // 2)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        total = k.sum((-2, -1))
        r = (k.sum(-1) * self.indices).sum(-1) / total
        c = (k.sum(-2) * self.indices).sum(-1) / total
        return ((r - self.center) ** 2 + (c - self.center) ** 2) / 2


class SparsityLoss(nn.Module):
    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return (k.abs() ** 0.2).mean((-2, -1))


@dataclass
class LossWeights:
    """The reference's weight schedule (learner.py), as named constants and one update rule."""

    bicubic: float = 5.0
    sum2one: float = 0.5
    boundaries: float = 0.5
    centralized: float = 0.0
    sparse: float = 0.0

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


# ------------------------------------------------------------------------------------------------
# crops sampled where the image has structure


class CropSampler:
    """Top-left corners of G's and D's crops, drawn with probability ~ local gradient magnitude.

    As the reference's DataGenerator: D's map comes from the image, G's from its bicubic x2
    downscale brought back to full size; both are box-blurred by half a crop; corners are even.
    """

    def __init__(self, image: np.ndarray, cfg: KernelGANConfig, rng: np.random.Generator):
        h, w = image.shape[:2]
        if problem := cfg.too_small(h, w):
            raise ValueError(f"image {problem}")
        self.h, self.w, self.cfg, self.rng = h, w, cfg, rng
        big = _gradient_map(image)
        small = _gradient_map(cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        small = np.kron(small, np.ones((2, 2)))[:h, :w]
        small = np.pad(small, ((0, h - small.shape[0]), (0, w - small.shape[1])), mode="edge")
        self.p_d = _probability(big, cfg.crop // 2)
        self.p_g = _probability(small, cfg.crop)

    def corners(self, n: int, for_g: bool) -> np.ndarray:
        size = self.cfg.crop if for_g else self.cfg.crop // 2
        centers = self.rng.choice(self.h * self.w, size=n, p=self.p_g if for_g else self.p_d)
        rows, cols = centers // self.w, centers % self.w
        top = np.clip(rows - size // 2, 0, self.h - size)
        left = np.clip(cols - size // 2, 0, self.w - size)
        return np.stack([top - top % 2, left - left % 2], 1)


# ------------------------------------------------------------------------------------------------
# training


@dataclass
class KernelEstimate:
    kernel: np.ndarray | None  # (13, 13) float64, centred, sums to 1; None if G ended with no positive mass
    raw: np.ndarray  # G's composed kernel at the end of training, before the clean-up
    losses: dict[str, float]
    iterations: int


def estimate_kernel(image: np.ndarray, cfg: KernelGANConfig = KernelGANConfig(), device: str = "cpu", deep: bool = False, progress=None) -> KernelEstimate:
    """KernelGAN on one float32 RGB image in [0, 1] (HWC): `estimate_kernels` of one image."""
    return estimate_kernels([image], cfg, device, deep, progress)[0]


def estimate_kernels(images: list[np.ndarray], cfg: KernelGANConfig = KernelGANConfig(), device: str = "cpu", deep: bool = False, progress=None) -> list[KernelEstimate]:
    """Train KernelGAN on each float32 RGB image in [0, 1] (HWC) and return their x2 kernels.

    The images train together, each with its own G, D, crops, noise and loss weights, all from
    the seed's draws: an image gets the kernel it would get alone (up to float rounding, which
    GAN training amplifies over many steps), in one set of kernel launches. `deep` runs G layer
    by layer as the reference does; the default applies G as its composed kernel (exact, 30x
    fewer multiply-adds). `progress(iteration, losses)` is called every 500 iterations.
    """
    b, dev = len(images), torch.device(device)
    dtype = torch.get_default_dtype()
    torch.manual_seed(cfg.seed)
    g, d = Generators(Generator(cfg), b).to(dev), Discriminators(Discriminator(cfg), b).to(dev)
    samplers = [CropSampler(img, cfg, np.random.default_rng(cfg.seed)) for img in images]
    g_corners = [s.corners(cfg.iterations, for_g=True) for s in samplers]
    d_corners = [s.corners(cfg.iterations, for_g=False) for s in samplers]
    noises = [torch.Generator(device=dev).manual_seed(cfg.seed) for _ in range(b)]
    imgs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(dev, dtype) for im in images]
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    gan, down, sum2one, sparse = GANLoss(), DownScaleLoss().to(dev), SumOfWeightsLoss(), SparsityLoss()
    bounds, central = BoundariesLoss(cfg.kernel_size).to(dev), CentralizedLoss(cfg.kernel_size).to(dev)
    schedules = [LossWeights() for _ in range(b)]
    gc, dc = cfg.crop, cfg.crop // 2

    def crops(corners: list[np.ndarray], it: int, size: int) -> torch.Tensor:
        return torch.stack([im[:, y : y + size, x : x + size] for im, (y, x) in zip(imgs, (c[it] for c in corners))])

    def noise_like(x: torch.Tensor) -> torch.Tensor:  # each image's own stream, as if alone
        return torch.stack([torch.randn(x.shape[1:], generator=n, device=dev, dtype=dtype) for n in noises]) / 255.0

    for it in range(cfg.iterations):
        g_in = crops(g_corners, it, gc)
        d_in = crops(d_corners, it, dc)
        d_in = d_in + noise_like(d_in)
        w = torch.tensor([s.as_row() for s in schedules], device=dev, dtype=dtype).T  # (5, B)

        # G step: fool D, within the kernel constraints
        opt_g.zero_grad(set_to_none=True)
        k = g.kernels()  # (B, K, K)
        g_out = g.deep(g_in) if deep else g(g_in, k)
        loss_bic = down(g_in, g_out)
        loss_g = gan(d(g_out), real=True) + w[0] * loss_bic + w[1] * sum2one(k) + w[2] * bounds(k) + w[3] * central(k) + w[4] * sparse(k)
        loss_g.sum().backward()  # images share no weights: each gets its own gradient
        opt_g.step()

        # D step: real crops vs G's output (with a little noise), as the reference
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = g.deep(g_in) if deep else g(g_in, g.kernels())
            fake = fake + noise_like(fake)
        loss_d = 0.5 * (gan(d(d_in), real=True) + gan(d(fake), real=False))
        loss_d.sum().backward()
        opt_d.step()

        bic = loss_bic.tolist() if any(s.needs_loss() for s in schedules) else [None] * b  # no sync once settled
        for s, value in zip(schedules, bic):
            s.update(it, value)
        LossWeights.decay_learning_rate(it, (opt_g, opt_d))  # the learning rate is shared
        if progress is not None and (it + 1) % 500 == 0:
            progress(it + 1, {"g": round(loss_g.mean().item(), 5), "d": round(loss_d.mean().item(), 5)})
    with torch.no_grad():
        raws = g.kernels().double().cpu().numpy()
    out = []
    for i in range(b):
        losses = {"g": loss_g[i].item(), "d": loss_d[i].item(), "bicubic": loss_bic[i].item()}
        try:
            kernel = finalize_kernel(raws[i], cfg.n_filtering)
        except ValueError:  # one image's degenerate kernel must not cost the others theirs
            kernel = None
        out.append(KernelEstimate(kernel, raws[i], losses, cfg.iterations))
    return out


def finalize_kernel(raw: np.ndarray, keep: int = 40) -> np.ndarray:
    """The reference's post-processing: keep the `keep` largest taps, renormalise, centre.

    Centring moves the centre of mass to the middle pixel (bilinear sub-pixel shift, size kept).
    """
    k = np.asarray(raw, dtype=np.float64)
    if keep and keep < k.size:
        threshold = np.sort(k.ravel())[-keep]
        k = np.where(k >= threshold, k, 0.0)
    k = np.clip(k, 0, None)
    if k.sum() <= 0:
        raise ValueError("KernelGAN produced a kernel with no positive mass")
    return centre_kernel(k / k.sum())


# ------------------------------------------------------------------------------------------------
# helpers


def _compose(weights: list[torch.Tensor]) -> torch.Tensor:
    """(B, K, K) composed kernels of B deep linear nets, from their layers' (B, out, in, kh, kw).

    Composed from the output side (a transposed convolution is the full convolution that composes
    two correlations; groups keep the nets apart): ~1 M multiply-adds, against ~30 M for pushing
    a delta through the layers as the reference does (`Generator.kernel_by_delta`).
    """
    b = weights[0].shape[0]
    m = weights[-1].flatten(0, 1).reshape(1, -1, 1, 1)  # (1, B*C, 1, 1)
    for w in reversed(weights[:-1]):
        m = F.conv_transpose2d(m, w.flatten(0, 1), groups=b)  # (1, B*C_in, k', k')
    return m.reshape(b, m.shape[-2], m.shape[-1])


def _shave_to(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Centre-crop `a` to `b`'s spatial size."""
    dh, dw = (a.shape[-2] - b.shape[-2]) // 2, (a.shape[-1] - b.shape[-1]) // 2
    return a[..., dh : dh + b.shape[-2], dw : dw + b.shape[-1]]


def _penalty_mask(k_size: int, scale: float) -> np.ndarray:
    """1 - a wide Gaussian, zero in the centre: the reference's create_penalty_mask."""
    z = np.arange(-k_size // 2 + 1, k_size // 2 + 1, dtype=np.float64)
    g1 = np.exp(-(z**2) / (2 * k_size**2))
    mask = np.outer(g1, g1)
    mask = 1.0 - mask / mask.max()
    center = k_size // 2 + k_size % 2
    margin = (k_size - center) // 2 - 1
    mask[margin:-margin, margin:-margin] = 0
    return scale * mask


def _gradient_map(image: np.ndarray, window: int = 5, percent: float = 0.97) -> np.ndarray:
    """Local gradient energy of the luma, extremes clipped (the reference's create_gradient_map)."""
    gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)
    gy, gx = np.gradient(gray)
    maps = []
    for m in (np.abs(gx), np.abs(gy), np.hypot(gx, gy)):
        m = m.copy()
        m[:window], m[-window:], m[:, :window], m[:, -window:] = 0, 0, 0, 0
        hi = np.quantile(m, percent)
        m = np.clip(m, 0, hi) / max(hi, 1e-12)
        maps.append(cv2.boxFilter(m, -1, (window, window), normalize=False))
    return sum(maps)


def _probability(loss_map: np.ndarray, crop: int) -> np.ndarray:
    """Blur by half a crop, zero the border half a crop wide, normalise to a distribution."""
    half = max(1, crop // 2)
    blurred = np.maximum(cv2.boxFilter(loss_map, -1, (half, half)), 0.0)  # running sums can dip below 0
    blurred[:half], blurred[-half:], blurred[:, :half], blurred[:, -half:] = 0, 0, 0, 0
    flat = blurred.ravel()
    total = flat.sum()
    return flat / total if total > 0 else np.full(flat.size, 1.0 / flat.size)
