"""A run whose sources or run folder is at a URL: pull both into local mirrors, run, push the run.

The flows call their drivers on local folders only; this wraps one run so that a URL works
wherever a folder does (storage/remote.py says how the mirrors stay in sync).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from realsr.storage.images import is_image_name
from realsr.storage.remote import Mirror, is_url

RECORDS = (".work/",)  # the resume records: uploaded after the files they point at


@dataclass(frozen=True)
class Staged:
    source: Path  # the local folder to read the photos from
    out: Path  # the local run folder
    rebase: Callable[[object], object]  # local mirror paths in a result -> the URLs the user gave


@contextmanager
def staged(source: Path | str, out: Path | str, log) -> Iterator[Staged]:
    """Local folders for `source` and `out`; a URL among them is mirrored before and, for `out`,
    uploaded after, also when the run fails (what it finished is kept for the rerun)."""
    src = Mirror(str(source), "sources") if is_url(source) else None
    run = Mirror(str(out), "run") if is_url(out) else None
    swaps = []
    if src is not None:
        n = src.pull(keep=is_image_name)
        log.info(f"sources {src.url}: {n} photos downloaded to {src.tree} (the others were current)")
        swaps.append((str(src.tree), src.url))
    if run is not None:
        n = run.pull()
        log.info(f"run folder {run.url}: {n} files downloaded to {run.tree} (the others were current)")
        swaps.append((str(run.tree), run.url))

    def rebase(obj):
        text = json.dumps(obj)
        for local, url in swaps:
            text = text.replace(json.dumps(local)[1:-1], url)
        return json.loads(text)

    ok = False
    try:
        yield Staged(src.tree if src else Path(source), run.tree if run else Path(out), rebase)
        ok = True
    finally:
        if run is not None:
            try:
                n = run.push(last=RECORDS)
                log.info(f"run folder {run.url}: {n} files uploaded")
            except Exception as e:
                if ok:
                    raise
                log.error(f"run folder {run.url}: the upload after the failure failed too: {e}")
