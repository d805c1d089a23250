"""Which photos of a rerun need work, decided in the flow from the stored records.

A photo is only worth a task when something about it changed. The run keeps a source index
(`.work/sources.json`: path -> size, modification time, content hash); a photo whose size and
modification time match the index gets its content hash from there, its stage keys follow, and
a stage record whose outputs are all on disk is taken as done without reading the photo or
sending it to a worker: a nightly rerun over unchanged photos costs a stat and a small JSON read
per photo. Anything else (new, touched, records or outputs missing) goes to the workers, which
check again by content as they always did.
"""

from __future__ import annotations

from pathlib import Path

from realsr.steps.degrade import DegradeSpec, key_of, pairs_done, pairs_key, preprocess_done
from realsr.steps.degrade_kernels import kernel_done
from realsr.storage.atomic import read_json, write_json
from realsr.storage.degrade_records import KernelRecord, PairsRecord, PreprocessRecord
from realsr.storage.run_dir import RunDir

INDEX = "sources.json"


def read_index(run: RunDir) -> dict[str, list]:
    """path -> [size, mtime_ns, sha256]; empty when absent or unreadable (then every photo is checked by content)."""
    try:
        index = read_json(run.work / INDEX)
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def write_index(run: RunDir, records: list[PreprocessRecord]) -> None:
    """The index of the photos this run read, with their size and time as they are now."""
    index = {}
    for r in records:
        try:
            st = Path(r.source).stat()
        except OSError:
            continue
        index[r.source] = [st.st_size, st.st_mtime_ns, r.sha256]
    write_json(run.work / INDEX, index)


def known_hash(path: Path, index: dict[str, list]) -> str | None:
    """The photo's content hash from the index, when its size and modification time still match."""
    entry = index.get(str(path))
    if not entry:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return entry[2] if [st.st_size, st.st_mtime_ns] == entry[:2] else None


def split_prepared(paths: list[Path], run: RunDir, s: DegradeSpec, index: dict) -> tuple[list[PreprocessRecord], list[Path]]:
    """(clean-up records of unchanged photos, photos to clean up)."""
    done, todo = [], []
    for path in paths:
        sha = known_hash(path, index)
        record = preprocess_done(run, key_of(path, sha, s, s.preprocess_key_fields()), path) if sha else None
        if record:
            done.append(record)
        else:
            todo.append(path)
    return done, todo


def split_kernels(paths: list[Path], run: RunDir, s: DegradeSpec, index: dict) -> tuple[list[KernelRecord], list[Path]]:
    """(KernelGAN records of unchanged photos, photos to estimate)."""
    done, todo = [], []
    for path in paths:
        sha = known_hash(path, index)
        record = kernel_done(run, key_of(path, sha, s, s.kernelgan_key_fields())) if sha else None
        if record:
            done.append(record)
        else:
            todo.append(path)
    return done, todo


def split_pairs(
    records: list[PreprocessRecord], run: RunDir, s: DegradeSpec, kernel_digest: str, noise_digest: str
) -> tuple[list[PairsRecord], list[PreprocessRecord]]:
    """(pairs records still current, clean-up records whose pairs must be made)."""
    done, todo = [], []
    for r in records:
        record = pairs_done(run, pairs_key(r, s, kernel_digest, noise_digest), r)
        if record:
            done.append(record)
        else:
            todo.append(r)
    return done, todo
