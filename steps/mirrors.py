"""A run whose sources or run folder is at a URL: pull both into local mirrors, run, push the run.

The flows call their drivers on local folders only; this wraps one run so that a URL works
wherever a folder does (storage/remote.py says how the mirrors stay in sync).
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from realsr.storage.images import is_image_name
from realsr.storage.lock import hold
from realsr.storage.remote import Mirror, is_url, mirror_dir

RECORDS = (".work/",)  # the resume records: uploaded after the files they point at
# what a run reads of the folder it takes as input, by its role: the photos of a source folder;
# of a degrade run folder, training's inputs (clean HR, banks, indexes), not its pair PNGs
READS = {"sources": is_image_name, "run": lambda rel: not rel.startswith(("pairs/hr/", "pairs/lr/"))}
WHAT = {"run": "run folder", "train": "training folder", "pipeline": "pipeline folder"}


@dataclass(frozen=True)
class Staged:
    source: Path | None  # the local folder to read the photos from
    out: Path  # the local run folder
    rebase: Callable[[object], object]  # local mirror paths in a result -> the URLs the user gave
    also: dict[str, Path] = field(default_factory=dict)  # each input at a URL (`source`, `staged`'s `also`) -> its local folder
    sync: Callable[[], None] = lambda: None  # mid-run: upload what changed here, then fetch what others (workers apart) wrote there

    def local(self, location) -> Path | None:
        """The local folder of an input given in `also` (itself when it is not a URL)."""
        return None if location is None else self.also.get(str(location), Path(location))


@contextmanager
def held(source: Path | str | None, out: Path | str, source_role: str = "sources", out_role: str = "run", also: tuple = ()) -> Iterator[None]:
    """Hold the locks of what a run writes (storage/lock.py): its local `out` folder, and the
    local mirror of each URL among `source` and `out` (a pull writes a mirror too). Another run
    holding one is refused at once (FolderBusy). `staged` takes them; the CLI takes them first,
    right after its preflight, so a second run is refused before its Prefect server starts."""
    with ExitStack() as stack:
        for location, role in [(source, source_role), *also]:
            if is_url(location):
                stack.enter_context(hold(mirror_dir(str(location), role), f"local mirror of {location}"))
        if is_url(out):
            stack.enter_context(hold(mirror_dir(str(out), out_role), f"local mirror of {out}"))
        else:
            stack.enter_context(hold(Path(out), WHAT.get(out_role, f"{out_role} folder")))
        yield


@contextmanager
def staged(
    source: Path | str | None, out: Path | str, say: Callable[[str], None], source_role: str = "sources", out_role: str = "run", also: tuple = ()
) -> Iterator[Staged]:
    """Local folders for `source` (read) and `out` (read and written); a URL among them is
    mirrored before and, for `out`, uploaded after, also when the run fails (what it finished is
    kept for the rerun). Roles name the mirrors: a degrade run's folder (`run`) read by training
    is the same local copy that degrade wrote. `also`: further (location, role) inputs, read only.
    The run holds the locks of `held` throughout."""
    with held(source, out, source_role, out_role, also):
        with _staged(source, out, say, source_role, out_role, also) as local:
            yield local


@contextmanager
def _staged(source, out, say, source_role, out_role, also=()) -> Iterator[Staged]:
    run = Mirror(str(out), out_role) if is_url(out) else None
    swaps, inputs = [], {}  # each input at a URL -> its local tree
    for location, role in [(source, source_role), *also]:
        if is_url(location):
            m = Mirror(str(location), role)
            n = m.pull(keep=READS.get(role, lambda rel: True))
            say(f"{role} {m.url}: {n} files downloaded to {m.tree} (the others were current)")
            swaps.append((str(m.tree), m.url))
            inputs[str(location)] = m.tree
    if run is not None:
        n = run.pull()
        say(f"{out_role} folder {run.url}: {n} files downloaded to {run.tree} (the others were current)")
        swaps.append((str(run.tree), run.url))

    def rebase(obj):
        text = json.dumps(obj)
        for local, url in swaps:
            text = text.replace(json.dumps(local)[1:-1], url)
        return json.loads(text)

    def sync() -> None:
        if run is not None:  # pushed first: a pull would otherwise take back files changed here
            up, down = run.push(last=RECORDS), run.pull()
            say(f"{out_role} folder {run.url}: {up} files uploaded, {down} downloaded (written by the workers)")

    ok = False
    try:
        here = None if source is None else inputs.get(str(source), Path(source))
        yield Staged(here, run.tree if run else Path(out), rebase, inputs, sync)
        ok = True
    finally:
        if run is not None:
            try:
                n = run.push(last=RECORDS)
                say(f"{out_role} folder {run.url}: {n} files uploaded")
            except Exception as e:
                if ok:
                    raise
                say(f"ERROR: {out_role} folder {run.url}: the upload after the failure failed too: {e}")
