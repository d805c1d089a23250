"""The layout of a run folder, its marker file, and per-image stage records (the resume points).

RUN_DIR/
  run.json                 marker: which tool made this folder, settings of the last run
  kernels.zarr  noise.zarr the banks
  clean_hr/<name>.png      clean HR images (name = <stem>-<sha8>)
  pairs/hr, pairs/lr       training pairs as same-named PNGs (BasicSR's paired layout)
  pairs/manifest.jsonl     one line per pair: source, position, kernel and noise patch used, seed
  pairs/images.jsonl       one line per clean HR image: its kernel, JPEG quality, pair count
  summary.json             the last run's summary
  .work/                   stage records and staged noise patches (safe to delete: costs a rerun)
  .lock                    while a run writes here: who (storage/lock.py)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from realsr.models.errors import RealsrError
from realsr.storage.atomic import read_json, write_json
from realsr.storage.lock import LOCK

MARKER = "run.json"
TOOL = "realsr-pipeline"


class RunDirError(RealsrError, ValueError):
    pass


def check_folder(out: Path, marker: str, what: str) -> Path:
    """`out` may become (or stay) one of our folders: new, empty, or holding our `marker` file.
    Checked without writing anything, so a command can refuse before it starts."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise RunDirError(f"{what} {out} is a file")
        if not (out / marker).exists():
            if any(p.name != LOCK for p in out.iterdir()):
                raise RunDirError(f"{out} holds other files and is not a {what} (no {marker}); choose an empty or new folder")
        else:
            try:
                tool = read_json(out / marker).get("tool")
            except (OSError, ValueError, AttributeError):
                tool = None
            if tool != TOOL:
                raise RunDirError(f"{out / marker} was not written by {TOOL}")
    return out


def claim_folder(out: Path, marker: str, what: str, record: dict) -> Path:
    """Make `out` one of our folders (see `check_folder`), its marker holding `record`."""
    out = check_folder(out, marker, what)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / marker, {"tool": TOOL, **record})
    return out


def check_remote_folder(url: str, marker: str = MARKER, what: str = "run folder", must_exist: bool = False) -> str:
    """`check_folder` for a folder at a URL, read without downloading it; `must_exist`: it must
    already be one of ours (an input, as a degrade run is to training)."""
    from realsr.storage.remote import Mirror, remote_text

    url = url.rstrip("/")
    text = remote_text(f"{url}/{marker}")
    if text is None:
        if must_exist:
            raise RunDirError(f"{url}: not a {what} (no {marker})")
        if Mirror(url, "run").remote_files():
            raise RunDirError(f"{url} holds other files and is not a {what} (no {marker}); choose an empty or new folder")
        return url
    try:
        tool = json.loads(text).get("tool")
    except (ValueError, AttributeError):
        tool = None
    if tool != TOOL:
        raise RunDirError(f"{url}/{marker} was not written by {TOOL}")
    return url


def overlap(a: Path | str, b: Path | str) -> str | None:
    """How folder `a` lies to folder `b`: "is", "is inside", "holds", or None when apart; links
    resolved, URLs compared as written (a URL and a local path never overlap)."""
    from realsr.storage.remote import is_url

    if is_url(a) != is_url(b):
        return None
    if is_url(a):
        x, y = str(a).rstrip("/"), str(b).rstrip("/")
        return "is" if x == y else "is inside" if x.startswith(y + "/") else "holds" if y.startswith(x + "/") else None
    x, y = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return "is" if x == y else "is inside" if y in x.parents else "holds" if x in y.parents else None


def check_apart(source: Path | str, out: Path | str) -> None:
    """Refuse a source folder and a run folder that overlap, either way or the same (`overlap`):
    a run inside its source would read its own PNGs as photos, a source inside its run is where
    the run writes and prunes."""
    how = overlap(out, source)
    if how in ("is", "is inside"):
        raise RunDirError(f"the run folder {out} must not be inside the source folder {source} (its PNGs would become sources)")
    if how == "holds":
        raise RunDirError(f"the source folder {source} must not be inside the run folder {out} (the run writes and prunes there)")


def check_run_dir(out: Path) -> Path:
    return check_folder(out, MARKER, "run folder")


def claim_run_dir(out: Path, settings: dict, source: Path | str | None = None) -> Path:
    """Make `out` a degrade run folder, or refuse it if it holds something else or overlaps `source`."""
    if source is not None:
        check_apart(source, out)
    return claim_folder(out, MARKER, "run folder", {"settings": settings})


def stage_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def image_name(path: Path, sha256: str) -> str:
    return f"{Path(path).stem}-{sha256[:8]}"


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    kernels = property(lambda self: self.root / "kernels.zarr")
    noise = property(lambda self: self.root / "noise.zarr")
    clean_hr = property(lambda self: self.root / "clean_hr")
    pairs = property(lambda self: self.root / "pairs")
    manifest = property(lambda self: self.root / "pairs" / "manifest.jsonl")
    images_index = property(lambda self: self.root / "pairs" / "images.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    work = property(lambda self: self.root / ".work")

    def record_path(self, stage: str, key: str) -> Path:
        return self.work / stage / f"{key}.json"

    def staged_kernel(self, key: str) -> Path:
        return self.work / "kernels" / f"{key}.npz"

    def staged_noise(self, key: str) -> Path:
        return self.work / "noise" / f"{key}.npz"

    def load_record(self, stage: str, key: str) -> dict | None:
        """A finished stage's record, or None when absent or unreadable (then the stage reruns)."""
        p = self.record_path(stage, key)
        try:
            return read_json(p)
        except (OSError, ValueError):
            return None

    def save_record(self, stage: str, key: str, record: dict) -> None:
        write_json(self.record_path(stage, key), record)
