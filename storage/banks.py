"""The Zarr schemas of the kernel bank and the noise bank.

One coordinator lays out and fills each store alone (workers only return small records and
stage their patches), and a store is written into a temp directory that replaces the old one in
two renames (`storage.atomic.replace_dir`), so readers never see a half-written bank.

noise.zarr                                    kernels.zarr
  patches   (N, P, P, 3) uint8, ~1 MB chunks    x2/, x4/  (one group per scale)
  source, source_sha256  (N,) str                kernels  (N, K, K) float32
  position  (N, 2) int32  (y, x) in the source   source, source_sha256, method  (N,) str
  gray_mean, gray_var  (N,) float32              kernel_sum, center_offset, border_energy,
  channel_mean, channel_var  (N, 3) float32       bicubic_distance (N,) float32; valid (N,) bool
attrs: selection rule, sources, versions         attrs: scale, size, resize_convention, ...

Each store carries `content_sha256`, a digest of every array in it, and every reader checks it
(once per process and store version): a deleted chunk file, which Zarr would read back as zeros,
or a truncated one is refused with the store's path and the array that is wrong. `digest` (all
arrays and the writer's attributes) is the bank's identity in cache keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from realsr.models.errors import InputError, RealsrError
from realsr.storage.atomic import readable_dir, replace_dir

SCHEMA_VERSION = 2  # 2: content_sha256 over every array; `digest` covers every array
_ZSTD = ZstdCodec(level=3)


def package_versions() -> dict[str, str]:
    names = ["realsr-pipeline", "numpy", "opencv-python-headless", "zarr"]
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:
            out[n] = "unknown"
    return out


def _put(group: zarr.Group, name: str, data: np.ndarray, chunks=None, compress=True) -> None:
    data = np.asarray(data)
    if data.dtype.kind == "U":
        arr = group.create_array(name, shape=data.shape, dtype=str, chunks=data.shape or (1,))
    else:
        arr = group.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks or (data.shape if data.size else (1,) * data.ndim),
            compressors=_ZSTD if compress else None,
        )
    if data.size:
        arr[...] = data


def strings(values) -> np.ndarray:
    """Zarr's variable-length strings (numpy StringDType) as a plain `str` array."""
    return np.array(np.asarray(values).tolist(), dtype=str).reshape(np.shape(values))


class DamagedStoreError(RealsrError, ValueError):
    """A bank whose files no longer hold what was written: one line with the store and what is wrong."""


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else "\0".join(a.ravel().tolist()).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# noise bank


@dataclass
class NoiseBank:
    """The noise bank in memory (small records; patches read lazily by index). The only reader of
    noise.zarr's layout: callers ask for columns and rows by name, never for Zarr arrays."""

    path: Path
    _group: zarr.Group
    _ids: list[str] | None = None

    @property
    def count(self) -> int:
        return int(self._group["patches"].shape[0])

    @property
    def patch_size(self) -> int:
        return int(self._group.attrs["patch_size"])

    @property
    def digest(self) -> str:
        return str(self._group.attrs["digest"])

    @property
    def attrs(self) -> dict:
        """How the bank was made: its rule and settings, its sources (a copy)."""
        return dict(self._group.attrs)

    @property
    def rule(self) -> str:
        return str(self._group.attrs.get("rule", "reference"))

    def rows(self, column: str, indices) -> np.ndarray:
        """Rows `indices` of a column, in one read."""
        return np.asarray(self._group[column].get_orthogonal_selection((np.asarray(indices),)))

    def patches(self, indices) -> np.ndarray:
        return self.rows("patches", indices)

    def noise(self, indices) -> np.ndarray:
        """What injection adds for rows `indices`: the `reference` rule's patches (their channel
        means are removed at injection, as the released code) or the `adaptive` rule's residuals."""
        return self.rows("patches" if self.rule == "reference" else "noise", indices)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self._group[name][...])

    def patch_id(self, index: int) -> str:
        """A stable name for a patch: its source's hash and its position there."""
        if self._ids is None:
            sha = strings(self._group["source_sha256"][...])
            pos = np.asarray(self._group["position"][...])
            self._ids = [f"{h[:16]}@{y},{x}" for h, (y, x) in zip(sha, pos.tolist())]
        return self._ids[index]


def patches_per_chunk(patch_size: int, target_bytes: int = 1 << 20) -> int:
    """Patches per chunk for ~1 MB chunks (zarr's guidance): 4 of 256 px, 64 of 64 px.

    One patch per chunk cost ~0.8 ms of zarr overhead per patch on write and per read call.
    """
    n = max(1, target_bytes // (patch_size * patch_size * 3))
    return 1 << (n.bit_length() - 1)


def write_noise_bank(path: Path, patches: np.ndarray, table: dict[str, np.ndarray], attrs: dict) -> str:
    """Write the whole noise bank atomically; returns its content digest.

    `table` holds the per-patch columns named in the module docstring, in patch order.
    """
    patches = np.asarray(patches, dtype=np.uint8)
    n = patches.shape[0]
    p = int(attrs["patch_size"])
    if patches.ndim != 4 or patches.shape[1:] != (p, p, 3):
        raise ValueError(f"noise patches must be (N, {p}, {p}, 3), got {patches.shape}")
    for k, v in table.items():
        if len(v) != n:
            raise ValueError(f"column {k} has {len(v)} rows for {n} patches")
    digest = _digest(patches, *[np.asarray(table[k]) for k in sorted(table)], _attrs_array(attrs))
    if _intact(path, digest):
        return digest  # an identical bank is already there: leave it untouched
    with replace_dir(path) as tmp:
        g = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        _put(g, "patches", patches, chunks=(patches_per_chunk(p), p, p, 3))
        for name, col in table.items():
            _put(g, name, np.asarray(col))
        _set_attrs(
            g,
            {
                **attrs,
                "kind": "realsr-noise-bank",
                "schema_version": SCHEMA_VERSION,
                "count": n,
                "digest": digest,
                "units": "patches: uint8 RGB of the source; stats on the 0-255 scale",
                "versions": package_versions(),
                "content_sha256": content_digest(g),
            },
        )
    return digest


def open_noise_bank(path: Path, verify: bool = True) -> NoiseBank:
    """The noise bank, checked against its content digest unless `verify` is off (a reader whose
    process already checked this store, e.g. a data-loader worker)."""
    path = Path(path)
    return NoiseBank(path, _open_group(readable_dir(path), "realsr-noise-bank", verify))


# ----------------------------------------------------------------------------------------------
# kernel bank


@dataclass
class KernelSet:
    """All kernels of one scale, with their provenance and checks."""

    scale: int
    kernels: np.ndarray  # (N, K, K) float32
    source: np.ndarray  # (N,) str
    source_sha256: np.ndarray
    method: np.ndarray
    checks: dict[str, np.ndarray]  # kernel_sum, center_offset, border_energy, bicubic_distance, valid
    reason: np.ndarray  # (N,) str, empty when valid

    def __len__(self) -> int:
        return int(self.kernels.shape[0])

    def valid_indices(self) -> np.ndarray:
        return np.flatnonzero(self.checks["valid"])

    def kernel_id(self, index: int) -> str:
        sha = str(self.source_sha256[index])
        return f"{self.method[index]}:{sha[:16]}" if sha else str(self.method[index])


CHECK_COLUMNS = ("kernel_sum", "center_offset", "border_energy", "bicubic_distance")
OPTIONAL_CHECKS = ("spread",)  # KernelGAN's seed-to-seed spread: only in banks whose kernels have several seeds


def write_kernel_bank(path: Path, sets: list[KernelSet], attrs: dict, scale_attrs: dict[int, dict]) -> str:
    """Write the kernel bank atomically (one group per scale); returns its content digest."""
    columns = [
        np.asarray(c)
        for s in sets
        for c in (
            s.kernels,
            s.source,
            s.source_sha256,
            s.method,
            s.reason,
            *[s.checks[k] for k in (*CHECK_COLUMNS, "valid", *OPTIONAL_CHECKS) if k in s.checks],
        )
    ]
    digest = _digest(*columns, _attrs_array([attrs, scale_attrs]))
    if _intact(path, digest):
        return digest
    with replace_dir(path) as tmp:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        for s in sets:
            g = root.create_group(f"x{s.scale}")
            k = s.kernels.shape[1] if s.kernels.ndim == 3 else 0
            _put(g, "kernels", s.kernels.astype(np.float32), chunks=(max(1, min(256, len(s))), k, k))
            for name in ("source", "source_sha256", "method", "reason"):
                _put(g, name, np.asarray(getattr(s, name), dtype=str))
            for name in (*CHECK_COLUMNS, *(c for c in OPTIONAL_CHECKS if c in s.checks)):
                _put(g, name, np.asarray(s.checks[name], dtype=np.float32))
            _put(g, "valid", np.asarray(s.checks["valid"], dtype=bool))
            _set_attrs(g, {"scale": s.scale, "size": k, "count": len(s), **scale_attrs.get(s.scale, {})})
        _set_attrs(
            root,
            {
                **attrs,
                "kind": "realsr-kernel-bank",
                "schema_version": SCHEMA_VERSION,
                "digest": digest,
                "scales": [s.scale for s in sets],
                "versions": package_versions(),
                "content_sha256": content_digest(root),
            },
        )
    return digest


def _attrs_array(attrs) -> np.ndarray:
    import json

    return np.array([json.dumps(attrs, sort_keys=True, default=str)])


def _sorted(obj):
    """`obj` with every mapping's keys in order: the same attributes give the same zarr.json bytes
    (records read back from JSON and made fresh list their keys in other orders)."""
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(v) for v in obj]
    return obj


def _set_attrs(group: zarr.Group, attrs: dict) -> None:
    """A new group's attributes, written once, keys sorted at every level."""
    group.attrs.update(_sorted(attrs))


def _intact(path: Path, digest: str) -> bool:
    """The store at `path` has this `digest` and its arrays still match their checksum (read from
    disk, not this process's memory of an earlier check: a damaged store is rebuilt by the rerun,
    as its error message says)."""
    try:
        g = zarr.open_group(zarr.storage.LocalStore(Path(path), read_only=True), mode="r")
        if g.attrs.get("digest") != digest:
            return False
        verify_store(Path(path), g, remembered=False)
        return True
    except Exception:
        return False


def content_digest(group: zarr.Group, where: Path | str = "") -> str:
    """sha256 of every array under `group` (names, shapes, dtypes, values), read back from disk."""
    h = hashlib.sha256()
    for name, arr in sorted(group.arrays(), key=lambda x: x[0]):
        try:
            data = arr[...]
        except Exception as e:  # a truncated or garbled chunk: the codec's own error names no file
            raise DamagedStoreError(
                f"{where}: damaged store: array {name!r} cannot be read ({type(e).__name__}: {str(e)[:120]}); rerun degrade to rebuild it"
            ) from None
        h.update(name.encode() + b"|" + _digest(strings(data) if data.dtype.kind in "OT" else np.asarray(data)).encode())
    for name, sub in sorted(group.groups(), key=lambda x: x[0]):
        h.update(name.encode() + b"/" + content_digest(sub, f"{where}/{name}").encode())
    return h.hexdigest()


_VERIFIED: set[tuple[str, int]] = set()


def verify_store(path: Path, g: zarr.Group, remembered: bool = True) -> None:
    """Refuse a store whose arrays no longer match the content digest written with it; one this
    process verified before (same metadata file) is not read again, unless not `remembered`."""
    meta = path / "zarr.json"
    key = (str(path.resolve()), meta.stat().st_mtime_ns)
    if remembered and key in _VERIFIED:
        return
    stored = g.attrs.get("content_sha256")
    if stored is None:
        raise DamagedStoreError(f"{path}: written by an older version, without a content checksum; rerun degrade to rewrite it (finished work is reused)")
    if content_digest(g, path) != stored:
        raise DamagedStoreError(
            f"{path}: damaged store: its arrays do not match the checksum written with them (a chunk file missing or changed); rerun degrade to rebuild it"
        )
    _VERIFIED.add(key)


def _open_group(path: Path, kind: str, verify: bool = True) -> zarr.Group:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        g = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    except Exception as e:
        raise InputError(f"{path} is not a Zarr group ({e})") from None
    if g.attrs.get("kind") != kind:
        raise InputError(f"{path} is not a {kind} (kind={g.attrs.get('kind')!r})")
    if verify:
        verify_store(path, g)
    return g


def open_kernel_bank(path: Path) -> tuple[dict, dict[int, KernelSet]]:
    """The bank's attributes and its kernel sets by scale."""
    root = _open_group(readable_dir(Path(path)), "realsr-kernel-bank")
    sets = {}
    for scale in root.attrs["scales"]:
        g = root[f"x{scale}"]
        sets[int(scale)] = KernelSet(
            scale=int(scale),
            kernels=np.asarray(g["kernels"][...], dtype=np.float32),
            source=strings(g["source"][...]),
            source_sha256=strings(g["source_sha256"][...]),
            method=strings(g["method"][...]),
            checks={**{c: np.asarray(g[c][...]) for c in (*CHECK_COLUMNS, *OPTIONAL_CHECKS) if c in g}, "valid": np.asarray(g["valid"][...])},
            reason=strings(g["reason"][...]),
        )
    return dict(root.attrs), sets


def bank_kind(path: Path) -> str:
    try:
        g = zarr.open_group(zarr.storage.LocalStore(Path(path), read_only=True), mode="r")
    except Exception as e:
        raise InputError(f"{path} is not a Zarr store ({e})") from None
    kind = g.attrs.get("kind", "")
    if kind not in ("realsr-kernel-bank", "realsr-noise-bank"):
        raise InputError(f"{path} is not a kernel or noise bank (kind={kind!r})")
    return kind
