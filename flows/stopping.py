"""Ctrl-C and SIGTERM: every process of the run gone within seconds, the run resumable, exit 130/143.

Left to the libraries a signal did not stop a run: Prefect swaps SIGTERM for its own handler
during a flow (and its exception can end up wrapped as an item's failure), the Dask workers
inherit an ignored SIGINT from a shell's background job and train on, and an API server killed
by a group's SIGINT leaves the unwinding waiting on it. So the command owns both signals:
a thread sees each one through the wakeup fd (whichever Python handler Prefect has put in
place), stops the run's worker processes at once and gives the main thread a few seconds to
unwind (temp files removed, the flow run marked crashed, the cluster and API server closed)
before it ends the process itself. Every write is atomic and records are written last, so a
rerun of the same command continues where this one stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

STOPPED_LINE = "stopped; rerun the same command to continue"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
UNWIND_S = 3.5  # the main thread's time to unwind before the process ends itself

_lock = threading.RLock()  # the handler may run while the main thread holds it
_state: dict = {"signum": None, "raised": False, "said": False}
_spared: set[int] = set()  # processes the unwinding still needs (the embedded API server)


class Stopped(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM. A BaseException, so no `except Exception`
    of a step takes it for an item's failure."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def requested() -> int | None:
    """The signal that stopped this run, if one did."""
    return _state["signum"]


def exit_code(signum: int) -> int:
    return 128 + signum  # 130 for SIGINT, 143 for SIGTERM


@contextmanager
def spared(pid: int) -> Iterator[None]:
    """Leave `pid` to the unwinding (it stops it itself) when the workers are stopped."""
    _spared.add(pid)
    try:
        yield
    finally:
        _spared.discard(pid)


def descendants(root: int | None = None) -> list[int]:
    """Every live process below `root` (default: this one) in its session, from /proc.

    Another session is a process started to outlive the command (`realsr stack up`'s services).
    """
    root = root or os.getpid()
    sid = os.getsid(root)
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def _signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _say() -> None:
    with _lock:
        if _state["said"]:
            return
        _state["said"] = True
    try:
        sys.stderr.flush()
        os.write(2, f"\n{STOPPED_LINE}\n".encode())
    except OSError:
        pass


def finish() -> int:
    """The command's end after a signal: what is left of the run killed, the line, the code."""
    _signal_all(descendants(), signal.SIGKILL)
    _say()
    return exit_code(_state["signum"])


def _request(signum: int) -> None:
    """Record the first signal, stop the workers, and set the deadline."""
    with _lock:
        if _state["signum"] is not None:
            return
        _state["signum"] = signum
    logging.disable(logging.CRITICAL)  # Prefect's crash report, Dask's lost workers: the line says it all
    _no_restarts()
    _signal_all([p for p in descendants() if p not in _spared], signal.SIGTERM)
    threading.Thread(target=_deadline, daemon=True, name="realsr-stop-deadline").start()


def _no_restarts() -> None:
    """A local Dask cluster's nannies (in this process) restart a worker process that dies: the
    new one would take the lost tasks and log a traceback for each when the cluster closes.
    A nanny closing gracefully closes instead."""
    nanny = sys.modules.get("distributed.nanny")
    if nanny is None:
        return
    from distributed.core import Status

    for n in list(getattr(nanny.Nanny, "_instances", ())):
        try:
            n.status = Status.closing_gracefully
        except Exception:  # a nanny already closed
            pass


def _deadline() -> None:
    """End the process if the main thread has not done so in UNWIND_S (an unwinding stuck on a
    dead API server, a library that swallowed the exception)."""
    time.sleep(UNWIND_S)
    _signal_all(descendants(), signal.SIGKILL)
    _say()
    os._exit(exit_code(_state["signum"]))


def _on_signal(signum, frame) -> None:
    _request(signum)
    with _lock:
        if _state["raised"]:  # a second Ctrl-C must not break off the unwinding of the first
            return
        _state["raised"] = True
    raise Stopped(signum)


def _watch(fd: int) -> None:
    """See every SIGINT/SIGTERM, whichever Python handler runs for it (Prefect's own SIGTERM
    handler during a flow raises an exception that may be wrapped and lost on its way)."""
    while data := _read(fd):
        for b in data:
            if b in SIGNALS:
                _request(b)
    os.close(fd)  # the command ended


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 64)
    except OSError:
        return b""


@contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM stop the command as the module says (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}  # also where a shell left SIGINT ignored
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(r,), daemon=True, name="realsr-stop").start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        if _state["signum"] is None:
            os.close(w)  # the watcher reads EOF and ends
