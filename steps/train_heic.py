"""Training's re-compression for HEIC sources, whose encoder quality no file records.

A JPEG's quality can be read back from its tables (models/jpeg.py) and training re-compresses each
LR at it. A HEIC keeps no such number, and HEVC's artefacts (smoothed fine texture, no 8x8 blocks)
are not JPEG's. So the choice is measured, by how much of an image's fine detail survives one
more HEIC encoding at a low probe quality ("survival": |Laplacian| over gradient on luma, after
over before, pooled over crops). A photo the phone already compressed hard has little left to
lose (survival near 1); an uncompressed one loses much. Survival compares photos of different
sharpness and resolution (a camera's full-size photo and a 4x smaller training LR) where the
detail statistic alone does not: that is what it was chosen for (BENCHMARKS.md). Training-made LR
crops of the HEIC photos are re-encoded at each candidate quality, and the candidate (none
included) whose survival is nearest the sources' own wins. The decision and its numbers go to
the run's notes.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from realsr.storage.image_formats import HEIF_SUFFIXES
from realsr.storage.images import BadImageError

CANDIDATES = (None, 30, 40, 50, 70, 90)  # pillow-heif qualities; None: no re-compression
PROBE = 30  # the probe's quality: survival tells apart sources written above it
PHOTOS, CROPS = 6, 8  # HEIC photos measured, crops of each


def texture_sums(rgb: np.ndarray) -> np.ndarray:
    """(sum |Laplacian|, sum gradient magnitude) of an RGB [0, 1] crop's luma; pooled over many
    crops, their ratio is the texture statistic (a ratio of sums: flat noisy crops and edges
    weigh by their content, not one vote each)."""
    y = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    lap = np.abs(cv2.Laplacian(y, cv2.CV_32F, ksize=1))[1:-1, 1:-1]
    grad = np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))[1:-1, 1:-1]
    return np.array([lap.sum(), grad.sum()], np.float64)


def texture_ratio(sums: list[np.ndarray]) -> float:
    total = np.sum(sums, axis=0)
    return float(total[0] / max(total[1], 1e-6))


def survival_sums(rgb: np.ndarray) -> np.ndarray:
    """A crop's texture sums before and after one more HEIC encoding at PROBE: (4,)."""
    from realsr.models.jpeg import heic_recompress

    return np.concatenate([texture_sums(rgb), texture_sums(heic_recompress(rgb, PROBE))])


def survival(sums: list[np.ndarray]) -> float:
    """The pooled share of fine detail that survives the probe's encoding."""
    total = np.sum(sums, axis=0)
    return texture_ratio([total[2:]]) / max(texture_ratio([total[:2]]), 1e-6)


def is_heic(source: str) -> bool:
    return source.lower().endswith(HEIF_SUFFIXES[:2])


def choose_heic_quality(data, images: list, seed: int, read_source) -> tuple[int | None, str]:
    """(quality or None, why) for the HEIC photos among `images` (TrainImage), measured on up to
    PHOTOS of them. `data` is the DegradedCrops that degrades them; `read_source(path)` gives a
    source photo as RGB [0, 1]."""
    from realsr.models.jpeg import heic_recompress
    from realsr.steps.train_data import _clean_hr

    c = data.cfg
    rng = np.random.default_rng([seed, 0x4E1C])
    heics = [im for im in images if is_heic(im.source)][:PHOTOS]
    measured = 0
    lr_size = c.hr_size // c.scale
    made, real = {q: [] for q in CANDIDATES}, []
    for im in heics:
        try:
            src = read_source(im.source)
        except (BadImageError, OSError):
            continue  # moved since degrade: measured on the others
        measured += 1
        full = _clean_hr(im.clean_hr)
        for _ in range(CROPS):  # the same places of the photo in the source and in its clean HR
            u, v = rng.random(2)
            y, x = (int(f * max(0, n - lr_size)) for f, n in zip((u, v), src.shape[:2]))
            real.append(survival_sums(src[y : y + lr_size, x : x + lr_size]))
            y, x = (int(f * (n - c.hr_size)) for f, n in zip((u, v), full.shape[:2]))
            hr = full[y : y + c.hr_size, x : x + c.hr_size].astype(np.float32) / 255.0
            lr, _ = data.degrade(hr, im.kernel_index, None, np.random.default_rng([seed, len(real)]), jitter=False)
            for q in CANDIDATES:
                made[q].append(survival_sums(lr if q is None else heic_recompress(lr, q)))
    if not real:
        return None, f"HEIC sources: none of the {len(heics)} measured is readable now, so no re-compression"
    target = survival(real)
    score = {q: survival(v) for q, v in made.items()}
    # sources as fragile as uncompressed LR show no compression to imitate
    best = None if target <= score[None] else min(CANDIDATES, key=lambda q: (abs(score[q] - target), q is not None))  # ties: none
    numbers = ", ".join(f"{'none' if q is None else f'q{q}'} {score[q]:.3f}" for q in CANDIDATES)
    said = "none" if best is None else f"the HEIC encoder at quality {best}"
    why = (
        f"HEIC sources ({measured} measured): re-compression {said}, its LR's detail survival under a q{PROBE} HEIC encoding nearest the sources' "
        f"{target:.3f} ({numbers})"
    )
    return best, why


def with_heic_quality(images: list, quality: int | None) -> list:
    """The HEIC photos' TrainImage with the chosen quality; the others as they are."""
    return [replace(im, heic_quality=quality) if is_heic(im.source) else im for im in images]
