"""The discriminators of RealSR's training: the paper's PatchGAN, ESRGAN's VGG-128, and
Real-ESRGAN's U-Net.

RealSR replaced ESRGAN's VGG-128 (one score per 128 px crop) by pix2pix's PatchGAN (one score per
70x70 window), which judges texture locally and lets the generator keep fewer artefacts of its
own; the VGG-128 stays available for reproducing ESRGAN. Real-ESRGAN's U-Net gives one score per
pixel, with spectral norm for stability; it is written with BasicSR's names so that the released
`RealESRGAN_x4plus_netD.pth` can start a fine-tune instead of a D from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The constructor arguments; the training state carries them."""

    arch: str = "patchgan"  # patchgan, vgg128 or unet
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


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation: a logit per input pixel.

    conv0 (3x3), then three 4x4 stride-2 halvings (conv1-3), three bilinear x2 upsamplings each
    followed by a 3x3 convolution (conv4-6) and, with `skip_connection`, the sum with the encoder
    feature of that size; two more 3x3 (conv7, conv8) and a 1-channel 3x3 (conv9). Spectral norm
    on conv1-conv8 in torch's hook form (`torch.nn.utils.spectral_norm`), whose state-dict names
    (`conv1.weight_orig`, `conv1.weight_u`, `conv1.weight_v`) are those of BasicSR's files.
    LeakyReLU(0.2) after every convolution but the last. Sides must be multiples of 8.

    Args:
        num_feat: channels of conv0; the encoder doubles them to 8x.
        skip_connection: add the encoder features to the decoder's (Real-ESRGAN: True).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        f = num_feat
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"the U-Net discriminator takes sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        act = lambda t: F.leaky_relu(t, 0.2, inplace=True)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))  # (N, f, H, W)
        x1 = act(self.conv1(x0))  # (N, 2f, H/2, W/2)
        x2 = act(self.conv2(x1))  # (N, 4f, H/4, W/4)
        x3 = act(self.conv3(x2))  # (N, 8f, H/8, W/8)
        x4 = act(self.conv4(up(x3)))  # (N, 4f, H/4, W/4)
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))  # (N, 2f, H/2, W/2)
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))  # (N, f, H, W)
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv8(act(self.conv7(x6))))
        return self.conv9(out)  # (N, 1, H, W): one logit per pixel


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    if cfg.arch == "patchgan":
        return PatchGAN(3, cfg.num_feat, cfg.num_layers)
    if cfg.arch == "vgg128":
        return VGGStyleDiscriminator128(3, cfg.num_feat)
    if cfg.arch == "unet":
        return UNetDiscriminatorSN(3, cfg.num_feat, skip_connection=True)
    raise ValueError(f"unknown discriminator {cfg.arch!r} (patchgan, vgg128 or unet)")
