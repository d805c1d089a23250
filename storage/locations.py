"""A file or folder named by a local path or by an fsspec URL, read and written where it is.

The pipeline's parent flow hands its stages locations, not local paths: with a pipeline folder at
a URL each stage (perhaps on another machine) mirrors what it needs itself (steps/mirrors.py), and
the parent reads back only their small records and summaries, here, without mirroring anything.
An object store writes an object whole or not at all, so a small JSON file put there is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

from realsr.storage.atomic import json_bytes, read_json, write_json
from realsr.storage.remote import RemoteError, filesystem, is_url, remote_text

Location = Path | str


def join(location: Location, *parts: str) -> Location:
    """`location`/parts: a URL stays a string, a path a Path."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return Path(location).joinpath(*parts)


def exists(location: Location) -> bool:
    """A file or a folder (at a URL: any object under it) is there."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    try:
        fs.invalidate_cache(path)  # another machine may have written it since this process last looked
        return bool(fs.exists(path) or fs.find(path, maxdepth=None, withdirs=False)[:1])
    except FileNotFoundError:
        return False
    except Exception as e:
        raise RemoteError(f"{location}: cannot look at it ({type(e).__name__}: {e})") from None


def read_json_at(location: Location):
    """A JSON file's value; FileNotFoundError when absent, ValueError when not JSON."""
    if not is_url(location):
        return read_json(Path(location))
    text = remote_text(str(location))
    if text is None:
        raise FileNotFoundError(str(location))
    return json.loads(text)


def write_json_at(location: Location, value) -> None:
    """Write a JSON file whole: atomically on disk (storage/atomic.py), one object put at a URL."""
    if not is_url(location):
        write_json(Path(location), value)
        return
    fs, path = filesystem(str(location))
    try:
        fs.pipe_file(path, json_bytes(value))
    except Exception as e:
        raise RemoteError(f"{location}: cannot write it ({type(e).__name__}: {e})") from None
