"""degrade-flow's kernel steps: KernelGAN's kernel of each photo, and the kernel bank.

The bank holds x2 kernels and their analytic x4 kernels, from KernelGAN (one per photo, or the
camera's consensus), the bicubic kernel (the paper's Track 1), or another run's bank.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from realsr.models.errors import InputError
from realsr.models.kernelgan_post import seed_spread, x4_base
from realsr.models.kernels import KERNEL_SIZE, RESIZE_CONVENTION, analytic_x4, bicubic_kernel, check_kernel, consensus_kernel
from realsr.steps.degrade import DegradeSpec, Log, _quiet, decode_source, npz_bytes, source_key
from realsr.storage.atomic import write_bytes
from realsr.storage.banks import KernelSet, open_kernel_bank, write_kernel_bank
from realsr.storage.degrade_records import KernelRecord
from realsr.storage.images import BadImageError
from realsr.storage.run_dir import RunDir


def estimate_source_kernels(paths: list[Path], run: RunDir, s: DegradeSpec, device: str = "cpu", log: Log = _quiet) -> list[KernelRecord | BadImageError]:
    """KernelGAN's x2 kernel of each source image (the real photo, before clean-up).

    The images not done in an earlier run train together in one loop (`estimate_kernels`): the
    same algorithm per image, one set of kernel launches; with the fused engine (`kernel_engine`)
    every image x seed is a slot of one network. Returns a record or the BadImageError of each
    path, in order.
    """
    cfg = _kernelgan_config(s)
    estimate_kernels = _engine(kernel_engine(s, device))
    prior = None
    if s.uses_prior:
        from realsr.storage.kernel_prior_file import load

        prior, _ = load(s.kernel_prior)
    results: dict[Path, KernelRecord | BadImageError] = {}
    todo = []
    for path in paths:
        try:
            data, sha, key = source_key(path, s, s.kernelgan_key_fields())
            if (done := kernel_done(run, key)) is not None:
                results[path] = done
                continue
            rgb = decode_source(path, data, s).rgb
            if problem := cfg.too_small(*rgb.shape[:2]):
                raise BadImageError(path, problem)
            todo.append((path, sha, key, rgb))
        except BadImageError as e:
            results[path] = e
    if todo:
        t0 = time.perf_counter()
        names = ", ".join(Path(t[0]).name for t in todo)
        what = "KernelGAN-FKP" if prior is not None else "KernelGAN"
        log(f"{what} on {len(todo)} image(s) at once on {device}, {kernel_engine(s, device)} engine: {names}")
        progress = lambda it, losses: log(f"{what} {it}/{cfg.iterations} ({names}) {losses}")  # noqa: E731
        estimates = estimate_kernels([t[3] for t in todo], cfg, device=device, progress=progress, **({"prior": prior} if prior is not None else {}))
        seconds = round((time.perf_counter() - t0) / len(todo), 3)
        for (path, sha, key, _), est in zip(todo, estimates):
            results[path] = _record(est, path, sha, key, run, s, cfg, device, seconds, prior is not None, log)
    return [results[p] for p in paths]


# The engine `auto` picks on the CPU. Measured on the KernelGAN benchmark (BENCHMARKS.md): see
# `kernel_engine`; the per-image engine's kernels are the ones tests/test_kernel_golden.py pins.
CPU_ENGINE = "per-image"


def kernel_engine(s: DegradeSpec, device: str) -> str:
    """The KernelGAN engine a run uses: the setting, or for `auto` the fused engine on CUDA (one
    network per step instead of thousands of small launches) and `CPU_ENGINE` elsewhere;
    KernelGAN-FKP always per image (the fused engine is plain KernelGAN's)."""
    if s.uses_prior:
        return "per-image"
    if s.kernelgan_engine != "auto":
        return s.kernelgan_engine
    return "fused" if str(device).startswith("cuda") else CPU_ENGINE


def _engine(name: str):
    if name == "fused":
        from realsr.models.kernelgan_fused import estimate_kernels_fused

        return estimate_kernels_fused
    from realsr.models.kernelgan import estimate_kernels

    return estimate_kernels


def _record(est, path: Path, sha: str, key: str, run: RunDir, s: DegradeSpec, cfg, device: str, seconds: float, fkp: bool, log: Log) -> KernelRecord:
    """One photo's estimate kept: its kernel (bicubic where KernelGAN failed) staged, its record saved."""
    fallback = None if est.ok else f"{est.problem}: the bicubic kernel stands in"
    if fallback:
        log(f"{Path(path).name}: {fallback}")
    kernel = est.kernel if est.ok else bicubic_kernel(2)
    write_bytes(run.staged_kernel(key), npz_bytes({"kernel": kernel, "raw": est.raw}))
    spread = seed_spread(est, 0 if fkp else cfg.n_filtering) if est.ok else None
    if spread is not None and spread > SPREAD_FLAG:
        log(f"{Path(path).name}: its {cfg.seeds} seeds disagree (spread {spread:.3f} > {SPREAD_FLAG}): its kernel is their median, look at it")
    record = KernelRecord(
        key=key,
        source=s.photo_name(path),
        sha256=sha,
        losses=est.losses,
        device=device,
        seconds=seconds,
        iterations=est.iterations,
        seed=est.seed,
        fallback=fallback,
        spread=spread,
    )
    record.save(run)
    return record


# A photo whose seeds' kernels lie this far (mean total variation to their median) from one another
# is flagged in the log, the bank and `inspect`: on the benchmark's 24 photos KernelGAN's seeds
# spread 0.066 (median) and at most 0.12 (`bench/kernel_spread.py`); above this the median stands
# on seeds that disagree. A flag, not a fallback: the spread did not pick out the estimates worse
# than the bicubic kernel there.
SPREAD_FLAG = 0.15


def kernel_done(run: RunDir, key: str) -> KernelRecord | None:
    """The KernelGAN record of an earlier run, when its staged kernel is still there."""
    done = KernelRecord.load(run, key, cached=True)
    return done if done is not None and run.staged_kernel(key).exists() else None


def _kernelgan_config(s: DegradeSpec):
    """The KernelGAN configuration a run's settings ask for: each config field the spec holds as
    `kernelgan_<field>` (a new KernelGAN setting needs no edit here), the run's seed, and the
    reference's values (`KernelGANConfig`'s own) for the rest."""
    from dataclasses import fields

    from realsr.models.kernelgan import KernelGANConfig

    given = {f.name: getattr(s, f"kernelgan_{f.name}") for f in fields(KernelGANConfig) if hasattr(s, f"kernelgan_{f.name}")}
    return KernelGANConfig(**given, seed=s.seed)


def kernelgan_sets(run: RunDir, records: list[KernelRecord], camera: bool = False, name: str = "kernelgan") -> list[KernelSet]:
    """x2 kernels from KernelGAN records (source order) and their analytic x4 kernels; an image
    whose estimate failed has the bicubic kernels, marked `bicubic-fallback`. `camera` adds one
    kernel for the camera, the consensus of the estimates that did not fail (`kernelgan-camera`,
    the last row), which the pairs then use for every image."""
    records = sorted(records, key=lambda r: r.source)
    k2, raw = [], []
    for r in records:
        with np.load(run.staged_kernel(r.key), allow_pickle=False) as z:
            k2.append(z["kernel"])
            raw.append(z["raw"])
    src, sha = [r.source for r in records], [r.sha256 for r in records]
    failed = [bool(r.fallback) for r in records]
    spread = [np.nan if r.spread is None else r.spread for r in records]
    m2 = ["bicubic-fallback" if f else name for f in failed]
    base = [None if f else x4_base(r) for r, f in zip(raw, failed)]  # x4 composes the unthresholded x2 kernel
    k4 = [bicubic_kernel(4) if f else analytic_x4(b) for b, f in zip(base, failed)]
    m4 = ["bicubic-fallback" if f else f"{name}+analytic-x4" for f in failed]
    good = [k for k, f in zip(k2, failed) if not f]
    if camera and good:
        cam = consensus_kernel(good)
        k2, k4 = [*k2, cam], [*k4, analytic_x4(consensus_kernel([b for b in base if b is not None]))]
        src, sha = [*src, f"camera: consensus of {len(good)} photos"], [*sha, ""]
        m2, m4, spread = [*m2, f"{name}-camera"], [*m4, f"{name}-camera+analytic-x4"], [*spread, np.nan]
    spread = spread if any(np.isfinite(spread)) else None  # one seed: no spread column
    return [kernel_set(2, k2, src, sha, m2, spread), kernel_set(4, k4, src, sha, m4, spread)]


def kernel_sets_for(spec: str, required: int, scales=(2, 4)) -> tuple[list[KernelSet], dict]:
    """The kernel sets a kernel source gives, with provenance attributes for the bank.

    Only the `required` scale must be there; x4 is derived from x2 when missing.
    """
    if spec == "bicubic":
        sets = []
        for scale in scales:
            k = bicubic_kernel(scale, KERNEL_SIZE[scale])
            sets.append(kernel_set(scale, [k], [""], [""], ["bicubic"]))
        return sets, {"kernel_source": "bicubic", "note": "MATLAB antialiased bicubic, the paper's Track 1 recipe"}
    if spec.startswith("bank:"):
        path = Path(spec[5:])
        try:
            attrs, found = open_kernel_bank(path)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"kernel source {spec}: {e}") from None
        sets = []
        for scale in scales:
            if scale in found:
                sets.append(found[scale])
            elif scale == 4 and 2 in found:
                k2 = found[2]
                k4 = [analytic_x4(k) for k in k2.kernels]
                sets.append(kernel_set(4, k4, list(k2.source), list(k2.source_sha256), [f"{m}+analytic-x4" for m in k2.method]))
            elif scale == required:
                raise InputError(f"kernel source {spec}: the bank has no x{scale} kernels")
        return sets, {"kernel_source": spec, "imported_from": str(path), "imported_digest": attrs.get("digest", "")}
    raise InputError(f"unknown kernel source {spec!r}")


def kernel_set(scale: int, kernels, source, sha, method, spread=None) -> KernelSet:
    """Kernels of one scale with their checks, as a bank holds them; `spread`: each kernel's
    seed-to-seed spread (NaN where there is none), stored only when given."""
    checks = [check_kernel(k, scale) for k in kernels]
    extra = {} if spread is None else {"spread": np.asarray(spread, dtype=np.float64)}
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
            **extra,
        },
        reason=np.asarray([c.reason for c in checks], dtype=str),
    )


def build_kernel_bank(run: RunDir, s: DegradeSpec, kernelgan_records: list[KernelRecord] | None = None) -> dict:
    if s.kernels.startswith("kernelgan"):
        sets = kernelgan_sets(run, kernelgan_records or [], camera=s.kernels.endswith("-camera"), name="kernelgan-fkp" if s.uses_prior else "kernelgan")
        cfg = _kernelgan_config(s)
        attrs = {"kernel_source": s.kernels, "kernelgan": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.as_dict().items()}}
        if s.uses_prior:
            attrs["kernel_prior"] = {"file": s.kernel_prior, "sha256": s.kernelgan_key_fields()["prior_sha256"]}
    else:
        sets, attrs = kernel_sets_for(s.kernels, s.scale)
    scale_attrs = {st.scale: {"resize_convention": RESIZE_CONVENTION} for st in sets}
    digest = write_kernel_bank(run.kernels, sets, attrs, scale_attrs)
    counts = {f"x{st.scale}": {"kernels": len(st), "valid": int(st.checks["valid"].sum())} for st in sets}
    rejected = [{"source": str(src), "scale": st.scale, "reason": str(why)} for st in sets for src, why in zip(st.source, st.reason) if why]
    if not counts.get(f"x{s.scale}", {}).get("valid"):
        raise InputError(f"the kernel bank has no valid x{s.scale} kernels: no pairs can be made")
    fallbacks = [{"source": r.source, "reason": r.fallback} for r in kernelgan_records or [] if r.fallback]
    return {"path": str(run.kernels), "digest": digest, "counts": counts, "rejected": rejected, "fallbacks": fallbacks}
