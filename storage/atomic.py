"""Writes that either happen whole or not at all, so a killed run never leaves a torn file."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a sibling temp file, fsync (when `durable`), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


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
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old_name(path)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
