"""Writes that either happen whole or not at all, so a killed run never leaves a torn file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# A full disk, a quota, a read-only mount: the same write fails again, so it is not retried
# (tasks' retry conditions) and the command says which file, in one line (flows/cli.py).
NO_RETRY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def no_retry(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in NO_RETRY_ERRNOS


def space_left(path: Path | str) -> str:
    """Free space on the filesystem of `path` (its nearest existing parent), e.g. "12 MB free"."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return "free space unknown"
    return f"{st.f_bavail * st.f_frsize // 1_000_000} MB free"


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError of a write that names no file (write(2) does not) is re-raised naming `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a sibling temp file, fsync (when `durable`), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with naming(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_bytes(obj) -> bytes:
    """The project's JSON files' bytes (keys sorted, one-space indent): one format on disk and in a store."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


def write_json(path: Path, obj) -> None:
    write_bytes(path, json_bytes(obj))


def file_sha256(path: Path | str) -> str:
    """A file's SHA-256, read 1 MB at a time (weights of hundreds of MB stay out of memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def readable_dir(path: Path) -> Path:
    """Where a reader finds the store: `path`, or the old copy a killed swap left (read-only)."""
    path = Path(path)
    old = _old_name(path)
    return old if not path.exists() and old.exists() else path


def recover_dir(path: Path) -> None:
    """Finish or undo a directory swap that a killed run left half done, and drop temp copies.

    Writers only: a reader calling this could delete the temp copy of a store being written.
    """
    path = Path(path)
    old = _old_name(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory to fill; on success it takes `path`'s place in two renames.

    A crash before the first rename leaves the old store; between the renames `recover_dir`
    puts the old one back; after the second the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with naming(path):  # a store's chunk writes name no file: the store is named
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old_name(path)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
