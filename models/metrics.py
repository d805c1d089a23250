"""PSNR, SSIM (on Y or RGB) and LPIPS, as BasicSR and the NTIRE 2020 ranking computed them.

Images are HWC RGB float in [0, 1]. Y is MATLAB's `rgb2ycbcr` luma (16-235 on the 0-255
scale); `crop_border` pixels are dropped on each side first (the scale, by convention).
PSNR and SSIM are computed on the 0-255 scale; SSIM is Wang et al.'s with an 11x11 Gaussian
window (sigma 1.5), its valid part averaged, and over RGB the channel mean.
LPIPS is the official `lpips` package's v0.1 with the AlexNet trunk (the NTIRE 2020 metric).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

MATLAB_Y = np.array([65.481, 128.553, 24.966]) / 255.0  # of RGB in [0, 1] -> Y in [0, 1] after + 16/255


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2ycbcr luma of RGB in [0, 1], on the 0-255 scale (16..235)."""
    return (img.astype(np.float64) @ MATLAB_Y) * 255.0 + 16.0


def _prepare(sr: np.ndarray, hr: np.ndarray, crop_border: int, y: bool) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in size")
    if crop_border:
        sr, hr = sr[crop_border:-crop_border, crop_border:-crop_border], hr[crop_border:-crop_border, crop_border:-crop_border]
    if y:
        return rgb_to_y(sr)[..., None], rgb_to_y(hr)[..., None]
    return sr.astype(np.float64) * 255.0, hr.astype(np.float64) * 255.0


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y: bool = True) -> float:
    a, b = _prepare(sr, hr, crop_border, y)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = cv2.getGaussianKernel(11, 1.5)
    win = k @ k.T
    f = lambda x: cv2.filter2D(x, -1, win)[5:-5, 5:-5]  # noqa: E731  (the valid part)
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(m.mean())


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y: bool = True) -> float:
    a, b = _prepare(sr, hr, crop_border, y)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after the crop, got {a.shape[1]}x{a.shape[0]}")
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


class LPIPS:
    """LPIPS-alex v0.1 from local files: the trunk from torchvision's AlexNet file (or its features
    alone), the linear heads from `lin_path` (default: the copy the `lpips` package carries).
    Nothing is downloaded here: storage.weights finds and verifies both files.
    """

    def __init__(self, alexnet_path: Path, lin_path: Path | None = None, device: str | torch.device = "cpu"):
        import lpips

        self.device = torch.device(device)
        kwargs = {"model_path": str(lin_path)} if lin_path else {}
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False, **kwargs)
        state = torch.load(alexnet_path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v.float() for k, v in state.items()}
        for block in (self.net.net.slice1, self.net.net.slice2, self.net.net.slice3, self.net.net.slice4, self.net.net.slice5):
            for name, module in block.named_children():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.data.copy_(state[f"{name}.weight"])
                    module.bias.data.copy_(state[f"{name}.bias"])
        self.net.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, sr: np.ndarray, hr: np.ndarray) -> float:
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))[None].to(self.device) * 2 - 1  # noqa: E731
        return float(self.net(t(sr), t(hr)).item())
