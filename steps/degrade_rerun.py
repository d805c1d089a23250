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

from realsr.steps.degrade import DegradeSpec, _plain_name, _remove, key_of, pairs_done, pairs_key, preprocess_done
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


def write_index(run: RunDir, records: list[PreprocessRecord], s: DegradeSpec) -> None:
    """The index of the photos this run read (by their names, `DegradeSpec.photo_name`), with
    their size and time as they are now (a mirrored photo's are its object's: storage/remote.py)."""
    index = {}
    for r in records:
        try:
            st = s.photo_path(r.source).stat()
        except OSError:
            continue
        index[r.source] = [st.st_size, st.st_mtime_ns, r.sha256]
    write_json(run.work / INDEX, index)


def known_hash(path: Path, name: str, index: dict[str, list]) -> str | None:
    """The photo's content hash from the index, when its size and modification time still match."""
    entry = index.get(name)
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
        sha = known_hash(path, s.photo_name(path), index)
        record = preprocess_done(run, key_of(path, sha, s, s.preprocess_key_fields()), s.photo_name(path)) if sha else None
        if record:
            done.append(record)
        else:
            todo.append(path)
    return done, todo


def split_kernels(paths: list[Path], run: RunDir, s: DegradeSpec, index: dict) -> tuple[list[KernelRecord], list[Path]]:
    """(KernelGAN records of unchanged photos, photos to estimate)."""
    done, todo = [], []
    for path in paths:
        sha = known_hash(path, s.photo_name(path), index)
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


def prune(run: RunDir, records: list[PreprocessRecord], pair_records: list[PairsRecord], kernel_records: list = ()) -> int:
    """Remove what earlier runs recorded writing and no image of this run uses any more: stage
    records no longer current, and the outputs each lists (its clean HR image, staged patches or
    kernel, pairs). Nothing is found by listing an output folder, so a file the run did not write
    is never touched.

    Call only after a run in which every image either finished or is a bad input: an image that
    failed for another reason would lose its earlier outputs.
    """
    current = {r.key for r in [*records, *pair_records, *kernel_records]}
    keep_hr = {Path(r.clean_hr).name for r in records}
    keep_pairs = {row.name for r in pair_records for row in r.rows}
    removed = 0
    for stage in ("preprocess", "pairs", "kernelgan"):
        folder = run.work / stage
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            key = path.stem
            if not _is_key(key) or key in current:
                continue
            try:
                old = read_json(path)
            except (OSError, ValueError):
                old = {}
            old = old if isinstance(old, dict) and old.get("key") == key else {}  # unreadable: the record alone goes
            outputs = []
            if stage == "preprocess":
                outputs.append(run.staged_noise(key))
                if (hr := _plain_name(Path(str(old.get("clean_hr", ""))).name)) and hr not in keep_hr:
                    outputs.append(run.clean_hr / hr)
            elif stage == "pairs":
                outputs += [
                    run.pairs / d / f"{n}.png"
                    for row in old.get("rows", [])
                    if (n := _plain_name(str(row.get("name", "")))) and n not in keep_pairs
                    for d in ("hr", "lr")
                ]
            else:
                outputs.append(run.staged_kernel(key))
            removed += sum(_remove(p) for p in outputs) + _remove(path)
    return removed


def _is_key(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)
