"""One ESRGAN training step (G, then D, then the EMA of G), as BasicSR's ESRGANModel does it.

Pure tensors: no disk, no data loading. `Trainer` holds the networks, optimisers and LR
schedules and can hand all of it over as a state dict, so a resumed run continues bitwise.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from realsr.models.errors import RealsrError
from realsr.models.losses import GAN_LOSSES, PerceptualLoss, artifact_map


class Diverged(RealsrError, FloatingPointError):
    """G's loss left the finite numbers: training stops rather than step on with NaN weights."""


@dataclass(frozen=True)
class LossWeights:
    """RealSR's (and ESRGAN's) weights and GAN; the warm-up stage uses L1 alone at weight 1.
    `artifacts` > 0 adds LDL's artifact loss (`losses.artifact_map`, against the EMA's output).
    No defaults: `flows.train_settings` (the presets) declares every value."""

    pixel: float
    perceptual: float
    gan: float
    gan_type: str  # "ragan" or "vanilla" (Real-ESRGAN)
    artifacts: float


ADAM_BETAS = (0.9, 0.999)  # ESRGAN's, BasicSR's and Real-ESRGAN's Adam: not a setting
LR_GAMMA = 0.5  # both learning rates halve at each milestone


@dataclass(frozen=True)
class Schedule:
    """The learning rates and their milestones (no defaults: `flows.train_settings` declares them)."""

    lr_g: float
    lr_d: float
    milestones: tuple[int, ...]

    betas = ADAM_BETAS  # class constants, not fields
    gamma = LR_GAMMA


class EMA:
    """An exponential moving average of G's parameters (BasicSR's `model_ema`, decay 0.999):
    the weights that are saved as `params_ema` and that inference uses.

    Given the iteration, the decay ramps up as min(decay, (1 + t) / (10 + t)) (TensorFlow's
    `num_updates`): with a fixed 0.999, after 2000 iterations 13 % of the average would still be
    the random initialisation, and short runs from scratch would save it as their model. From a
    trained generator the decay stays fixed: there the slow average is what keeps a short
    fine-tune from moving to an early, noisy G (BENCHMARKS.md: LPIPS 0.417 with the ramp after
    200 iterations, 0.309 without).
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def decay_at(self, iteration: int | None) -> float:
        return self.decay if iteration is None else min(self.decay, (1 + iteration) / (10 + iteration))

    @torch.no_grad()
    def update(self, net: nn.Module, iteration: int | None = None) -> None:
        d = self.decay_at(iteration)
        torch._foreach_lerp_(
            list(self.net.parameters()), [p.detach() for p in net.parameters()], 1 - d
        )  # e + (1 - d)(p - e), one kernel for all (3x the loop's speed)
        for e, b in zip(self.net.buffers(), net.buffers()):
            e.copy_(b)


def train_tail(g: nn.Module, blocks: int) -> int:
    """Freeze G's head (conv_first and the trunk's first RRDBs), leaving the last `blocks` RRDBs,
    conv_body and the upsampler to learn; 0 leaves all of G to learn. Autograd then records nothing
    before the first learning block, so the backward pass skips the frozen part. Returns the
    learning parameters' count."""
    body = getattr(g, "body", None)
    if blocks:
        if body is None or blocks > len(body):
            raise ValueError(f"G has {len(body) if body is not None else 'no'} RRDB blocks; cannot train the last {blocks}")
        for p in g.conv_first.parameters():
            p.requires_grad_(False)
        for block in body[: len(body) - blocks]:
            for p in block.parameters():
                p.requires_grad_(False)
    return sum(p.numel() for p in g.parameters() if p.requires_grad)


class Trainer:
    """G, D, their Adam optimisers and MultiStepLR schedules, the EMA, and the losses.

    Args:
        g, d: the generator and discriminator (moved to `device` by the caller).
        perceptual: the VGG19 loss; None leaves it out (weights.perceptual is ignored).
        autocast: a dtype for `torch.autocast` on `device` (bf16 on GPUs), None for fp32.
    """

    def __init__(
        self,
        g: nn.Module,
        d: nn.Module,
        perceptual: PerceptualLoss | None,
        weights: LossWeights,
        schedule: Schedule,
        ema_decay: float,
        device: torch.device | str = "cpu",
        autocast: torch.dtype | None = None,
    ):
        self.g, self.d, self.perceptual, self.weights = g, d, perceptual, weights
        self.device = torch.device(device)
        self.autocast = autocast
        fused = self.device.type in ("cpu", "cuda")  # one fused kernel: 0.05 against 0.15 s for x4plus's 16.7 M parameters on this CPU
        self.opt_g = torch.optim.Adam(
            [p for p in g.parameters() if p.requires_grad], lr=schedule.lr_g, betas=schedule.betas, fused=fused
        )  # `train_tail` may freeze a head
        self.d_loss, self.g_loss = GAN_LOSSES[weights.gan_type]
        self.opt_d = torch.optim.Adam(d.parameters(), lr=schedule.lr_d, betas=schedule.betas, fused=fused)
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, list(schedule.milestones), schedule.gamma)
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, list(schedule.milestones), schedule.gamma)
        self.ema = EMA(g, ema_decay)

    def _cast(self):
        return torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()

    def step(self, lr: torch.Tensor, hr: torch.Tensor, warmup: bool = False, iteration: int | None = None) -> dict[str, float]:
        """One iteration on a batch (N, 3, h, w) -> (N, 3, sh, sw); returns the loss values.
        `iteration` (1, 2, ...) ramps the EMA's decay up (`EMA`); None keeps it fixed.

        Warm-up: L1 alone at weight 1 (the PSNR-oriented start ESRGAN needs from scratch), no D.
        Otherwise G minimises pixel + perceptual + RaGAN (D frozen), then D its RaGAN loss on
        the detached fakes, with BatchNorm seeing real and fake crops in separate passes.
        Over the 60-line limit on purpose: one step in the order its golden pins bitwise
        (tests/test_recipe.py, tests/test_behaviour_golden.py); the losses are already split out.
        """
        self.g.train()
        for p in self.d.parameters():
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._cast():
            fake = self.g(lr)
        fake = fake.float()
        logs: dict[str, float] = {}
        if warmup:
            loss = F.l1_loss(fake, hr)
            logs["l_pix"] = loss.item()
        else:
            w = self.weights
            l_pix = F.l1_loss(fake, hr) * w.pixel
            loss = l_pix
            logs["l_pix"] = l_pix.item()
            if self.perceptual is not None and w.perceptual:
                with self._cast():
                    l_percep = self.perceptual(fake, hr).float() * w.perceptual
                loss = loss + l_percep
                logs["l_percep"] = l_percep.item()
            if w.artifacts:
                with torch.no_grad(), self._cast():
                    sr_ema = self.ema.net(lr).float()
                weight = artifact_map(hr, fake, sr_ema)
                l_art = F.l1_loss(weight * fake, weight * hr) * w.artifacts
                loss = loss + l_art
                logs["l_artifacts"] = l_art.item()
            self.d.train()
            with self._cast():
                real_logits = self.d(hr).detach().float()
                fake_logits = self.d(fake).float()
            l_gan = self.g_loss(real_logits, fake_logits) * w.gan
            loss = loss + l_gan
            logs["l_g_gan"] = l_gan.item()
        if not torch.isfinite(loss):
            raise Diverged(f"G's loss is {loss.item()} ({', '.join(f'{k} {v:.4g}' for k, v in logs.items())}): training diverged")
        loss.backward()
        self.opt_g.step()
        if not warmup:
            for p in self.d.parameters():
                p.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            with self._cast():
                fake_logits = self.d(fake.detach()).float()
                real_logits = self.d(hr).float()
            l_d = self.d_loss(real_logits, fake_logits)
            l_d.backward()
            self.opt_d.step()
            logs.update(l_d=l_d.item(), d_real=real_logits.mean().item(), d_fake=fake_logits.mean().item())
        self.sched_g.step()
        with warnings.catch_warnings():  # in the warm-up D's schedule moves on without D stepping: intended
            warnings.simplefilter("ignore", UserWarning)
            self.sched_d.step()
        self.ema.update(self.g, iteration)
        return logs

    def state_dict(self) -> dict:
        """Everything but the networks' weights (saved as BasicSR's net_g / net_d files)."""
        return {
            "optimizers": [self.opt_g.state_dict(), self.opt_d.state_dict()],
            "schedulers": [self.sched_g.state_dict(), self.sched_d.state_dict()],
        }

    def load_state_dict(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["optimizers"][0])
        self.opt_d.load_state_dict(state["optimizers"][1])
        self.sched_g.load_state_dict(state["schedulers"][0])
        self.sched_d.load_state_dict(state["schedulers"][1])
