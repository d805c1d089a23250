"""ESRGAN's generator, RRDBNet (Wang et al. 2018), with BasicSR's parameter names.

The names matter: the released RealSR and Real-ESRGAN generators (and every file BasicSR,
Real-ESRGAN and chaiNNer write or read) address their tensors as `conv_first`,
`body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`, so
`load_state_dict(strict=True)` works both ways. x2 and x1 models see the input pixel-unshuffled
(BasicSR's convention: the trunk always runs at a quarter of the output size per side).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RRDBConfig:
    """The constructor arguments; a checkpoint carries them so the net can be rebuilt from the file."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32

    def as_dict(self) -> dict:
        return asdict(self)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the output is scaled by 0.2 and added back.

    Args:
        num_feat: channels in and out.
        num_grow_ch: channels each of the first four convolutions adds.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, their sum scaled by 0.2 and added back."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The generator: a trunk of RRDBs at LR size, then two nearest x2 upsamplings with convs.

    Args (as `RRDBConfig`): channels in/out, scale (1, 2 or 4), trunk width `num_feat`,
    `num_block` RRDBs, growth `num_grow_ch`. Input RGB in [0, 1], NCHW; output `scale` times larger.
    """

    def __init__(self, config: RRDBConfig = RRDBConfig()):
        super().__init__()
        if config.scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {config.scale}")
        self.config = config
        unshuffle = {4: 1, 2: 4, 1: 16}[config.scale]  # x2: pixel-unshuffle by 2; x1: by 4
        nf = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * unshuffle, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.scale != 4:
            r = 4 // self.config.scale
            h, w = x.shape[-2:]
            if h % r or w % r:  # pixel-unshuffle needs whole blocks: mirror-pad, then crop the output
                x = F.pad(x, (0, (-w) % r, 0, (-h) % r), mode="reflect")
            feat = self.conv_first(F.pixel_unshuffle(x, r))
        else:
            h, w = x.shape[-2:]
            feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : h * self.config.scale, : w * self.config.scale]
