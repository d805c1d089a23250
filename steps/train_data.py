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

import ctypes
import functools
import json
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from realsr.models.degradation import degrade, inject_noise, patch_grid, to_uint8
from realsr.models.errors import RealsrError
from realsr.models.jpeg import recompress
from realsr.models.noise import draw_noise
from realsr.storage.banks import open_kernel_bank, open_noise_bank
from realsr.storage.degrade_records import ImageRow, read_image_index
from realsr.storage.images import read_png_uint8
from realsr.storage.run_dir import MARKER, RunDir


class TrainingDataError(RealsrError, ValueError):
    """The run folder cannot feed training; raised before any network is built."""


@dataclass(frozen=True)
class TrainImage:
    name: str  # the clean HR's stem: <source stem>-<sha8>
    clean_hr: str
    source: str
    kernel_index: int  # into the kernel bank's set of the run's scale: the one degrade-flow gave the image
    jpeg_quality: int | None
    size: tuple[int, int] = (0, 0)  # (height, width) of the clean HR
    heic_quality: int | None = None  # a HEIC source's re-compression, as measured (steps/train_heic.py)


@dataclass(frozen=True)
class HeldOut:
    """A photo kept out of training, and the top-left corners of its validation crops."""

    image: TrainImage
    positions: tuple[tuple[int, int], ...]


@dataclass
class TrainingSet:
    train: list[TrainImage]
    held: list[HeldOut]
    notes: list[str]  # what was left out and why, and anything else the user should read

    @property
    def val_crops(self) -> int:
        return sum(len(h.positions) for h in self.held)


def run_scale(run: RunDir) -> int:
    try:
        return int(json.loads((run.root / MARKER).read_text())["settings"]["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainingDataError(f"{run.root}: not a degrade-flow run folder (no readable {MARKER} with its settings)") from None


def _image_rows(run: RunDir, notes: list[str]) -> list[ImageRow]:
    """One row per clean HR image (`storage.degrade_records.read_image_index`: old runs migrated there)."""
    found = read_image_index(run)
    if found is None:
        raise TrainingDataError(f"{run.manifest}: no pair manifest; run degrade-flow on this folder first")
    rows, more = found
    notes += more
    return rows


def training_images(run: RunDir, hr_size: int, val_crops: int, val_images: int = 0, seed: int = 0) -> TrainingSet:
    """Every clean HR image of the run at least `hr_size` on both sides, whatever degrade's pair
    size; some held out for validation (`hold_out`). Notes say what was left out and why.

    Refuses, with what to do: no image index or manifest, a kernel bank without a valid kernel at
    the run's scale, no clean HR image large enough for a crop.
    """
    scale = run_scale(run)
    if hr_size % scale:
        raise TrainingDataError(f"hr_size {hr_size} is not a multiple of the run's scale x{scale}")
    notes: list[str] = []
    rows = _image_rows(run, notes)
    try:
        _, sets = open_kernel_bank(run.kernels)
    except (FileNotFoundError, ValueError) as e:
        raise TrainingDataError(f"kernel bank: {e}") from None
    if scale not in sets or not len(sets[scale].valid_indices()):
        raise TrainingDataError(
            f"{run.kernels}: no valid x{scale} kernel (every estimate failed its checks); rerun degrade with --kernels bicubic or more photos"
        )
    valid = set(sets[scale].valid_indices().tolist())
    images: list[TrainImage] = []
    left: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: r.name):
        name = row.name
        clean = run.clean_hr / f"{name}.png"
        k = int(row.kernel_index)
        size = _hr_shape(str(clean)) if clean.is_file() else (0, 0)
        why = (
            "clean HR missing"
            if not clean.is_file()
            else f"kernel {k} not valid in the bank"
            if k not in valid
            else f"smaller than {hr_size} px"
            if min(size) < hr_size
            else None
        )
        if why:
            left.setdefault(why, []).append(name)
            continue
        if row.note:
            notes.append(f"{name}: {row.note}")
        images.append(TrainImage(name, str(clean), row.source, k, row.source_jpeg_quality, size))
    for why, names in left.items():
        notes.append(f"{len(names)} of {len(rows)} clean HR images left out, {why}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    if not images:
        raise TrainingDataError(f"{run.root}: no clean HR image of at least {hr_size} px to train on")
    held = hold_out(images, hr_size, val_crops, val_images, seed)
    if val_crops and not held:
        notes.append(f"no validation: {len(images)} image(s) are too few to hold one out")
    elif held and sum(len(h.positions) for h in held) < val_crops:
        notes.append(f"validation on {sum(len(h.positions) for h in held)} crops, fewer than the {val_crops} asked: the held-out photos have no more")
    kept = {h.image.name for h in held}
    return TrainingSet([im for im in images if im.name not in kept], held, notes)


PER_PHOTO = 4  # validation crops per held-out photo, unless few photos may be held out


def hold_out(images: list[TrainImage], hr_size: int, val_crops: int, val_images: int, seed: int) -> list[HeldOut]:
    """Photos kept out of training, in a seeded order, until they give `val_crops` crops of
    `hr_size` (spread over each photo, `PER_PHOTO` each, more when few photos may go): at most a
    quarter of the photos (at least one, never all), or exactly `val_images` when it is not 0."""
    if not val_crops or len(images) < 2:
        return []
    limit = min(val_images, len(images) - 1) if val_images else max(1, len(images) // 4)
    per_photo = max(PER_PHOTO, -(-val_crops // limit))
    order = np.random.default_rng([seed, HOLD_OUT_STREAM]).permutation(len(images))
    held, count = [], 0
    for i in order:
        if len(held) == limit or (not val_images and count >= val_crops):
            break
        im = images[int(i)]
        grid = [(int(y), int(x)) for y in patch_grid(im.size[0], hr_size, hr_size) for x in patch_grid(im.size[1], hr_size, hr_size)]
        take = min(per_photo, len(grid), per_photo if val_images else val_crops - count)
        pick = np.unique(np.linspace(0, len(grid) - 1, take).round().astype(int)) if take else []
        held.append(HeldOut(im, tuple(grid[j] for j in pick)))
        count += len(pick)
    return held


HOLD_OUT_STREAM, VALIDATION_STREAM = 1, 2  # random streams of their own: [seed, stream, ...]


def _hr_shape(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # the header only
            return im.size[1], im.size[0]
    except OSError:
        return (0, 0)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
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
    """How crops are drawn and degraded (no defaults: `flows.train_settings` declares each value)."""

    scale: int | None  # None in a TrainSpec: the run folder's own, which `steps.train.set_up` fills in
    hr_size: int
    seed: int
    kernel_per: str
    noise: bool
    noise_match_brightness: bool
    jpeg: str
    jpeg_range: int


@dataclass(frozen=True)
class Drawn:
    """A training sample's first draws: its uint8 HWC crop, kernel and re-compression (quality, codec)."""

    rng: np.random.Generator
    hr: np.ndarray
    kernel: int
    quality: int | None
    codec: str
    info: dict


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

    def draw(self, n: int) -> Drawn:
        """Sample n's crop (flipped and turned) and kernel, with its random stream where the
        degradation's draws go on (`sample` here, `steps.train_device` on the training device)."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, int(n)])
        im = self.images[int(rng.integers(len(self.images)))]
        full = _clean_hr(im.clean_hr)
        s, size = c.scale, c.hr_size
        y = int(rng.integers(0, (full.shape[0] - size) // s + 1)) * s  # on the scale's grid, as degrade-flow's pairs
        x = int(rng.integers(0, (full.shape[1] - size) // s + 1)) * s
        hr = full[y : y + size, x : x + size]
        flip, turns = rng.integers(2), int(rng.integers(4))
        hr = np.ascontiguousarray(np.rot90(hr[:, ::-1] if flip else hr, turns))
        k = im.kernel_index if c.kernel_per == "image" else int(self.valid[rng.integers(len(self.valid))])
        quality, codec = recompression(im, c)
        return Drawn(rng, hr, k, quality, codec, {"image": im.name, "position": [y, x], "flip": int(flip), "turns": turns})

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """HWC float32 LR and HR of sample n, and what was drawn for it."""
        d = self.draw(n)
        hr = d.hr.astype(np.float32) / 255.0
        lr, info = self.degrade(hr, d.kernel, d.quality, d.rng, jitter=True, codec=d.codec)
        return lr, hr, {**d.info, **info}

    def degrade(self, hr: np.ndarray, k: int, quality: int | None, rng: np.random.Generator, jitter: bool, codec: str = "jpeg") -> tuple[np.ndarray, dict]:
        """HR crop -> LR: kernel `k`, subsampling, a noise crop drawn with `rng`, 8 bits, JPEG (or
        HEIC, `codec`) at `quality` (moved by up to `jpeg_range` with `jitter`, drawn last)."""
        c = self.cfg
        lr = degrade(hr, self.kernels[k], c.scale)
        info = {"kernel_index": k, "noise_id": "", "jpeg_quality": None}
        if c.noise and self.noise_count:
            field, row = draw_noise(self.bank(), rng, [lr], c.noise_match_brightness)[0]
            lr = inject_noise(lr, field)
            info["noise_id"] = row["noise_id"]
        lr = to_uint8(lr).astype(np.float32) / 255  # 8 bits, as every LR photo
        if quality:
            if jitter:
                quality = jittered(quality, c.jpeg_range, rng)
            if codec == "heic":
                from realsr.models.jpeg import heic_recompress

                lr = heic_recompress(lr, quality)
                info["heic_quality"] = quality
            else:
                lr = recompress(lr, quality)
                info["jpeg_quality"] = quality
        return lr, info

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr, _ = self.sample(n)
        return torch.from_numpy(lr.transpose(2, 0, 1).copy()), torch.from_numpy(hr.transpose(2, 0, 1).copy())


def jittered(quality: int, spread: int, rng: np.random.Generator) -> int:
    """A training LR's re-compression quality: its source's, moved by up to `spread`, within 10..100."""
    return int(np.clip(quality + rng.integers(-spread, spread + 1), 10, 100))


def recompression(im: TrainImage, c: DataConfig) -> tuple[int | None, str]:
    """(quality, codec) of an image's LR re-compression: its JPEG's own quality, or the measured
    HEIC choice; none with jpeg 'off'."""
    if c.jpeg != "auto":
        return None, "jpeg"
    return (im.jpeg_quality, "jpeg") if im.jpeg_quality else (im.heic_quality, "heic")


def _worker_init(parent: int, _: int) -> None:
    torch.set_num_threads(1)  # workers x threads within the cores (STACK_FACTS: oversubscription is costly)
    if sys.platform.startswith("linux"):  # killed with the training process, not 5 s later by torch's watchdog
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the prctl
            os._exit(1)


def loader(data: torch.utils.data.Dataset, batch_size: int, start: int, stop: int, workers: int, pin: bool = False) -> torch.utils.data.DataLoader:
    """Batches of iterations start+1 .. stop: iteration i is samples (i-1)*B .. i*B-1, in order
    (of `DegradedCrops`, or `steps.train_device.CleanCrops`); `pin`: in page-locked memory."""
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        sampler=range(start * batch_size, stop * batch_size),
        num_workers=workers,
        worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=pin,
    )


@contextmanager
def batches(data: torch.utils.data.Dataset, batch_size: int, start: int, stop: int, workers: int, pin: bool = False) -> Iterator[Iterator]:
    """`loader`'s batches; its worker processes are shut down when the block ends, also by an
    exception (a traceback would otherwise keep them alive until it is freed)."""
    it = iter(loader(data, batch_size, start, stop, workers, pin))
    try:
        yield it
    finally:
        if shutdown := getattr(it, "_shutdown_workers", None):  # torch's multi-process iterator
            shutdown()


def validation_crops(data: DegradedCrops, held: list[HeldOut]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR, HR) of every held-out crop, degraded as training degrades (the photo's own
    kernel, a noise crop from the bank, its own JPEG quality), from a random stream of its own:
    the same crops at every validation and on every resume."""
    c = data.cfg
    out = []
    for h in held:
        full = _clean_hr(h.image.clean_hr)
        for j, (y, x) in enumerate(h.positions):
            hr = full[y : y + c.hr_size, x : x + c.hr_size].astype(np.float32) / 255.0
            rng = np.random.default_rng([c.seed, VALIDATION_STREAM, len(out)])
            quality, codec = recompression(h.image, c)
            lr, _ = data.degrade(hr, h.image.kernel_index, quality, rng, jitter=False, codec=codec)
            out.append((f"{h.image.name}_v{j:02d}", lr, hr))
    return out
