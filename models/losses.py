"""ESRGAN's losses as RealSR trains with them: pixel L1, VGG19 perceptual L1, relativistic GAN;
and Real-ESRGAN's and LDL's variants, for fine-tuning a released generator.

The perceptual loss compares VGG19 features *before* the ReLU (ESRGAN's choice: after it, most
activations of a dark or flat crop are zero and give no gradient): conv5_4 alone as ESRGAN and
RealSR, or conv1_2..conv5_4 weighted 0.1, 0.1, 1, 1, 1 as Real-ESRGAN trained x4plus. The GAN is
relativistic average (RaGAN): D asks "is the real crop more real than the average fake?", and
G's loss uses the real logits too, so G gets gradients from both sides; or vanilla (Real-ESRGAN's,
with its per-pixel U-Net discriminator).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg19().features indices: conv5_4 is layer 34 (before its ReLU at 35)
VGG19_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
ESRGAN_LAYERS = "conv5_4"
REALESRGAN_LAYERS = "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_layers(spec: str) -> dict[str, float]:
    """'conv5_4' or 'conv1_2:0.1,conv2_2:0.1,...' -> {layer: weight}, in the trunk's order."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        if name not in VGG19_LAYERS:
            raise ValueError(f"unknown VGG19 layer {name!r} (one of {', '.join(VGG19_LAYERS)})")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"the weight of {name} is not a number: {weight!r}") from None
        if not w >= 0:
            raise ValueError(f"the weight of {name} must be >= 0, got {weight}")
        out[name] = w
    if not out or not any(out.values()):
        raise ValueError(f"no perceptual layer with a weight above 0 in {spec!r}")
    return dict(sorted(out.items(), key=lambda kv: VGG19_LAYERS[kv[0]]))


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
    """Weighted L1 between VGG19 features of SR and HR, inputs RGB in [0, 1] (ImageNet-normalised here).

    Args:
        trunk: `vgg19_features(...)` up to the deepest layer; it stays frozen (and in eval mode
            whatever `train()` says).
        layers: {layer: weight} (`parse_layers`); None: the trunk's last layer at weight 1.
    """

    def __init__(self, trunk: nn.Sequential, layers: dict[str, float] | None = None):
        super().__init__()
        self.trunk = trunk
        self.layers = {VGG19_LAYERS[k]: w for k, w in layers.items() if w} if layers else {len(trunk) - 1: 1.0}
        if max(self.layers) >= len(trunk):
            raise ValueError(f"the VGG19 trunk ends at layer {len(trunk) - 1}, the loss asks for {max(self.layers)}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.trunk.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The chosen layers' outputs (copied before the in-place ReLU that follows each)."""
        x = (x - self.mean) / self.std
        out, last = [], max(self.layers)
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.layers:
                out.append(x if i == last else x.clone())
            if i == last:
                break
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(hr)
        losses = [F.l1_loss(a, b) * w for a, b, w in zip(self.features(sr), target, self.layers.values())]
        return sum(losses[1:], losses[0])  # conv5_4 alone: exactly ESRGAN's L1


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


def vanilla_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's plain GAN loss, as Real-ESRGAN trains its U-Net D: real -> 1, fake -> 0 (summed)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )


def vanilla_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's plain GAN loss: fakes judged real (the real logits are unused, kept for one signature)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


GAN_LOSSES = {"ragan": (ragan_d_loss, ragan_g_loss), "vanilla": (vanilla_d_loss, vanilla_g_loss)}


def artifact_map(hr: torch.Tensor, sr: torch.Tensor, sr_ema: torch.Tensor, ksize: int = 7) -> torch.Tensor:
    """LDL's artifact map (Liang et al., CVPR 2022): where G's residual is locally erratic and larger
    than the EMA model's, weighted by the crop's residual variance; zero elsewhere. (N, 1, H, W),
    no gradient: the loss L1(map * SR, map * HR) pushes only those pixels back."""
    with torch.no_grad():
        res = (hr - sr).abs().sum(1, keepdim=True)
        res_ema = (hr - sr_ema).abs().sum(1, keepdim=True)
        patch = res.var(dim=(-1, -2, -3), keepdim=True) ** 0.2
        pad = (ksize - 1) // 2
        windows = F.pad(res, (pad, pad, pad, pad), mode="reflect").unfold(2, ksize, 1).unfold(3, ksize, 1)
        pixel = windows.var(dim=(-1, -2), unbiased=True)
        weight = patch * pixel
        return weight.masked_fill(res < res_ema, 0.0)
