"""Which files of a folder a command wrote there itself, so that it replaces only those.

A folder the user shares with `realsr upscale` (often the photos' own folder) holds the user's
files beside the command's outputs; a name like `y_out.png` proves nothing. The command records
each file it writes in a manifest in that folder (name, size, sha256, what it was made from);
a file is its own only while the bytes on disk are still the bytes it recorded. The entry is
written before the file, keeping the entry it replaces: a kill between the two leaves a file
that still matches one of them, or no file at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from realsr.storage.atomic import file_sha256, read_json, write_json

VERSION = 1


class OutputRecord:
    """The manifest `name` in `folder`: {file name: {sha256, size, source[, previous]}}."""

    def __init__(self, folder: Path, name: str):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.problem: str | None = None  # why an existing manifest was not used (nothing is then owned)
        self.files: dict[str, dict] = self._load()
        self._owned: dict[str, tuple[tuple[int, int], dict]] = {}  # name -> ((size, mtime_ns), the version it matched)

    def _load(self) -> dict[str, dict]:
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.problem = f"{self.path} cannot be read ({getattr(e, 'strerror', None) or e}): no file here counts as an earlier output"
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == VERSION else None
        if not isinstance(files, dict):
            self.problem = f"{self.path} is not a version {VERSION} record: no file here counts as an earlier output"
            return {}
        return {k: v for k, v in files.items() if isinstance(v, dict)}

    def _here(self, path: Path) -> bool:
        return Path(path).parent.resolve() == self.folder.resolve()

    def owns(self, path: Path) -> bool:
        """`path` is a plain file of this folder holding bytes this record says it wrote."""
        return self._matching(Path(path)) is not None

    def _matching(self, path: Path) -> dict | None:
        """The recorded version (size, sha256) that `path`'s bytes are, if any."""
        entry = self.files.get(path.name)
        if entry is None or not self._here(path) or path.is_symlink() or not path.is_file():
            return None
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if path.name in self._owned and self._owned[path.name][0] == stamp:
            return self._owned[path.name][1]
        versions = [v for v in (entry, entry.get("previous")) if isinstance(v, dict) and v.get("size") == st.st_size]
        digest = file_sha256(path) if versions else None
        for v in versions:
            if v.get("sha256") == digest:
                self._owned[path.name] = (stamp, v)
                return v
        return None

    def source_of(self, path: Path) -> str | None:
        entry = self.files.get(Path(path).name)
        return entry.get("source") if entry else None

    def blocks(self, path: Path) -> bool:
        """Writing `path` would replace something this record did not write (a file, a link, a folder)."""
        path = Path(path)
        return (path.exists() or path.is_symlink()) and not self.owns(path)

    def record(self, path: Path, data: bytes, source: str) -> None:
        """Note `data` as `path`'s content, before it is written (atomically, fsynced)."""
        path = Path(path)
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "source": source}
        if (now := self._matching(path)) is not None:  # what is on disk until the write lands
            entry["previous"] = {"sha256": now["sha256"], "size": now["size"]}
        self.files[path.name] = entry
        self._owned.pop(path.name, None)
        write_json(self.path, {"version": VERSION, "files": self.files})
