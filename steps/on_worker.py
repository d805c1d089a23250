"""degrade's per-image steps on a Dask worker that shares no disk with the flow.

With a run folder at a URL and a cluster of its own (`--dask-address`, REALSR_DASK_CLUSTER), a
worker may be another machine: the flow's local mirror is not there. Each task then works in a
scratch folder of the worker's own cache: it fetches its photos from the source URL and the run
files it reads (a clean HR image, the banks) from the run URL, runs the same step as locally, and
uploads what it wrote, stage records last (a record never points at a file not yet there). The
banks are fetched once per worker machine and digest. The records it returns name the photos by
URL (`DegradeSpec.photo_name`), so the flow cannot tell where a task ran.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from realsr.steps.degrade import DegradeSpec
from realsr.storage.remote import RemoteError, filesystem, is_url
from realsr.storage.run_dir import RunDir

BANKS = ("kernels.zarr", "noise.zarr")


@dataclass(frozen=True)
class Apart:
    """The run folder's URL, for tasks on workers apart from the flow (None: they share its disk)."""

    run: str


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realsr" / "remote"


@contextmanager
def on_worker(
    apart: Apart, s: DegradeSpec, photos: list[str] = (), files: list[str] = (), banks: dict[str, str] | None = None
) -> Iterator[tuple[RunDir, DegradeSpec]]:
    """A scratch run folder (and spec whose source is the scratch copy of the photos) holding
    `photos` (names under `s.source_name`), the run's `files` (relative paths) and the `banks`
    (name -> digest); what the step writes there goes to the run URL when it returns."""
    root = cache_root() / "tasks"
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="task-", dir=root))
    try:
        run, src = RunDir(scratch / "run"), scratch / "source"
        prefix = s.source_name.rstrip("/") + "/"
        _get(s.source_name, [name[len(prefix) :] for name in photos], src)
        _get(apart.run, list(files), run.root)
        for name, digest in (banks or {}).items():
            (run.root / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(bank_copy(apart.run, name, digest), run.root / name)
        before = {p for p in run.root.rglob("*") if p.is_file()}
        yield run, dataclasses.replace(s, source=src)
        made = sorted(p for p in run.root.rglob("*") if p.is_file() and p not in before and p.relative_to(run.root).parts[0] not in BANKS)
        records = [p for p in made if p.relative_to(run.root).parts[0] == ".work" and p.suffix == ".json"]
        _put([p for p in made if p not in records], run.root, apart.run)
        _put(records, run.root, apart.run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bank_copy(run_url: str, name: str, digest: str) -> Path:
    """This machine's copy of a bank of the run at `run_url`, one per digest (a bank never
    changes under its digest), made whole before it is used."""
    dest = cache_root() / "banks" / digest[:32] / name
    if dest.is_dir():
        return dest
    part = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=_mkdir(dest.parent)))
    try:
        fs, path = filesystem(f"{run_url.rstrip('/')}/{name}")
        files = fs.find(path)
        if not files:
            raise RemoteError(f"{run_url}/{name}: no such bank")
        fs.get(files, [str(part / f[len(path) :].lstrip("/")) for f in files])
        os.replace(part, dest)
    except OSError:
        if not dest.is_dir():
            raise
    except RemoteError:
        raise
    except Exception as e:
        raise RemoteError(f"{run_url}/{name}: downloading it failed ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return dest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _get(url: str, rels: list[str], dest: Path) -> None:
    if not rels:
        return
    assert is_url(url), url
    fs, path = filesystem(url)
    targets = [dest / rel for rel in rels]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get([f"{path.rstrip('/')}/{rel}" for rel in rels], [str(t) for t in targets])
    except FileNotFoundError as e:
        raise RemoteError(f"{url}: a file the task needs is gone ({e})") from None
    except Exception as e:
        raise RemoteError(f"{url}: downloading {len(rels)} files failed ({type(e).__name__}: {e})") from None


def _put(files: list[Path], root: Path, url: str) -> None:
    if not files:
        return
    fs, path = filesystem(url)
    try:
        fs.put([str(f) for f in files], [f"{path.rstrip('/')}/{f.relative_to(root).as_posix()}" for f in files])
    except Exception as e:
        raise RemoteError(f"{url}: uploading {len(files)} files failed ({type(e).__name__}: {e})") from None
