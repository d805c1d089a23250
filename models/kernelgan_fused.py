"""KernelGAN as one network per step over many runs: images x seeds in fixed-size slot batches.

`models.kernelgan.train_kernels` runs every per-image operation as its own call (bitwise batch
independence at any batch size) and its seeds one after another: on a GPU that is thousands of
tiny kernel launches per step. Here every run (an image at a seed) is a *slot* of one network:
its parameters stacked on a leading slot axis, G and D's spatial convolutions grouped
(groups = slots), D's 1x1 layers batched matrix products, Adam over the stacked tensors, the
constraint schedule kept on the device as tensors, and nothing read back to the host inside the
loop but the losses every `read_every` steps. The shapes never change (always `slots` slots, empty
ones masked: zero loss, zero gradient), so a step could be captured (`torch.compile`, a CUDA graph)
and a run's arithmetic does not depend on its companions: on the CPU, a photo's kernel is
bitwise the same whatever else shares its batch, at the same slot count and slot position
(tests/test_kernelgan_fused.py). Another slot count or position may round differently: there the
kernel agrees to rounding, grown by KernelGAN's chaos (as another thread count does).

Every draw is the per-image path's: each slot's G and D from its seed, its crops from
`CropSampler` with the seed's generator, its noise from its own torch generator in the same order,
so the two engines differ only in float rounding (the order of the sums inside a grouped
convolution or a batched product); over 1000 steps that grows to a seed-to-seed difference
(BENCHMARKS.md measures both on the KernelGAN benchmark). KernelGAN-FKP stays on the per-image path.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from realsr.models.kernelgan import SEED_STRIDE, Discriminator, Generator, KernelEstimate, KernelGANConfig, finalize_kernel
from realsr.models.kernelgan_crops import CropSampler
from realsr.models.kernelgan_losses import (
    BoundariesLoss,
    CentralizedLoss,
    ConstraintSchedule,
    GANLoss,
    SparsityLoss,
    SumOfWeightsLoss,
    shave_to,
)
from realsr.models.kernelgan_post import collapse, consensus_estimate
from realsr.models.kernels import bicubic_kernel

SLOTS = 16  # runs per network at most
# With `slots=None` a network has the batch's run count rounded up to this many slots: on this CPU
# (AVX512) a slot's arithmetic is bitwise the same at any slot count and position that are multiples
# of it (measured: 4, 8, 12 and 16 slots agree; 1, 2, 3 and 5 do not, their last slots' channels
# fall in a vector loop's scalar tail), so an image's kernel does not depend on its batch while a
# CPU worker's small batch wastes at most 3 slots. A fixed `slots` is the guarantee by construction.
SLOT_MULTIPLE = 4
GPU_SLOTS = 64  # runs per network at most on CUDA: one network per step fills more of the device
READ_EVERY = 500  # steps between the loop's only reads to the host (the losses, for `progress`)


class SlotNets:
    """The stacked parameters of `slots` independent G and D pairs, each slot started from its
    seed's `Generator` and `Discriminator` (the draws of the per-image path), with the functional
    forward passes. Shapes are noted as (S, ...), S the slot count."""

    def __init__(self, cfg: KernelGANConfig, seeds: list[int], device: torch.device):
        gs, ds = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            gs.append(Generator(cfg))  # G's weights drawn before D's, as the per-image path
            ds.append(Discriminator(cfg))

        def stack(tensors):
            return torch.stack([t.detach() for t in tensors]).to(device).contiguous()

        self.g = [stack([g.layers[j].weight for g in gs]).requires_grad_() for j in range(len(cfg.g_structure))]  # (S, out, in, kh, kw)
        convs = [[m for m in d.net if isinstance(m, torch.nn.Conv2d)] for d in ds]
        bns = [[m for m in d.net if isinstance(m, torch.nn.BatchNorm2d)] for d in ds]
        n_conv, n_bn = len(convs[0]), len(bns[0])
        self.d_w = [stack([c[j].parametrizations.weight.original for c in convs]).requires_grad_() for j in range(n_conv)]
        self.d_b = [stack([c[j].bias for c in convs]).requires_grad_() for j in range(n_conv)]  # (S, out)
        self.u = [stack([c[j].parametrizations.weight[0]._u for c in convs]) for j in range(n_conv)]
        self.v = [stack([c[j].parametrizations.weight[0]._v for c in convs]) for j in range(n_conv)]
        self.bn_w = [stack([b[j].weight for b in bns]).requires_grad_() for j in range(n_bn)]
        self.bn_b = [stack([b[j].bias for b in bns]).requires_grad_() for j in range(n_bn)]
        self.s = len(seeds)

    def g_params(self) -> list[torch.Tensor]:
        return list(self.g)

    def d_params(self) -> list[torch.Tensor]:
        return [*self.d_w, *self.d_b, *self.bn_w, *self.bn_b]

    def kernels(self) -> torch.Tensor:
        """(S, K, K) composed kernels: the last layer pushed back through the others, as
        `compose_linear`, with one grouped transposed convolution per layer for all slots."""
        m = self.g[-1].reshape(1, -1, 1, 1)  # (1, S*C, 1, 1)
        for w in reversed(self.g[:-1]):
            m = F.conv_transpose2d(m, w.flatten(0, 1), groups=self.s)  # (1, S*C_in, k', k')
        return m[0]

    def apply_g(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """G as the single stride-2 correlation it equals: x (S, 3, H, W), k (S, K, K)."""
        s, c = x.shape[:2]
        y = F.conv2d(x.reshape(1, s * c, *x.shape[2:]), k.repeat_interleave(c, 0)[:, None], stride=2, groups=s * c)
        return y.view(s, c, *y.shape[2:])

    def _sn_weight(self, j: int) -> torch.Tensor:
        """Spectral norm, one power-iteration step per forward (u, then v), as `Discriminators`."""
        w = self.d_w[j]
        mat = w.flatten(2)  # (S, out, in*kh*kw)
        u, v = self.u[j], self.v[j]
        with torch.no_grad():
            u.copy_(F.normalize((mat * v.unsqueeze(1)).sum(2), dim=1, eps=1e-12))
            v.copy_(F.normalize((mat * u.unsqueeze(2)).sum(1), dim=1, eps=1e-12))
            u, v = u.clone(), v.clone()
        sigma = (u * (mat * v.unsqueeze(1)).sum(2)).sum(1)  # (S,)
        return w / sigma.view(-1, 1, 1, 1, 1)

    def apply_d(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, 3, h, w) -> (S, 1, h', w') scores: the 7x7 conv grouped, the 1x1 convs as
        batched products, BatchNorm per slot (each slot-channel its own statistics)."""
        s = self.s
        w0 = self._sn_weight(0)
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w0.flatten(0, 1), self.d_b[0].flatten(), groups=s)  # (1, S*C, h', w')
        hw = y.shape[2:]
        y = y.view(s, -1, hw[0] * hw[1])  # (S, C, h'w')
        last = len(self.d_w) - 1
        for j in range(1, last + 1):
            y = torch.baddbmm(self.d_b[j].unsqueeze(2), self._sn_weight(j).flatten(2), y)  # (S, out, h'w')
            if j < last:
                y = F.batch_norm(y.view(1, -1, *hw), None, None, self.bn_w[j - 1].flatten(), self.bn_b[j - 1].flatten(), training=True)
                y = F.relu(y).view(s, -1, hw[0] * hw[1])
        return torch.sigmoid(y).view(s, 1, *hw)


class DeviceSchedule:
    """`ConstraintSchedule` for every slot as device tensors (float64, its arithmetic): updated
    without reading the bicubic loss back, so the loop never waits for the device."""

    def __init__(self, s: int, device: torch.device):
        c = ConstraintSchedule()
        row = torch.tensor(c.as_row(), dtype=torch.float64, device=device)
        self.w = row[:, None].repeat(1, s)  # (5, S): bicubic, sum2one, boundaries, centralized, sparse
        self.below = torch.zeros(s, dtype=torch.long, device=device)
        self.similar = torch.zeros(s, dtype=torch.bool, device=device)
        self.on = torch.zeros(s, dtype=torch.bool, device=device)

    def weights(self, dtype) -> torch.Tensor:
        return self.w.to(dtype)

    def update(self, it: int, loss_bicubic: torch.Tensor) -> None:
        c = ConstraintSchedule
        if it == 0:
            return
        settled = self.similar
        below = torch.where(loss_bicubic.detach().double() < c.BICUBIC_LOSS_TO_START, self.below + 1, torch.zeros_like(self.below))
        self.below = torch.where(settled, self.below, below)
        self.similar = settled | (self.below > 2)
        if it % c.UPDATE_EVERY == 0:  # decided on the host: the step counter is the host's
            bic = self.w[0]
            go = settled & (bic > c.BICUBIC_MIN)
            bic = torch.where(go, (bic / c.BICUBIC_DECAY).clamp_min(c.BICUBIC_MIN), bic)
            turn = go & ~self.on & (bic < 5e-3)
            self.w = torch.stack([bic, self.w[1], self.w[2], torch.where(turn, c.CENTRALIZED_END, self.w[3]), torch.where(turn, c.SPARSE_END, self.w[4])])
            self.on = self.on | turn


class SlotImages:
    """Every slot's image (its own copy: D's noise accumulates in it, as the per-image path's)
    in one flat buffer, and the crops of a step as one gather at per-slot corners."""

    def __init__(self, images: list[np.ndarray | None], cfg: KernelGANConfig, device: torch.device, dtype):
        planes, base, width, height = [], [], [], []
        offset = 0
        for im in images:
            chw = torch.zeros(3, cfg.crop, cfg.crop) if im is None else torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))
            planes.append(chw.reshape(-1))
            base.append(offset)
            height.append(chw.shape[1])
            width.append(chw.shape[2])
            offset += chw.numel()
        # the per-image path's range: [-1, 1], the same arithmetic on the same values
        self.pixels = torch.cat([p.to(device, dtype) * 2 - 1 if im is not None else p.to(device, dtype) for p, im in zip(planes, images)])
        self.base = torch.tensor(base, device=device)[:, None, None, None]
        self.width = torch.tensor(width, device=device)[:, None, None, None]
        self.plane = (torch.tensor(height, device=device) * torch.tensor(width, device=device))[:, None, None, None]
        self.chan = torch.arange(3, device=device)[None, :, None, None]

    def index(self, yx: torch.Tensor, size: int) -> torch.Tensor:
        """(S, 3, size, size) flat indices of the crops with top-left corners yx (S, 2)."""
        r = torch.arange(size, device=yx.device)
        y, x = yx[:, 0, None, None, None], yx[:, 1, None, None, None]
        return self.base + self.chan * self.plane + (y + r[:, None]) * self.width + x + r

    def crop(self, idx: torch.Tensor) -> torch.Tensor:
        return self.pixels[idx]

    def add(self, idx: torch.Tensor, noise: torch.Tensor) -> None:
        """The noise left in the image (a crop's indices are distinct: one addition each)."""
        self.pixels[idx] = self.pixels[idx] + noise


class SlotNoise:
    """Each slot's noise from its own generator seeded as the per-image path's, drawn in its order
    (D's crop noise, then the noise on G's output, every step) on the CPU a chunk of steps at a
    time, so the loop copies it to the device once per chunk. Empty slots get zeros."""

    def __init__(self, seeds: list[int | None], d_shape: tuple, f_shape: tuple, device: torch.device, dtype):
        self.gens = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.d_shape, self.f_shape, self.device, self.dtype = d_shape, f_shape, device, dtype

    def chunk(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps, S, *shape) noise for D's real crops and for G's output, unscaled."""
        d = torch.zeros(steps, len(self.gens), *self.d_shape, dtype=self.dtype)
        f = torch.zeros(steps, len(self.gens), *self.f_shape, dtype=self.dtype)
        for i, g in enumerate(self.gens):
            if g is not None:
                for t in range(steps):
                    d[t, i] = torch.randn(self.d_shape, generator=g, dtype=self.dtype)
                    f[t, i] = torch.randn(self.f_shape, generator=g, dtype=self.dtype)
        pin = self.device.type == "cuda"
        return (d.pin_memory() if pin else d).to(self.device, non_blocking=True), (f.pin_memory() if pin else f).to(self.device, non_blocking=True)


def train_slots(
    images: list[np.ndarray],
    seeds: list[int],
    cfg: KernelGANConfig,
    device: str = "cpu",
    slots: int = SLOTS,
    read_every: int = READ_EVERY,
    progress=None,
    compile: bool = False,
) -> list[KernelEstimate]:
    """One training run of each (image, seed) pair, all as slots of one network of `slots` slots
    (the rest empty and masked). Returns their estimates in order, as `train_kernels` would.
    `compile`: G's and D's losses through `torch.compile` (their backward too, by AOTAutograd)."""
    n, dev, dtype = len(images), torch.device(device), torch.get_default_dtype()
    if not 0 < n <= slots or len(seeds) != n:
        raise ValueError(f"{n} runs with {len(seeds)} seeds for {slots} slots")
    for img in images:
        if problem := cfg.too_small(*img.shape[:2]):
            raise ValueError(f"image {problem}")
    empty = slots - n
    nets = SlotNets(cfg, [*seeds, *[cfg.seed] * empty], dev)  # empty slots: any valid start, they never move
    gc, dc = cfg.crop, cfg.d_crop
    corners_g, corners_d = _corners(images, seeds, cfg, slots, dev)  # (iterations, S, 2) each
    pix = SlotImages([*images, *[None] * empty], cfg, dev, dtype)
    h = (gc - cfg.kernel_size) // 2 + 1
    noise = SlotNoise([*seeds, *[None] * empty], (3, dc, dc), (3, h, h), dev, dtype)
    mask = torch.tensor([1.0] * n + [0.0] * empty, device=dev, dtype=dtype)
    fused = {"fused": True} if dev.type == "cuda" else {}  # on CUDA one kernel, its step counters on the device (no host read)
    opt_g = torch.optim.Adam(nets.g_params(), lr=cfg.lr, betas=(cfg.beta1, 0.999), **fused)
    opt_d = torch.optim.Adam(nets.d_params(), lr=cfg.lr, betas=(cfg.beta1, 0.999), **fused)
    gan, sum2one, sparse = GANLoss(), SumOfWeightsLoss(), SparsityLoss()
    bounds, central = BoundariesLoss(cfg.kernel_size).to(dev), CentralizedLoss(cfg.kernel_size).to(dev)
    bicubic = torch.tensor(bicubic_kernel(2, 7), dtype=dtype, device=dev)[None, None]
    schedule = DeviceSchedule(slots, dev)
    diverged = torch.full((slots,), -1, dtype=torch.long, device=dev)
    chunk = min(read_every, 50)

    def g_losses(g_in: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G's loss per slot (the per-image path's terms, in its order) and its bicubic term."""
        k = nets.kernels()  # (S, K, K)
        g_out = nets.apply_g(g_in, k)
        loss_bic = _downscale_loss(g_in, g_out, bicubic)
        loss_g = gan(nets.apply_d(g_out), real=True) + w[0] * loss_bic + w[1] * sum2one(k) + w[2] * bounds(k) + w[3] * central(k) + w[4] * sparse(k)
        return loss_g, loss_bic

    def d_losses(d_in: torch.Tensor, g_in: torch.Tensor, f_noise: torch.Tensor) -> torch.Tensor:
        """D's loss per slot: real crops vs G's output (with a little noise)."""
        with torch.no_grad():
            fake = nets.apply_g(g_in, nets.kernels()) + f_noise * (1 / 255)
        return 0.5 * (gan(nets.apply_d(d_in), real=True) + gan(nets.apply_d(fake), real=False))

    if compile:  # static shapes: one graph each (the step counter stays on the host)
        g_losses, d_losses = torch.compile(g_losses, dynamic=False), torch.compile(d_losses, dynamic=False)

    for it in range(cfg.iterations):
        if it % chunk == 0:
            d_noise, f_noise = noise.chunk(min(chunk, cfg.iterations - it))
        t = it % chunk
        d_idx = pix.index(corners_d[it], dc)
        pix.add(d_idx, d_noise[t] * (2 / 255))
        d_in, g_in = pix.crop(d_idx), pix.crop(pix.index(corners_g[it], gc))
        w = schedule.weights(dtype)  # (5, S)

        loss_g, loss_bic = g_losses(g_in, w)  # G step: fool D, within the kernel constraints
        _step(opt_g, loss_g * mask)
        loss_d = d_losses(d_in, g_in, f_noise[t])  # D step
        _step(opt_d, loss_d * mask)

        bad = ~(torch.isfinite(loss_g.detach()) & torch.isfinite(loss_d.detach()))
        diverged = torch.where(bad & (diverged < 0), torch.full_like(diverged, it), diverged)
        schedule.update(it, loss_bic)
        ConstraintSchedule.decay_learning_rate(it, (opt_g, opt_d))
        if progress is not None and (it + 1) % read_every == 0:  # the loop's only read to the host
            real = mask > 0
            progress(it + 1, {"g": round(loss_g.detach()[real].mean().item(), 5), "d": round(loss_d.detach()[real].mean().item(), 5)})
    with torch.no_grad():
        raws = nets.kernels()[:n].double().cpu().numpy()
    losses = torch.stack([loss_g.detach(), loss_d.detach(), loss_bic.detach()])[:, :n].cpu().tolist()
    return [
        _estimate(raws[i], dict(zip(("g", "d", "bicubic"), col)), step, cfg, seed)
        for i, (col, step, seed) in enumerate(zip(zip(*losses), diverged.tolist(), seeds))
    ]


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Gradients of the summed per-slot losses for this optimiser's parameters only (the other
    network's weight gradients are never needed), then its step."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for p, grad in zip(params, torch.autograd.grad(loss.sum(), params)):
        p.grad = grad
    opt.step()


def _downscale_loss(g_in: torch.Tensor, g_out: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
    """`DownScaleLoss` for all slots in one convolution (the same bicubic kernel for every slot)."""
    down = F.conv2d(F.pad(g_in, (3, 3, 3, 3)).flatten(0, 1)[:, None], bicubic, stride=2)  # (S*3, 1, h, w)
    down = down.view(*g_in.shape[:2], *down.shape[2:])
    return ((g_out - shave_to(down, g_out)) ** 2).flatten(1).mean(1)


def _corners(images: list[np.ndarray], seeds: list[int], cfg: KernelGANConfig, slots: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(iterations, S, 2) corners of G's and D's crops: each run's `CropSampler` draws with its
    seed (G's first), as the per-image path; an image's crop probabilities are computed once for
    all its seeds. Empty slots crop at (0, 0)."""
    maps: dict[int, CropSampler] = {}
    g = np.zeros((cfg.iterations, slots, 2), dtype=np.int64)
    d = np.zeros_like(g)
    for i, (img, seed) in enumerate(zip(images, seeds)):
        if id(img) not in maps:
            maps[id(img)] = CropSampler(img, cfg.crop, cfg.d_crop, np.random.default_rng(seed))
        sampler = copy.copy(maps[id(img)])
        sampler.rng = np.random.default_rng(seed)
        g[:, i] = sampler.corners(cfg.iterations, for_g=True)
        d[:, i] = sampler.corners(cfg.iterations, for_g=False)
    return torch.from_numpy(g).to(dev), torch.from_numpy(d).to(dev)


def _estimate(raw: np.ndarray, losses: dict, step: int, cfg: KernelGANConfig, seed: int) -> KernelEstimate:
    """One run's result, judged as `train_kernels` judges it."""
    kernel, problem = None, None
    if step >= 0:
        problem = f"KernelGAN diverged: its losses became NaN/inf at step {step} of {cfg.iterations}"
    elif reason := collapse(raw):
        problem = f"KernelGAN failed: {reason}"
    else:
        try:
            kernel = finalize_kernel(raw, cfg.n_filtering)
        except ValueError as e:
            problem = f"KernelGAN ended with an unusable kernel: {e}"
    return KernelEstimate(kernel, raw, losses, cfg.iterations, step if step >= 0 else None, problem, seed)


def estimate_kernels_fused(
    images: list[np.ndarray],
    cfg: KernelGANConfig = KernelGANConfig(),
    device: str = "cpu",
    progress=None,
    slots: int | None = None,
    read_every: int = READ_EVERY,
) -> list[KernelEstimate]:
    """`models.kernelgan.estimate_kernels` (plain KernelGAN) with every (image, seed) run a slot:
    the same seeds (seed, seed + SEED_STRIDE, ...), retries (a failed run again at its seed + 1,
    + 2, ...) and consensus of the seeds, in networks of `slots` slots (None: `SLOTS` runs at
    most, each network's slot count a multiple of `SLOT_MULTIPLE`)."""
    seeds = [cfg.seed + SEED_STRIDE * j for j in range(cfg.seeds)]
    runs = [(i, s) for i in range(len(images)) for s in seeds]  # an image's seeds side by side
    out = dict(zip(runs, _train_runs(images, runs, cfg, device, progress, slots, read_every)))
    tried = {r: [r[1]] for r in runs}
    for attempt in range(1, cfg.retries + 1):
        failed = [r for r in runs if not out[r].ok]
        if not failed:
            break
        for r, e in zip(failed, _train_runs(images, [(i, s + attempt) for i, s in failed], cfg, device, progress, slots, read_every)):
            tried[r].append(r[1] + attempt)
            out[r] = e if e.ok else replace(e, problem=f"{e.problem} (seeds {', '.join(map(str, tried[r]))})")
    per_image = [[out[(i, s)] for s in seeds] for i in range(len(images))]
    return [consensus_estimate(e, cfg.n_filtering) if cfg.seeds > 1 else e[0] for e in per_image]


def _train_runs(images, runs: list[tuple[int, int]], cfg: KernelGANConfig, device, progress, slots: int | None, read_every: int) -> list[KernelEstimate]:
    """(image index, seed) runs trained `slots` (or `SLOTS`) at a time."""
    out = []
    cap = slots or (GPU_SLOTS if torch.device(device).type == "cuda" else SLOTS)
    for a in range(0, len(runs), cap):
        batch = runs[a : a + cap]
        n = slots or -(-len(batch) // SLOT_MULTIPLE) * SLOT_MULTIPLE
        out += train_slots([images[i] for i, _ in batch], [s for _, s in batch], cfg, device, n, read_every, progress)
    return out
