"""The discriminators of RealSR's training: the paper's PatchGAN, and ESRGAN's VGG-128.

RealSR replaced ESRGAN's VGG-128 (one score per 128 px crop) by pix2pix's PatchGAN (one score per
70x70 window), which judges texture locally and lets the generator keep fewer artefacts of its
own; the VGG-128 stays available for reproducing ESRGAN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The constructor arguments; the training state carries them."""

    arch: str = "patchgan"  # patchgan or vgg128
    num_feat: int = 64
    num_layers: int = 3  # PatchGAN's strided layers (3: a 70x70 receptive field)

    def as_dict(self) -> dict:
        return asdict(self)


class PatchGAN(nn.Module):
    """pix2pix's NLayerDiscriminator: 4x4 convolutions, BatchNorm, LeakyReLU(0.2).

    Three stride-2 layers, one stride-1 layer and a 1-channel stride-1 output: each logit sees a
    70x70 window of the input (`receptive_field`). Output (N, 1, H/8 - 2, W/8 - 2) for 3 layers.

    Args:
        num_feat: channels of the first layer, doubled per layer up to 8x.
        num_layers: stride-2 layers.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(num_feat * prev, num_feat * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(num_feat * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(num_feat * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.num_layers = num_layers

    @property
    def receptive_field(self) -> int:
        """Input pixels one logit sees: 4x4 kernels, strides 2 (num_layers times) then 1, 1."""
        strides = [2] * self.num_layers + [1, 1]
        rf = 1
        for s in reversed(strides):
            rf = (rf - 1) * s + 4
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (N, 1, h, w): one logit per window


class VGGStyleDiscriminator128(nn.Module):
    """ESRGAN's discriminator for 128x128 crops: ten convolutions (BatchNorm after all but the
    first), five stride-2 halvings to 4x4, two linear layers; one logit per crop. BasicSR's
    parameter names (`conv0_0` ... `linear2`), so its files load.

    Args:
        num_feat: channels of the first stage, doubled per stage up to 8x.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64):
        super().__init__()
        f = num_feat
        self.conv0_0 = nn.Conv2d(num_in_ch, f, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(f, f, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(f, affine=True)
        chans = [f, f * 2, f * 4, f * 8, f * 8]
        for i in range(1, 5):
            setattr(self, f"conv{i}_0", nn.Conv2d(chans[i - 1], chans[i], 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(chans[i], affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(chans[i], chans[i], 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(chans[i], affine=True))
        self.linear1 = nn.Linear(f * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (128, 128):
            raise ValueError(f"the VGG-128 discriminator takes 128x128 crops, got {tuple(x.shape[-2:])}")
        x = self.lrelu(self.conv0_0(x))
        x = self.lrelu(self.bn0_1(self.conv0_1(x)))
        for i in range(1, 5):
            x = self.lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(x)))
            x = self.lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(x)))  # (N, 8f, 4, 4) at the end
        return self.linear2(self.lrelu(self.linear1(x.flatten(1))))  # (N, 1)


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    if cfg.arch == "patchgan":
        return PatchGAN(3, cfg.num_feat, cfg.num_layers)
    if cfg.arch == "vgg128":
        return VGGStyleDiscriminator128(3, cfg.num_feat)
    raise ValueError(f"unknown discriminator {cfg.arch!r} (patchgan or vgg128)")
