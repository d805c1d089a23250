"""train-flow's data: clean HR crops from a degrade-flow run, degraded on the fly.

Per sample: an HR crop of a training image, flipped and turned, blurred with the image's own
kernel (the paper; or a bank kernel per sample) and subsampled, a fresh noise crop from the
noise bank added, quantised to 8 bits, then, for JPEG sources, re-compressed at about the
source's own quality. The augmentation comes before the blur, so every LR carries the camera's
kernel as it is, not turned.

Sample `n` is drawn from its own random stream (seed, n): the data do not depend on the worker
count, the order workers finish in, or where a resumed run starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realsr.models.degradation import degrade, inject_noise, to_uint8
from realsr.models.jpeg import recompress
from realsr.storage.banks import open_kernel_bank, open_noise_bank
from realsr.storage.images import read_png_uint8
from realsr.steps.degrade import recorded_quality
from realsr.steps.degrade_noise import draw_noise
from realsr.storage.run_dir import MARKER, RunDir


class TrainingDataError(ValueError):
    """The run folder cannot feed training; raised before any network is built."""


@dataclass(frozen=True)
class TrainImage:
    name: str  # the clean HR's stem: <source stem>-<sha8>
    clean_hr: str
    source: str
    kernel_index: int  # into the kernel bank's set of the run's scale
    jpeg_quality: int | None
    pairs: tuple[str, ...]  # its degrade-flow pair names (validation uses the held-out images')


def run_scale(run: RunDir) -> int:
    try:
        return int(json.loads((run.root / MARKER).read_text())["settings"]["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainingDataError(f"{run.root}: not a degrade-flow run folder (no readable {MARKER} with its settings)") from None


def training_images(run: RunDir, hr_size: int, val_images: int) -> tuple[list[TrainImage], list[TrainImage], list[str]]:
    """(training images, held-out images, notes) from the run's manifest, clean HR and banks.

    Refuses, with what to do: no manifest, a kernel bank without a valid kernel at the run's
    scale, no clean HR image large enough for a crop.
    """
    scale = run_scale(run)
    if hr_size % scale:
        raise TrainingDataError(f"hr_size {hr_size} is not a multiple of the run's scale x{scale}")
    if not run.manifest.is_file():
        raise TrainingDataError(f"{run.manifest}: no pair manifest; run degrade-flow on this folder first")
    try:
        _, sets = open_kernel_bank(run.kernels)
    except (FileNotFoundError, ValueError) as e:
        raise TrainingDataError(f"kernel bank: {e}") from None
    if scale not in sets or not len(sets[scale].valid_indices()):
        raise TrainingDataError(
            f"{run.kernels}: no valid x{scale} kernel (every estimate failed its checks); rerun degrade with --kernels bicubic or more photos"
        )
    valid = set(sets[scale].valid_indices().tolist())
    by_image: dict[str, dict] = {}
    for line in run.manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            entry = by_image.setdefault(row["name"].rsplit("_s", 1)[0], {"row": row, "pairs": []})
            entry["pairs"].append(row["name"])
    notes, images = [], []
    for name in sorted(by_image):
        row, pairs = by_image[name]["row"], by_image[name]["pairs"]
        clean = run.clean_hr / f"{name}.png"
        if not clean.is_file():
            notes.append(f"{name}: clean HR {clean} missing, left out")
            continue
        k = int(row["kernel_index"])
        if k not in valid:
            notes.append(f"{name}: its kernel {k} is not valid in the bank, left out")
            continue
        q, note = recorded_quality(row, "source_jpeg_quality")
        if note:
            notes.append(f"{name}: {note}")
        images.append(TrainImage(name, str(clean), row["source"], k, q, tuple(pairs)))
    held = images[len(images) - val_images :] if 0 < val_images < len(images) else []
    train = images[: len(images) - len(held)]
    small = [im.name for im in train if min(_hr_shape(im.clean_hr)) < hr_size]
    if small:
        notes.append(f"{len(small)} clean HR images smaller than {hr_size} px left out: {', '.join(small[:5])}")
        train = [im for im in train if im.name not in small]
    if not train:
        raise TrainingDataError(f"{run.root}: no clean HR image of at least {hr_size} px to train on")
    return train, held, notes


def _hr_shape(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # the header only
            return im.size[1], im.size[0]
    except OSError:
        return (0, 0)


CACHE_BYTES = 1 << 30  # decoded clean HR images kept per process (each loader worker has its own)
_cache: dict[str, np.ndarray] = {}


def _clean_hr(path: str) -> np.ndarray:
    """uint8 RGB of a clean HR image; the first ones read stay decoded, up to CACHE_BYTES."""
    img = _cache.get(path)
    if img is None:
        img = read_png_uint8(Path(path))
        if sum(a.nbytes for a in _cache.values()) + img.nbytes <= CACHE_BYTES:
            _cache[path] = img
    return img


@dataclass(frozen=True)
class DataConfig:
    scale: int
    hr_size: int
    seed: int = 0
    kernel_per: str = "image"
    noise: bool = True
    noise_match_brightness: bool = True
    jpeg: str = "auto"
    jpeg_range: int = 5


class DegradedCrops(torch.utils.data.Dataset):
    """Sample n -> (LR (3, h, w), HR (3, sh, sw)) float32 tensors in [0, 1]; any n >= 0.

    The banks are opened lazily, once per process, so the dataset pickles small into workers.
    """

    def __init__(self, run: RunDir, images: list[TrainImage], cfg: DataConfig):
        self.root, self.images, self.cfg = run.root, images, cfg
        _, sets = open_kernel_bank(run.kernels)
        ks = sets[cfg.scale]
        self.kernels = ks.kernels.astype(np.float64)
        self.valid = ks.valid_indices()
        self.noise_count = open_noise_bank(run.noise).count if cfg.noise else 0
        self._bank = None

    def __len__(self) -> int:
        return 2**62  # indexed by the sampler's sample numbers, never iterated to the end

    def bank(self):
        if self._bank is None:
            self._bank = open_noise_bank(RunDir(self.root).noise, verify=False)  # checked in __init__
        return self._bank

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """HWC float32 LR and HR of sample n, and what was drawn for it."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, int(n)])
        im = self.images[int(rng.integers(len(self.images)))]
        full = _clean_hr(im.clean_hr)
        s, size = c.scale, c.hr_size
        y = int(rng.integers(0, (full.shape[0] - size) // s + 1)) * s  # on the scale's grid, as degrade-flow's pairs
        x = int(rng.integers(0, (full.shape[1] - size) // s + 1)) * s
        hr = full[y : y + size, x : x + size].astype(np.float32) / 255.0
        flip, turns = rng.integers(2), int(rng.integers(4))
        hr = np.ascontiguousarray(np.rot90(hr[:, ::-1] if flip else hr, turns))
        k = im.kernel_index if c.kernel_per == "image" else int(self.valid[rng.integers(len(self.valid))])
        lr = degrade(hr, self.kernels[k], s)
        info = {"image": im.name, "position": [y, x], "flip": int(flip), "turns": turns, "kernel_index": k, "noise_id": "", "jpeg_quality": None}
        if c.noise and self.noise_count:
            field, row = draw_noise(self.bank(), rng, [lr], c.noise_match_brightness)[0]
            lr = inject_noise(lr, field)
            info["noise_id"] = row["noise_id"]
        lr = to_uint8(lr).astype(np.float32) / 255  # 8 bits, as every LR photo
        if c.jpeg == "auto" and im.jpeg_quality:
            q = int(np.clip(im.jpeg_quality + rng.integers(-c.jpeg_range, c.jpeg_range + 1), 10, 100))
            lr = recompress(lr, q)
            info["jpeg_quality"] = q
        return lr, hr, info

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr, _ = self.sample(n)
        return torch.from_numpy(lr.transpose(2, 0, 1).copy()), torch.from_numpy(hr.transpose(2, 0, 1).copy())


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers x threads within the cores (STACK_FACTS: oversubscription is costly)


def loader(data: DegradedCrops, batch_size: int, start: int, stop: int, workers: int) -> torch.utils.data.DataLoader:
    """Batches of iterations start+1 .. stop: iteration i is samples (i-1)*B .. i*B-1, in order."""
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, sampler=range(start * batch_size, stop * batch_size), num_workers=workers,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None, persistent_workers=False,
    )


def validation_pairs(run: RunDir, held: list[TrainImage], count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to `count` degrade-flow pairs of the held-out images, spread over them: (name, LR, HR)."""
    names = [p for im in held for p in im.pairs]
    if not names:
        return []
    pick = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int))]
    out = []
    for name in pick:
        lr, hr = (read_png_uint8(run.pairs / d / f"{name}.png").astype(np.float32) / 255 for d in ("lr", "hr"))
        out.append((name, lr, hr))
    return out
