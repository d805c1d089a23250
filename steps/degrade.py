"""degrade-flow's steps: clean-up and noise extraction of a photo, the noise bank, its pairs.

Each per-image step is idempotent: it derives a key from the image's content hash and the
recipe fields it depends on, returns the stored record when that key is done, and otherwise
writes its outputs atomically and its record last (typed, `storage/degrade_records.py`, where
old shapes are migrated). The kernel steps are in `degrade_kernels`;
the flow (`flows/degrade.py`) fans these out over Dask through the tasks in `tasks/degrade.py`.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from realsr.models.degradation import clean_up, crop_to_multiple, degrade, inject_noise, patch_grid, to_uint8
from realsr.models.noise import draw_noise
from realsr.steps.degrade_noise import COLUMNS, NoiseRule, extract_noise, write_bank
from realsr.storage.atomic import write_bytes, write_json
from realsr.storage.banks import KernelSet, open_kernel_bank, open_noise_bank
from realsr.storage.degrade_records import ImageInfo, PairRow, PairsRecord, PreprocessRecord, write_jsonl
from realsr.storage.images import BadImageError, decode_image, jpeg_quality, read_bytes, read_png_uint8, sha256_bytes, write_png
from realsr.storage.remote import is_url
from realsr.storage.run_dir import RunDir, image_name, stage_key

Log = Callable[[str], None]
STAGE_VERSION = "1"  # bump when a step's output for the same inputs would change


@dataclass(frozen=True)
class DegradeSpec:
    """What the steps need of a degrade run (`flows.settings.DegradeSettings` has each field's
    default, meaning and bounds, and builds this once with `.spec()`, by field name: a new
    setting is its `Field` there plus its field here and its use)."""

    source: Path  # the source folder: records are keyed on each photo's path inside it
    source_name: str  # the source folder as the user named it: a URL when `source` is its local mirror
    scale: int
    kernels: str
    seed: int
    cleanup_factor: int
    pair_hr_size: int
    stride: int  # the settings' pair_stride, or pair_hr_size
    max_megapixels: float
    colour: str  # "srgb" or "as-stored": what decode_source gives the steps
    noise: NoiseRule
    noise_match_brightness: bool
    kernelgan_iterations: int
    kernelgan_seeds: int
    kernelgan_engine: str  # auto, per-image or fused (models.kernelgan_fused)
    kernel_prior: str  # the kernelgan-fkp sources' prior file

    def photo_name(self, path: Path) -> str:
        """How records and banks name a photo: its path, or for a folder mirrored from a URL the
        photo's URL, the same on every machine (a local mirror's path is not: another machine
        would see other names, a changed noise bank and remade pairs)."""
        if not is_url(self.source_name):
            return str(path)
        return f"{self.source_name.rstrip('/')}/{_relative(path, self.source)}"

    def photo_path(self, name: str) -> Path:
        """The local file of a photo named by `photo_name`."""
        root = self.source_name.rstrip("/") + "/"
        return Path(self.source) / name[len(root) :] if is_url(self.source_name) and name.startswith(root) else Path(name)

    @property
    def uses_prior(self) -> bool:
        return self.kernels.startswith("kernelgan-fkp")

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    def preprocess_key_fields(self) -> dict:
        """The fields a source's clean-up and noise extraction depend on."""
        from realsr.models.noise import VERSION

        return {
            "stage": "preprocess",
            "version": STAGE_VERSION,
            "noise_version": VERSION,
            "scale": self.scale,
            "cleanup_factor": self.cleanup_factor,
            **self.noise.key_fields(),
            **self.colour_key(),
        }

    def kernelgan_key_fields(self) -> dict:
        """The fields an image's KernelGAN kernel depends on (not the device: results agree to float rounding)."""
        from realsr.models.kernelgan import VERSION

        seeds = {"seeds": self.kernelgan_seeds} if self.kernelgan_seeds > 1 else {}
        prior = {}
        if self.uses_prior:  # the prior's file by content: another prior, another kernel
            from realsr.storage.kernel_prior_file import sha256_of, verify

            prior = {"prior_sha256": sha256_of(verify(self.kernel_prior))}  # hashed once per file, not per photo
        return {
            "stage": "kernelgan",
            "version": f"{STAGE_VERSION}.{VERSION}",
            "iterations": self.kernelgan_iterations,
            "seed": self.seed,
            **seeds,
            **prior,
            **self.colour_key(),
        }

    def colour_key(self) -> dict:
        """The colour in a stage key only when it is not sRGB: runs from before the setting stay current."""
        return {} if self.colour == "srgb" else {"colour": self.colour}

    def pairs_key_fields(self) -> dict:
        """The fields an image's pairs depend on (the banks' digests are added by the caller)."""
        return {
            **self.preprocess_key_fields(),
            "stage": "pairs",
            "pair_hr_size": self.pair_hr_size,
            "stride": self.stride,
            "seed": self.seed,
            "noise_match_brightness": self.noise_match_brightness,
        }


def _quiet(msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# per image: clean-up and noise extraction (one decode serves both)


def decode_source(path: Path, data: bytes, s: DegradeSpec):
    """A source photo as every degrade step reads it (clean-up, noise, KernelGAN): one place."""
    return decode_image(path, data, max_pixels=s.max_pixels, to_srgb=s.colour == "srgb")


def prepare_source(path: Path, run: RunDir, s: DegradeSpec, log: Log = _quiet) -> PreprocessRecord:
    """Clean up one source photo and find its noise patches; returns a small record."""
    t0 = time.perf_counter()
    data, _, key = source_key(path, s, s.preprocess_key_fields())
    if (done := preprocess_done(run, key, s.photo_name(path))) is not None:
        return done
    src = decode_source(path, data, s)
    name = image_name(path, src.sha256)
    h, w = src.rgb.shape[:2]
    need = s.cleanup_factor * s.scale
    if h < need or w < need:
        raise BadImageError(path, f"{w}x{h} is too small for clean-up x{s.cleanup_factor} and scale x{s.scale}")
    # noise extraction reads the *source* (the sensor noise lives there), as collect_noise.py; a
    # RAW file's noise is the sensor's before the camera's processing, not the photos' it hands out
    table, noise = extract_noise(src.rgb, np.zeros(src.rgb.shape[:2], bool) if src.raw else src.opaque, s.noise)
    hr = crop_to_multiple(clean_up(src.rgb, s.cleanup_factor), s.scale)
    clean_path = run.clean_hr / f"{name}.png"
    write_png(clean_path, to_uint8(hr))
    if noise["count"]:  # patches and their table go to a staging file, so the record the flow handles stays small
        write_bytes(run.staged_noise(key), npz_bytes(table))
    record = PreprocessRecord(
        key=key,
        source=s.photo_name(path),
        sha256=src.sha256,
        name=name,
        source_size=[w, h],
        bit_depth=src.bit_depth,
        jpeg=jpeg_quality(data),
        notes=src.notes,
        clean_hr=str(clean_path),
        hr_size=[int(hr.shape[1]), int(hr.shape[0])],
        noise_count=int(noise["count"]),
        noise_rejected=int(noise["rejected"]),
        noise_level=noise.get("noise_level"),
        seconds=round(time.perf_counter() - t0, 4),
    )
    record.save(run)
    log(f"{path}: clean HR {hr.shape[1]}x{hr.shape[0]}, {noise['count']} noise patches ({noise['rejected']} rejected)")
    return record


def jpeg_summary(records: list[PreprocessRecord]) -> dict:
    """How many sources are JPEGs and at what quality: training re-compresses its LR the same way."""
    q = sorted(j for r in records if (j := r.jpeg_quality))
    return {"jpeg_sources": len(q), "other_sources": len(records) - len(q), "median_quality": int(np.median(q)) if q else None, "qualities": sorted(set(q))}


def source_key(path: Path, s: DegradeSpec, fields: dict) -> tuple[bytes, str, str]:
    """A source's bytes, content hash and stage key (`key_of`)."""
    data = read_bytes(path)
    sha = sha256_bytes(data)
    return data, sha, key_of(path, sha, s, fields)


def key_of(path: Path, sha: str, s: DegradeSpec, fields: dict) -> str:
    """A source's stage key: settings + content hash + path in the source folder (a renamed or
    copied file gets records under its own name)."""
    return stage_key({**fields, "sha256": sha, "path": _relative(path, s.source)})


def preprocess_done(run: RunDir, key: str, name: str) -> PreprocessRecord | None:
    """The clean-up record of an earlier run, when its outputs are all still there. Its clean HR
    image is found in this run folder by name: the folder may be a copy (another machine's mirror
    of the same URL), where the path the record was written with does not exist."""
    done = PreprocessRecord.load(run, key, source=name, cached=True)
    if done is None:
        return None
    done = in_run(done, run)
    if Path(done.clean_hr).exists() and (done.noise_count == 0 or run.staged_noise(key).exists()):
        return done
    return None


def in_run(record: PreprocessRecord, run: RunDir) -> PreprocessRecord:
    """The record with its clean HR image's path in `run` (where a worker or another machine wrote it elsewhere)."""
    here = str(run.clean_hr / Path(record.clean_hr).name)
    return record if record.clean_hr == here else dataclasses.replace(record, clean_hr=here)


def pairs_key(record: PreprocessRecord, s: DegradeSpec, kernel_digest: str, noise_digest: str) -> str:
    return stage_key({**s.pairs_key_fields(), "sha256": record.sha256, "kernels": kernel_digest, "noise": noise_digest})


def pairs_done(run: RunDir, key: str, record: PreprocessRecord) -> PairsRecord | None:
    """The pairs record of an earlier run, when every pair it lists is still on disk."""
    done = PairsRecord.load(run, key, hr_size=record.hr_size, cached=True)
    if done is not None and all(_nonempty(run.pairs / d / f"{row.name}.png") for row in done.rows for d in ("hr", "lr")):
        return done
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


# ----------------------------------------------------------------------------------------------
# coordinator: the noise bank


def build_noise_bank(records: list[PreprocessRecord], run: RunDir, s: DegradeSpec) -> dict:
    """Gather every image's staged patches, in source order, into noise.zarr."""
    records = sorted(records, key=lambda r: (r.source, r.sha256))
    parts, source, sha = [], [], []
    for r in records:
        if not r.noise_count:
            continue
        with np.load(run.staged_noise(r.key), allow_pickle=False) as staged:
            parts.append({c: staged[c] for c in COLUMNS})
        source += [r.source] * r.noise_count
        sha += [r.sha256] * r.noise_count
    sources = [
        {
            "source": r.source,
            "sha256": r.sha256,
            "patches": r.noise_count,
            "rejected": r.noise_rejected,
            **({"noise_level": r.noise_level} if r.noise_level else {}),
        }
        for r in records
    ]
    return write_bank(run.noise, parts, source, sha, s.noise, sources)


# ----------------------------------------------------------------------------------------------
# per image: HR/LR pairs


def make_pairs(record: PreprocessRecord, run: RunDir, s: DegradeSpec, kernel_digest: str, noise_digest: str, log: Log = _quiet) -> PairsRecord:
    """Cut a clean HR image into patches and degrade each with the image's kernel + real noise."""
    t0 = time.perf_counter()
    key = pairs_key(record, s, kernel_digest, noise_digest)
    if (done := pairs_done(run, key, record)) is not None:
        return done
    hr = read_png_uint8(Path(record.clean_hr)).astype(np.float32) / 255.0
    size, scale = s.pair_hr_size, s.scale
    ys, xs = patch_grid(hr.shape[0], size, s.stride), patch_grid(hr.shape[1], size, s.stride)
    grid = [(int(y), int(x)) for y in ys for x in xs]
    rows: list[PairRow] = []
    # one random stream per image, from the seed and the image's content: any order, same draws
    rng = np.random.default_rng([s.seed, int(record.sha256[:15], 16)])
    ks = kernel_set_cached(str(run.kernels), kernel_digest, scale)
    valid = ks.valid_indices()
    if s.kernels.endswith("-camera"):  # one camera, one kernel: its consensus, when there is one
        valid = [i for i in valid if ks.method[i].startswith(("kernelgan-camera", "kernelgan-fkp-camera"))] or valid
    ki = int(valid[rng.integers(len(valid))])  # the image's kernel, also when it is too small for a pair (training crops it smaller)
    jpeg_q = record.jpeg_quality
    if grid:
        lr = degrade(hr, ks.kernels[ki].astype(np.float64), scale)
        bank = _noise_bank_cached(str(run.noise), noise_digest)
        lr_size = size // scale
        crops = [lr[y // scale : y // scale + lr_size, x // scale : x // scale + lr_size] for y, x in grid]
        noises = draw_noise(bank, rng, crops, s.noise_match_brightness)
        for n, (y, x) in enumerate(grid):
            lr_patch = crops[n]
            noise_row = {"noise_id": "", "noise_index": -1, "noise_offset": [0, 0]}
            if noises:
                field, noise_row = noises[n]
                lr_patch = inject_noise(lr_patch, field)
            name = f"{record.name}_s{n:04d}"
            write_png(run.pairs / "hr" / f"{name}.png", to_uint8(hr[y : y + size, x : x + size]))
            write_png(run.pairs / "lr" / f"{name}.png", to_uint8(lr_patch))
            rows.append(
                PairRow(
                    name=name,
                    source=record.source,
                    source_sha256=record.sha256,
                    hr_position=[y, x],
                    kernel_index=ki,
                    kernel_id=ks.kernel_id(ki),
                    **noise_row,
                    source_jpeg_quality=jpeg_q,
                    scale=scale,
                    seed=s.seed,
                )
            )
    image = ImageInfo(kernel_index=ki, kernel_id=ks.kernel_id(ki), source_jpeg_quality=jpeg_q, hr_size=record.hr_size)
    out = PairsRecord(key=key, name=record.name, source=record.source, image=image, rows=rows, seconds=round(time.perf_counter() - t0, 4))
    out.save(run)
    log(f"{record.source}: {len(rows)} pairs")
    return out


def _nonempty(path: Path) -> bool:
    """Exists with content (PNGs are not fsynced: after a power cut a file may be empty)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


@lru_cache(maxsize=4)
def kernel_set_cached(path: str, digest: str, scale: int) -> KernelSet:
    """A worker reads a bank's kernels once per digest, not once per image."""
    _, sets = open_kernel_bank(Path(path))
    return sets[scale]


@lru_cache(maxsize=2)
def _noise_bank_cached(path: str, digest: str):
    """A worker opens a noise bank (metadata, patch ids) once per digest, not once per image."""
    bank = open_noise_bank(Path(path))
    if bank.count:
        bank.patch_id(0)  # loads every id once
    return bank


def write_manifest(run: RunDir, pair_records: list[PairsRecord], remove_stale: bool = True) -> dict:
    """All pairs of this run in one JSONL file, and every clean HR image with its kernel and JPEG
    quality in another (training reads it: images too small for a pair still train). Pair PNGs
    that the manifest of an earlier run listed and this one does not are removed: only those
    (a file the run never recorded writing stays, whatever its name)."""
    earlier = _listed_names(run.manifest) if remove_stale else set()
    ordered = sorted(pair_records, key=lambda r: r.name)
    rows = [row for r in ordered for row in r.rows]
    write_bytes(run.manifest, write_jsonl(rows))
    write_bytes(run.images_index, write_jsonl([r.image_row() for r in ordered]))
    keep = {r.name for r in rows}
    removed = sum(_remove(run.pairs / d / f"{name}.png") for name in sorted(earlier - keep) for d in ("hr", "lr"))
    return {"path": str(run.manifest), "pairs": len(rows), "stale_removed": removed}


def _listed_names(manifest: Path) -> set[str]:
    """The pair names an earlier run's manifest lists (empty when there is none or it is unreadable)."""
    import json

    names = set()
    try:
        lines = manifest.read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            name = json.loads(line).get("name")
        except (ValueError, AttributeError):
            continue
        if n := _plain_name(str(name or "")):
            names.add(n)
    return names


def _plain_name(name: str) -> str:
    """`name` when it is a plain file name (a record can only name a file in its own folder)."""
    return name if name and name == Path(name).name and name not in (".", "..") else ""


def _remove(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0


def save_summary(run: RunDir, summary: dict) -> None:
    write_json(run.summary, summary)
