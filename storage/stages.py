"""The per-image and coordinator steps of degrade-flow, without any orchestration.

Each per-image step is idempotent: it derives a key from the image's content hash and the
settings it depends on, returns the stored record when that key is done, and otherwise writes
its outputs atomically and its record last. Prefect tasks in `tasks/` wrap these.
"""

from __future__ import annotations

import io
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from models.degradation import clean_up, crop_to_multiple, degrade, inject_noise, patch_grid, to_uint8
from models.kernelgan_post import x4_base
from models.kernels import KERNEL_SIZE, RESIZE_CONVENTION, analytic_x4, bicubic_kernel, check_kernel, consensus_kernel
from storage.atomic import write_bytes, write_json
from storage.banks import KernelSet, open_kernel_bank, open_noise_bank, write_kernel_bank
from storage.noise_stage import COLUMNS, draw_noise, extract_noise, write_bank
from storage.images import BadImageError, decode_image, jpeg_quality, read_bytes, read_png_uint8, sha256_bytes, write_png
from storage.run_dir import RunDir, image_name, stage_key

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# per image: clean-up and noise extraction (one decode serves both)


def prepare_source(path: Path, run: RunDir, s, log: Log = _quiet) -> dict:
    """Clean up one source photo and find its noise patches; returns a small record."""
    t0 = time.perf_counter()
    data, _, key = _source_key(path, s, s.preprocess_key_fields())
    done = run.load_record("preprocess", key)
    if done is not None and Path(done["clean_hr"]).exists() and (done["noise_count"] == 0 or run.staged_noise(key).exists()):
        return {**done, "cached": True, "source": str(path)}
    src = decode_image(path, data, max_pixels=int(s.max_megapixels * 1e6))
    name = image_name(path, src.sha256)
    h, w = src.rgb.shape[:2]
    need = s.cleanup_factor * s.scale
    if h < need or w < need:
        raise BadImageError(path, f"{w}x{h} is too small for clean-up x{s.cleanup_factor} and scale x{s.scale}")
    # noise extraction reads the *source* (the sensor noise lives there), as collect_noise.py
    table, noise = extract_noise(src.rgb, src.opaque, s)
    hr = crop_to_multiple(clean_up(src.rgb, s.cleanup_factor), s.scale)
    clean_path = run.clean_hr / f"{name}.png"
    write_png(clean_path, to_uint8(hr))
    if noise["count"]:  # patches and their table go to a staging file, so the record the flow handles stays small
        write_bytes(run.staged_noise(key), _npz_bytes(table))
    record = {
        "key": key,
        "source": str(path),
        "sha256": src.sha256,
        "name": name,
        "source_size": [w, h],
        "bit_depth": src.bit_depth,
        "jpeg": jpeg_quality(data),
        "notes": src.notes,
        "clean_hr": str(clean_path),
        "hr_size": [int(hr.shape[1]), int(hr.shape[0])],
        "noise_count": int(noise["count"]),
        "noise_rejected": int(noise["rejected"]),
        "noise_level": noise.get("noise_level"),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    run.save_record("preprocess", key, record)
    log(f"{path}: clean HR {hr.shape[1]}x{hr.shape[0]}, {noise['count']} noise patches ({noise['rejected']} rejected)")
    return {**record, "cached": False}


def source_jpeg(record: dict) -> dict | None:
    """A prepared source's JPEG quality (records from before it was recorded read the file)."""
    if "jpeg" in record:
        return record["jpeg"]
    try:
        return jpeg_quality(read_bytes(record["source"]))
    except BadImageError:
        return None


def jpeg_summary(records: list[dict]) -> dict:
    """How many sources are JPEGs and at what quality: training re-compresses its LR the same way."""
    q = sorted(j["quality"] for r in records if (j := source_jpeg(r)))
    return {"jpeg_sources": len(q), "other_sources": len(records) - len(q), "median_quality": int(np.median(q)) if q else None, "qualities": sorted(set(q))}


def _source_key(path: Path, s, fields: dict) -> tuple[bytes, str, str]:
    """A source's bytes, content hash and stage key (settings + hash + path in the source folder).

    The path is part of the key: a renamed or copied file gets records under its own name.
    """
    data = read_bytes(path)
    sha = sha256_bytes(data)
    return data, sha, stage_key({**fields, "sha256": sha, "path": _relative(path, s.source)})


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


# ----------------------------------------------------------------------------------------------
# coordinator: the banks


def build_noise_bank(records: list[dict], run: RunDir, s) -> dict:
    """Gather every image's staged patches, in source order, into noise.zarr."""
    records = sorted(records, key=lambda r: (r["source"], r["sha256"]))
    parts, source, sha = [], [], []
    for r in records:
        if not r["noise_count"]:
            continue
        with np.load(run.staged_noise(r["key"]), allow_pickle=False) as staged:
            parts.append({c: staged[c] for c in COLUMNS})
        source += [r["source"]] * r["noise_count"]
        sha += [r["sha256"]] * r["noise_count"]
    sources = [
        {"source": r["source"], "sha256": r["sha256"], "patches": r["noise_count"], "rejected": r["noise_rejected"], **({"noise_level": r["noise_level"]} if r.get("noise_level") else {})}
        for r in records
    ]
    return write_bank(run.noise, parts, source, sha, s, sources)


def estimate_source_kernels(paths: list[Path], run: RunDir, s, device: str = "cpu", log: Log = _quiet) -> list[dict | BadImageError]:
    """KernelGAN's x2 kernel of each source image (the real photo, before clean-up).

    The images not done in an earlier run train together in one loop (`estimate_kernels`): the
    same algorithm per image, one set of kernel launches. Returns a record or the BadImageError
    of each path, in order.
    """
    from models.kernelgan import estimate_kernels

    cfg = _kernelgan_config(s)
    results: dict[Path, dict | BadImageError] = {}
    todo = []
    for path in paths:
        try:
            data, sha, key = _source_key(path, s, s.kernelgan_key_fields())
            done = run.load_record("kernelgan", key)
            if done is not None and run.staged_kernel(key).exists():
                results[path] = {**done, "cached": True}
                continue
            rgb = decode_image(path, data, max_pixels=int(s.max_megapixels * 1e6)).rgb
            if problem := cfg.too_small(*rgb.shape[:2]):
                raise BadImageError(path, problem)
            todo.append((path, sha, key, rgb))
        except BadImageError as e:
            results[path] = e
    if todo:
        t0 = time.perf_counter()
        names = ", ".join(Path(t[0]).name for t in todo)
        log(f"KernelGAN on {len(todo)} image(s) at once on {device}: {names}")
        estimates = estimate_kernels([t[3] for t in todo], cfg, device=device, progress=lambda it, l: log(f"KernelGAN {it}/{cfg.iterations} ({names}) {l}"))
        seconds = round((time.perf_counter() - t0) / len(todo), 3)
        for (path, sha, key, _), est in zip(todo, estimates):
            fallback = None if est.ok else f"{est.problem}: the bicubic kernel stands in"
            if fallback:
                log(f"{Path(path).name}: {fallback}")
            kernel = est.kernel if est.ok else bicubic_kernel(2)
            write_bytes(run.staged_kernel(key), _npz_bytes({"kernel": kernel, "raw": est.raw}))
            record = {"key": key, "source": str(path), "sha256": sha, "losses": est.losses, "device": device, "seconds": seconds,
                      "iterations": est.iterations, "seed": est.seed, "fallback": fallback}
            run.save_record("kernelgan", key, record)
            results[path] = {**record, "cached": False}
    return [results[p] for p in paths]


def _kernelgan_config(s):
    """The KernelGAN configuration a run's settings ask for (the reference's defaults otherwise)."""
    from models.kernelgan import KernelGANConfig

    return KernelGANConfig(iterations=s.kernelgan_iterations, seed=s.seed, seeds=s.kernelgan_seeds)


def kernelgan_sets(run: RunDir, records: list[dict], camera: bool = False) -> list[KernelSet]:
    """x2 kernels from KernelGAN records (source order) and their analytic x4 kernels; an image
    whose estimate failed has the bicubic kernels, marked `bicubic-fallback`. `camera` adds one
    kernel for the camera, the consensus of the estimates that did not fail (`kernelgan-camera`,
    the last row), which the pairs then use for every image."""
    records = sorted(records, key=lambda r: r["source"])
    k2, raw = [], []
    for r in records:
        with np.load(run.staged_kernel(r["key"]), allow_pickle=False) as z:
            k2.append(z["kernel"])
            raw.append(z["raw"])
    src, sha = [r["source"] for r in records], [r["sha256"] for r in records]
    failed = [bool(r.get("fallback")) for r in records]
    m2 = ["bicubic-fallback" if f else "kernelgan" for f in failed]
    base = [None if f else x4_base(r) for r, f in zip(raw, failed)]  # x4 composes the unthresholded x2 kernel
    k4 = [bicubic_kernel(4) if f else analytic_x4(b) for b, f in zip(base, failed)]
    m4 = ["bicubic-fallback" if f else "kernelgan+analytic-x4" for f in failed]
    good = [k for k, f in zip(k2, failed) if not f]
    if camera and good:
        cam = consensus_kernel(good)
        k2, k4 = [*k2, cam], [*k4, analytic_x4(consensus_kernel([b for b in base if b is not None]))]
        src, sha = [*src, f"camera: consensus of {len(good)} photos"], [*sha, ""]
        m2, m4 = [*m2, "kernelgan-camera"], [*m4, "kernelgan-camera+analytic-x4"]
    return [_kernel_set(2, k2, src, sha, m2), _kernel_set(4, k4, src, sha, m4)]


def kernel_sets_for(spec: str, required: int, scales=(2, 4)) -> tuple[list[KernelSet], dict]:
    """The kernel sets a kernel source gives, with provenance attributes for the bank.

    Only the `required` scale must be there; x4 is derived from x2 when missing.
    """
    if spec == "bicubic":
        sets = []
        for scale in scales:
            k = bicubic_kernel(scale, KERNEL_SIZE[scale])
            sets.append(_kernel_set(scale, [k], [""], [""], ["bicubic"]))
        return sets, {"kernel_source": "bicubic", "note": "MATLAB antialiased bicubic, the paper's Track 1 recipe"}
    if spec.startswith("bank:"):
        path = Path(spec[5:])
        try:
            attrs, found = open_kernel_bank(path)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"kernel source {spec}: {e}") from None
        sets = []
        for scale in scales:
            if scale in found:
                sets.append(found[scale])
            elif scale == 4 and 2 in found:
                k2 = found[2]
                k4 = [analytic_x4(k) for k in k2.kernels]
                sets.append(_kernel_set(4, k4, list(k2.source), list(k2.source_sha256), [f"{m}+analytic-x4" for m in k2.method]))
            elif scale == required:
                raise ValueError(f"kernel source {spec}: the bank has no x{scale} kernels")
        return sets, {"kernel_source": spec, "imported_from": str(path), "imported_digest": attrs.get("digest", "")}
    raise ValueError(f"unknown kernel source {spec!r}")


def _kernel_set(scale: int, kernels, source, sha, method) -> KernelSet:
    checks = [check_kernel(k, scale) for k in kernels]
    return KernelSet(
        scale=scale,
        kernels=np.asarray(kernels, dtype=np.float32),
        source=np.asarray(source, dtype=str),
        source_sha256=np.asarray(sha, dtype=str),
        method=np.asarray(method, dtype=str),
        checks={
            "kernel_sum": np.array([c.kernel_sum for c in checks]),
            "center_offset": np.array([c.center_offset for c in checks]),
            "border_energy": np.array([c.border_energy for c in checks]),
            "bicubic_distance": np.array([c.bicubic_distance for c in checks]),
            "valid": np.array([c.valid for c in checks], dtype=bool),
        },
        reason=np.asarray([c.reason for c in checks], dtype=str),
    )


def build_kernel_bank(run: RunDir, s, kernelgan_records: list[dict] | None = None) -> dict:
    if s.kernels.startswith("kernelgan"):
        sets = kernelgan_sets(run, kernelgan_records or [], camera=s.kernels == "kernelgan-camera")
        cfg = _kernelgan_config(s)
        attrs = {"kernel_source": s.kernels, "kernelgan": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.as_dict().items()}}
    else:
        sets, attrs = kernel_sets_for(s.kernels, s.scale)
    scale_attrs = {st.scale: {"resize_convention": RESIZE_CONVENTION} for st in sets}
    digest = write_kernel_bank(run.kernels, sets, attrs, scale_attrs)
    counts = {f"x{st.scale}": {"kernels": len(st), "valid": int(st.checks["valid"].sum())} for st in sets}
    rejected = [{"source": str(src), "scale": st.scale, "reason": str(why)} for st in sets for src, why in zip(st.source, st.reason) if why]
    if not counts.get(f"x{s.scale}", {}).get("valid"):
        raise ValueError(f"the kernel bank has no valid x{s.scale} kernels: no pairs can be made")
    fallbacks = [{"source": r["source"], "reason": r["fallback"]} for r in kernelgan_records or [] if r.get("fallback")]
    return {"path": str(run.kernels), "digest": digest, "counts": counts, "rejected": rejected, "fallbacks": fallbacks}


# ----------------------------------------------------------------------------------------------
# per image: HR/LR pairs


def make_pairs(record: dict, run: RunDir, s, kernel_digest: str, noise_digest: str, log: Log = _quiet) -> dict:
    """Cut a clean HR image into patches and degrade each with the image's kernel + real noise."""
    t0 = time.perf_counter()
    key = stage_key({**s.pairs_key_fields(), "sha256": record["sha256"], "kernels": kernel_digest, "noise": noise_digest})
    done = run.load_record("pairs", key)
    if done is not None and all(_nonempty(run.pairs / d / f"{row['name']}.png") for row in done["rows"] for d in ("hr", "lr")):
        return {**done, "cached": True}
    hr = read_png_uint8(Path(record["clean_hr"])).astype(np.float32) / 255.0
    size, scale = s.pair_hr_size, s.scale
    ys, xs = patch_grid(hr.shape[0], size, s.stride), patch_grid(hr.shape[1], size, s.stride)
    grid = [(int(y), int(x)) for y in ys for x in xs]
    rows: list[dict] = []
    if grid:
        # one random stream per image, from the seed and the image's content: any order, same draws
        rng = np.random.default_rng([s.seed, int(record["sha256"][:15], 16)])
        ks = _kernel_set_cached(str(run.kernels), kernel_digest, scale)
        valid = ks.valid_indices()
        if s.kernels == "kernelgan-camera":  # one camera, one kernel: its consensus, when there is one
            valid = [i for i in valid if ks.method[i].startswith("kernelgan-camera")] or valid
        ki = int(valid[rng.integers(len(valid))])
        jpeg_q = (source_jpeg(record) or {}).get("quality")
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
            name = f"{record['name']}_s{n:04d}"
            write_png(run.pairs / "hr" / f"{name}.png", to_uint8(hr[y : y + size, x : x + size]))
            write_png(run.pairs / "lr" / f"{name}.png", to_uint8(lr_patch))
            rows.append(
                {
                    "name": name,
                    "source": record["source"],
                    "source_sha256": record["sha256"],
                    "hr_position": [y, x],
                    "kernel_index": ki,
                    "kernel_id": ks.kernel_id(ki),
                    **noise_row,
                    "source_jpeg_quality": jpeg_q,
                    "scale": scale,
                    "seed": s.seed,
                }
            )
    out = {"key": key, "name": record["name"], "source": record["source"], "rows": rows, "seconds": round(time.perf_counter() - t0, 4)}
    run.save_record("pairs", key, out)
    log(f"{record['source']}: {len(rows)} pairs")
    return {**out, "cached": False}


def _nonempty(path: Path) -> bool:
    """Exists with content (PNGs are not fsynced: after a power cut a file may be empty)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


@lru_cache(maxsize=4)
def _kernel_set_cached(path: str, digest: str, scale: int) -> KernelSet:
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


def write_manifest(run: RunDir, pair_records: list[dict], remove_stale: bool = True) -> dict:
    """All pairs of this run in one JSONL file; PNGs of images no longer in the run are removed."""
    import json

    rows = [row for r in sorted(pair_records, key=lambda r: r["name"]) for row in r["rows"]]
    write_bytes(run.manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    keep = {r["name"] for r in rows}
    removed = 0
    for sub in ("hr", "lr") if remove_stale else ():
        folder = run.pairs / sub
        if folder.exists():
            for f in folder.glob("*.png"):
                if f.stem not in keep:
                    f.unlink()
                    removed += 1
    return {"path": str(run.manifest), "pairs": len(rows), "stale_removed": removed}


def prune(run: RunDir, records: list[dict], pair_records: list[dict], kernel_records: list[dict] = ()) -> int:
    """Remove clean HR images and stage files that no image of this run uses any more.

    Call only after a run in which every image either finished or is a bad input: an image that
    failed for another reason would lose its earlier outputs.
    """
    keep = {Path(r["clean_hr"]).name for r in records}
    keep |= {f"{r['key']}{suffix}" for r in [*records, *pair_records, *kernel_records] for suffix in (".json", ".npz")}
    removed = 0
    for folder in (run.clean_hr, run.work / "preprocess", run.work / "pairs", run.work / "noise", run.work / "kernelgan", run.work / "kernels"):
        if folder.exists():
            for f in folder.iterdir():
                if f.is_file() and f.name not in keep:
                    f.unlink()
                    removed += 1
    return removed


def save_summary(run: RunDir, summary: dict) -> None:
    write_json(run.summary, summary)
