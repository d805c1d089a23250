"""train-flow's degradation on the training device (setting `degrade_on`): the loader draws, the
device degrades a whole batch.

Loader workers (`CleanCrops`) keep only what needs the photo and the random stream: sample n's
crop (flipped and turned), its kernel, its noise rows and offset, its quality, drawn from the
stream (seed, n) in the order `DegradedCrops.sample` draws them, so a sample gets the same draws
on both paths. The brightness the noise draw matches is the LR's, read off the HR crop through
`lr_mean_weights` (the blur's adjoint) instead of blurring it there.

The device (`DeviceDegradation`) then blurs, subsamples, adds the noise, quantises and
re-compresses the batch (`models.degradation_batched`), the noise bank held there as one tensor;
HEIC stays a per-sample CPU codec. Batches come in page-locked memory on CUDA, and the next
one is on its way to the device while the current one trains (`device_batches`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from realsr.models.degradation import LUMA_WEIGHTS
from realsr.models.degradation_batched import aligned_stack, blur_subsample, jpeg, lr_mean_weights, noise_fields, quantise
from realsr.models.noise import noise_cells, pick_noise
from realsr.steps.train_data import DegradedCrops, batches, jittered

WEIGHT_MAPS = 256  # kernels whose brightness maps a loader process keeps (each hr_size^2 float64 per noise cell)


def where_to_degrade(setting: str, device: torch.device) -> tuple[str, str]:
    """('loader' or 'device', why) for the `degrade_on` setting on `device`."""
    if setting != "auto":
        return setting, f"degradation in {'the loader workers' if setting == 'loader' else 'batches on ' + str(device)} (degrade_on {setting})"
    if device.type == "cuda":
        return "device", f"degradation in batches on {device} (degrade_on auto: loader workers starve a GPU)"
    return "loader", "degradation in the loader workers (degrade_on auto on a CPU: there the batched path takes the training process's time, BENCHMARKS.md)"


class CleanCrops(torch.utils.data.Dataset):
    """Sample n -> (HR uint8 (3, H, W), kernel index, noise rows (cells,), noise offset (2,),
    quality (0: none), HEIC or not): what `DeviceDegradation` needs of it."""

    def __init__(self, data: DegradedCrops):
        self.data = data
        c = data.cfg
        self.lr_size = c.hr_size // c.scale
        self.noisy = bool(c.noise and data.noise_count)
        self._maps: dict[int, np.ndarray] = {}
        self._bank_brightness: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data)

    def cells(self) -> tuple[list[tuple[int, int]], int]:
        """The LR's cells a noise draw matches one by one (one cell where a patch covers the crop)."""
        patch = self.data.bank().patch_size
        return ([(0, 0)], self.lr_size) if patch >= self.lr_size else (noise_cells(self.lr_size, patch), patch)

    def brightness(self, hr: np.ndarray, k: int) -> list[float]:
        """The LR's luma (0-255) per cell, as `noise.crop_brightness` reads it off the blurred crop."""
        maps = self._maps.get(k)
        if maps is None:
            if len(self._maps) >= WEIGHT_MAPS:
                self._maps.pop(next(iter(self._maps)))
            c = self.data.cfg
            aligned, anchor = aligned_stack(self.data.kernels[k : k + 1], c.scale)
            cells, side = self.cells()
            maps = self._maps[k] = lr_mean_weights(aligned[0], anchor, c.scale, c.hr_size, cells, side)
        luma = (hr.astype(np.float32) / 255.0).astype(np.float64) @ LUMA_WEIGHTS  # (H, W)
        return (255.0 * np.einsum("chw,hw->c", maps, luma)).tolist()

    def __getitem__(self, n: int):
        c, d = self.data.cfg, self.data.draw(n)
        picks, offset = np.zeros(1, np.int64), np.zeros(2, np.int64)
        if self.noisy:
            bank = self.data.bank()
            if c.noise_match_brightness and self._bank_brightness is None:
                self._bank_brightness = bank.column("gray_mean").astype(np.float64)
            wanted = [self.brightness(d.hr, d.kernel) if c.noise_match_brightness else None]
            rows, offsets = pick_noise(d.rng, bank.count, bank.patch_size, self.lr_size, wanted, self._bank_brightness if c.noise_match_brightness else None)
            picks, offset = np.asarray(rows[0], np.int64).ravel(), np.asarray(offsets[0], np.int64)
        quality = jittered(d.quality, c.jpeg_range, d.rng) if d.quality else 0
        hr = torch.from_numpy(d.hr.transpose(2, 0, 1).copy())
        return hr, d.kernel, torch.from_numpy(picks), torch.from_numpy(offset), quality, d.codec == "heic"


class DeviceDegradation:
    """A batch of `CleanCrops` -> (LR, HR) float32 on the device, as `DegradedCrops.degrade`."""

    def __init__(self, data: DegradedCrops, device: torch.device):
        c = data.cfg
        self.scale, self.lr_size, self.device = c.scale, c.hr_size // c.scale, torch.device(device)
        aligned, self.anchor = aligned_stack(data.kernels, c.scale)
        self.kernels = aligned.to(self.device)
        self.bank = None
        if c.noise and data.noise_count:  # the whole bank, read once (float16 or uint8 as stored: 0.4 GB for 64,000 32 px tiles)
            self.bank = torch.from_numpy(np.ascontiguousarray(data.bank().noise(np.arange(data.noise_count)))).to(self.device)

    def __call__(self, hr: torch.Tensor, kernel: torch.Tensor, picks: torch.Tensor, offsets: torch.Tensor, quality, heic) -> tuple[torch.Tensor, torch.Tensor]:
        hr = hr.to(self.device, non_blocking=True).float() / 255.0  # (B, 3, H, W)
        lr = blur_subsample(hr, self.kernels[kernel.to(self.device)], self.anchor, self.scale)
        if self.bank is not None:
            lr = (lr + noise_fields(self.bank, picks.to(self.device), offsets.to(self.device), self.lr_size)).clamp_(0.0, 1.0)
        lr = quantise(lr)
        q, h = [int(v) for v in quality], [bool(v) for v in heic]  # host values, from the loader
        self.coded = [None] * len(q)  # each sample's JPEG bytes (tests read the quality back)
        if any(v and not is_heic for v, is_heic in zip(q, h)):
            lr, self.coded = jpeg(lr, [0 if is_heic else v for v, is_heic in zip(q, h)])
        for i in [i for i, (v, is_heic) in enumerate(zip(q, h)) if v and is_heic]:
            lr[i] = _heic(lr[i], q[i])
        return lr.float() / 255.0, hr


def _heic(lr: torch.Tensor, quality: int) -> torch.Tensor:
    """One sample through the HEIC codec (x265 via pillow-heif: a CPU codec, per sample)."""
    from realsr.models.jpeg import heic_recompress

    back = heic_recompress(lr.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0, quality)
    return quantise(torch.from_numpy(back).permute(2, 0, 1)).to(lr.device)


def degrade_samples(data: DegradedCrops, samples, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list]:
    """(LR, HR, the loader's items) of `samples` degraded as one batch on `device` (tests, benches)."""
    items = [CleanCrops(data)[int(n)] for n in samples]
    lr, hr = DeviceDegradation(data, torch.device(device))(*torch.utils.data.default_collate(items))
    return lr, hr, items


@contextmanager
def device_batches(data: DegradedCrops, batch_size: int, start: int, stop: int, workers: int, device: torch.device) -> Iterator[Iterator]:
    """(LR, HR) on `device` for iterations start+1 .. stop, the samples of `batches`'s, degraded there."""
    degrade = DeviceDegradation(data, device)
    with batches(CleanCrops(data), batch_size, start, stop, workers, pin=device.type == "cuda") as it:
        yield _ahead(it, degrade, device)


def _ahead(it, degrade: DeviceDegradation, device: torch.device):
    """Each batch degraded while the next one's copy to the device is already under way."""

    def send(batch):
        if batch is None:
            return None
        hr, kernel, picks, offsets, quality, heic = batch
        moved = (t.to(device, non_blocking=True) for t in (hr, kernel, picks, offsets))
        return (*moved, quality, heic)  # quality and HEIC stay on the host: the codecs are chosen there

    ahead = send(next(it, None))
    while ahead is not None:
        current, ahead = ahead, send(next(it, None))
        yield degrade(*current)
