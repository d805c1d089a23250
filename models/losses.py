"""ESRGAN's losses as RealSR trains with them: pixel L1, VGG19 perceptual L1, relativistic GAN.

The perceptual loss compares VGG19 conv5_4 features *before* the ReLU (ESRGAN's choice: after
it, most activations of a dark or flat crop are zero and give no gradient). The GAN is
relativistic average (RaGAN): D asks "is the real crop more real than the average fake?",
and G's loss uses the real logits too, so G gets gradients from both sides.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg19().features indices: conv5_4 is layer 34 (before its ReLU at 35)
VGG19_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(weights: Path, last: str = "conv5_4") -> nn.Sequential:
    """torchvision's VGG19 trunk up to `last` (inclusive), frozen and in eval mode.

    `weights`: torchvision's VGG19 file or its features alone (`features.N.weight` ...), loaded
    with `weights_only=True` (storage.weights finds and verifies it).
    """
    from torchvision.models import vgg19

    end = VGG19_LAYERS[last] + 1
    trunk = vgg19(weights=None).features[:end]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k.removeprefix("features."): v.float() for k, v in state.items() if not k.startswith("classifier.")}
    trunk.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < end}, strict=True)
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk.eval()


class PerceptualLoss(nn.Module):
    """L1 between VGG19 features of SR and HR, inputs RGB in [0, 1] (ImageNet-normalised here).

    Args:
        trunk: `vgg19_features(...)`; it stays frozen (and in eval mode whatever `train()` says).
    """

    def __init__(self, trunk: nn.Sequential):
        super().__init__()
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        f = lambda x: self.trunk((x - self.mean) / self.std)  # noqa: E731
        with torch.no_grad():
            target = f(hr)
        return F.l1_loss(f(sr), target)


def ragan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's relativistic average loss: real above the mean fake, fake below the mean real.

    Pass `fake_logits` of detached fakes; the means are over every logit (PatchGAN: every window).
    """
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.zeros_like(fake_logits))
    return (real + fake) / 2


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's relativistic average loss, the mirror of D's: fake above the mean real, real below
    the mean fake. `real_logits` are detached (G does not move D's view of real crops)."""
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.zeros_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.ones_like(fake_logits))
    return (real + fake) / 2
