"""One writer per folder: a run holds its folder's lock from its preflight to its last write.

The lock is `flock` on FOLDER/.lock, taken without waiting: a second run is refused at once,
with one line naming the holder (pid, host, command, start time, which the holder writes into
the file). The kernel drops the lock when the holding process ends, however it ends (kill -9
included), so a lock file left behind is never stale. The holder is the driver, the process that
runs the flow: Dask's workers are other processes (spawned, they inherit no descriptor) that
write under its lock. A forked child (a DataLoader worker) shares the descriptor, so one that
outlives a killed driver for a few seconds holds the lock until it exits; the next run waits for
that when the recorded holder is gone from this host.

Within one process the lock is reentrant, counted per folder: the CLI takes it right after its
preflight (before the Prefect server starts), then the flow it runs takes it again. A pipeline
holds its folder and its stages hold theirs (other paths). On the last release the lock file
is removed, and the folder too when the lock made it and nothing else was written there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from realsr.models.errors import InputError, RealsrError

LOCK = ".lock"
ORPHAN_WAIT_S = 20.0  # how long the children of a dead holder may keep its lock before a run gives up


class FolderBusy(RealsrError, ValueError):
    """Another run holds the folder: the CLI's one-line refusal, exit 2."""


@dataclass
class _Held:
    fd: int
    count: int
    path: Path
    created: bool


_held: dict[str, _Held] = {}
_guard = threading.Lock()


@contextmanager
def hold(folder: Path | str, what: str = "run folder") -> Iterator[Path]:
    """Hold `folder`'s lock for the block (made when missing); FolderBusy when another run has it."""
    key = acquire(folder, what)
    try:
        yield Path(folder)
    finally:
        release(key)


def acquire(folder: Path | str, what: str = "run folder") -> str:
    """Take (or, in the process that holds it, re-enter) `folder`'s lock; returns its key for `release`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file")
    key = os.path.realpath(folder)
    with _guard:
        if key in _held:
            _held[key].count += 1
            return key
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock(folder / LOCK, folder, what)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(info, sort_keys=True).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        _held[key] = _Held(fd, 1, folder / LOCK, created)
        return key


def release(key: str) -> None:
    """Leave the lock; the last release removes the lock file (and a folder the lock made, if empty)."""
    with _guard:
        h = _held[key]
        h.count -= 1
        if h.count:
            return
        del _held[key]
        try:
            if _same_file(h.fd, h.path):  # removed while still held: a run that opened it meanwhile retries on a new file
                h.path.unlink()
            if h.created:
                h.path.parent.rmdir()  # only when empty: a run that wrote nothing leaves nothing
        except OSError:
            pass
        finally:
            os.close(h.fd)


def _lock(path: Path, folder: Path, what: str) -> int:
    """An open descriptor of `path` with the lock on it, or FolderBusy."""
    deadline = None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its last holder removed the folder it had made: make it again
            folder.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            who = _record(fd)
            os.close(fd)
            if who and _dead_here(who):  # its forked children still hold it: they end shortly
                deadline = deadline or time.monotonic() + ORPHAN_WAIT_S
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
            raise FolderBusy(_busy(folder, what, who)) from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its last holder removed the file as we opened it: lock the new one


def _record(fd: int) -> dict:
    """The holder's record in the lock file (it writes it just after locking: give it a moment)."""
    for _ in range(20):
        try:
            who = json.loads(os.pread(fd, 4096, 0) or b"null")
            if isinstance(who, dict):
                return who
        except ValueError:
            pass
        time.sleep(0.025)
    return {}


def _dead_here(who: dict) -> bool:
    if who.get("host") != socket.gethostname() or not isinstance(who.get("pid"), int):
        return False
    try:
        os.kill(who["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _busy(folder: Path, what: str, who: dict) -> str:
    if not who:
        return f"{what} {folder} is in use by another run (it is starting); wait for it to finish or choose another folder"
    gone = " (no longer running: processes it left still hold the folder; end them or retry)" if _dead_here(who) else ""
    return (
        f"{what} {folder} is in use by another run: pid {who.get('pid')} on host {who.get('host')}{gone}, since {who.get('started')}, "
        f"`{who.get('command', '')}`; wait for it to finish or stop it, or choose another folder"
    )


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
