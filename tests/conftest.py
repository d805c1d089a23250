"""Shared fixtures: seeded synthetic photos, odd inputs made on the fly, one Prefect API per session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from realsr.flows.runtime import apply_env_defaults

apply_env_defaults()
SHARED = Path(__file__).resolve().parents[2] / "shared"
if (SHARED / "weights").is_dir():  # an offline copy beside the checkout (CI, developers): the suite's weights folder
    os.environ.setdefault("REALSR_WEIGHTS_DIR", str(SHARED / "weights"))


def write_rgb(path: Path, rgb: np.ndarray, params=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb if rgb.dtype != np.float32 else (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr[..., ::-1]), list(params))
    return path


def flat_noisy(h: int, w: int, level: float, sigma: float, seed: int) -> np.ndarray:
    """A flat patch of gray `level` (0-255) with Gaussian noise of std `sigma` levels, as uint8."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(level + rng.normal(0, sigma, (h, w, 3))), 0, 255).astype(np.uint8)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[:h, :w], 0, 255).astype(np.uint8)


def small_photo(seed: int, h: int = 192, w: int = 256) -> np.ndarray:
    """Top half flat and noisy (noise patches), bottom half textured (content)."""
    img = textured(h, w, seed)
    img[: h // 2] = flat_noisy(h // 2, w, 120 + 10 * (seed % 5), 2.0, seed)
    return img


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    for i in range(4):
        write_rgb(src / f"photo_{i}.png", small_photo(i))
    return src


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect API server for the tests that run flows (started on 127.0.0.1)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from realsr.flows.runtime import prefect_api

    with prefect_api() as url:
        yield url


@pytest.fixture(scope="session")
def weights_ready() -> dict[str, Path]:
    """Every released generator and backbone, verified: from REALSR_WEIGHTS_DIR or the user cache,
    else fetched there as a user's first run would (so a fresh clone tests the real fetch). Those
    with no published digest are never fetched, so not here."""
    from realsr.storage.weights import CATALOG, require

    return {name: require(name) for name, w in CATALOG.items() if any(s.check != "unpublished" for s in w.sources)}


def stop_groups(procs: list[subprocess.Popen], grace: float = 30) -> None:
    """Stop what a test started (each in its own session): SIGTERM to every process group, then
    SIGKILL to any that has not exited after `grace` seconds; every one is reaped."""
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in reversed(procs):
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


DASK = str(Path(sys.executable).with_name("dask"))


@contextmanager
def dask_processes(log: Path, workers: list[list[str]], expect: int, homes: list[Path] | None = None) -> Iterator[str]:
    """A real `dask scheduler` on 127.0.0.1 and one `dask worker` command per entry of `workers`
    (its extra arguments: `--nworkers 3`, `--resources GPU=1`), one thread each; yields the
    scheduler's address once `expect` workers have joined. All stopped by process group, also on failure.
    `homes`: one folder per worker, its HOME, cache, temp and working folder (a machine of its own)."""
    from distributed import Client

    from realsr.flows.runtime import WORKER_ENV
    from realsr.flows.stack import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **WORKER_ENV}
    procs = []
    with open(log, "wb") as out:
        run = dict(env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            procs.append(subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"], **run))
            for i, extra in enumerate(workers):
                own = {}
                if homes:
                    for sub in ("home", "cache", "tmp", "work"):
                        (homes[i] / sub).mkdir(parents=True, exist_ok=True)
                    own = dict(
                        cwd=homes[i] / "work",
                        env={**env, "HOME": str(homes[i] / "home"), "XDG_CACHE_HOME": str(homes[i] / "cache"), "TMPDIR": str(homes[i] / "tmp")},
                    )
                    extra = [*extra, "--local-directory", str(homes[i] / "work")]
                args = [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", *extra]
                procs.append(subprocess.Popen(args, **{**run, **own}))
            with Client(address, timeout=60) as c:
                c.wait_for_workers(expect, timeout=120)
            yield address
        finally:
            stop_groups(procs)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny x4 RRDBNet generator file (8 features, 1 block, growth 32: spandrel loads it too)."""
    import torch

    from realsr.models.rrdbnet import RRDBConfig, RRDBNet
    from realsr.storage.model_files import save_generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_x4.pth"
    save_generator(path, RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=32)))
    return path
