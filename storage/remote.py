"""Sources and run folders at an fsspec URL (s3://, gs://, az://, ...), worked on through a local copy.

The steps read and write local files (OpenCV, Zarr's directory stores, atomic renames); a remote
folder is mirrored into the per-user cache, the run works on the mirror, and what changed is
uploaded file by file afterwards. An object store has no rename, so this keeps the run's writes
atomic where it matters: each uploaded object appears whole or not at all, and the stage records
are uploaded last, so a run cut off mid-upload redoes (never skips) the work whose files are
missing. Only changed files move: a rerun downloads and uploads what differs from the last sync.

Credentials and endpoints come from the filesystem's usual settings (for S3: the AWS environment
variables and files, `AWS_ENDPOINT_URL` for an S3-compatible server); `REALSR_STORAGE_OPTIONS`
(JSON) adds keyword arguments for the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from realsr.models.errors import RealsrError
from realsr.storage.atomic import read_json, write_json
from realsr.storage.lock import LOCK  # a lock file stays local: a folder's lock is for this machine's runs

SYNC_RECORD = "sync.json"


class RemoteError(RealsrError, ValueError):
    pass


def is_url(location: object) -> bool:
    """A location another filesystem than the local one serves (`file://` counts as local)."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | Path) -> Path:
    return Path(location[len("file://") :]) if isinstance(location, str) and location.startswith("file://") else Path(location)


def filesystem(url: str):
    """The fsspec filesystem of `url` and the path inside it; a missing driver is named."""
    import fsspec

    try:
        options = json.loads(os.environ.get("REALSR_STORAGE_OPTIONS") or "{}")
    except ValueError as e:
        raise RemoteError(f"REALSR_STORAGE_OPTIONS is not JSON: {e}") from None
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise RemoteError(f"{url}: its filesystem needs a package that is not installed ({e}); for s3:// install realsr-pipeline[s3]") from None
    except ValueError as e:
        raise RemoteError(f"{url}: {e}") from None


def mirror_dir(url: str, role: str) -> Path:
    """Where the local copy of `url` lives: the per-user cache, one folder per URL and role."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realsr" / "remote"
    digest = hashlib.sha256(f"{role}\0{url.rstrip('/')}".encode()).hexdigest()[:16]
    return base / f"{role}-{digest}"


def mirrored(root: str, role: str, url: str) -> Path:
    """Where the mirror of the folder `root` holds the file at `url` (a URL inside `root`)."""
    root = root.rstrip("/")
    return mirror_dir(root, role) / "tree" / url[len(root) + 1 :]


def stamp(info: dict) -> str:
    """What tells a remote file's version: its ETag or checksum where the store has one, else size and time."""
    for key in ("ETag", "etag", "md5Hash", "crc32c", "checksum"):
        if info.get(key):
            return f"{key}:{info[key]}"
    return f"size:{info.get('size')}:{info.get('LastModified') or info.get('mtime') or info.get('updated')}"


def object_time_ns(info: dict) -> int | None:
    """The modification time a mirrored file gets: its object's (LastModified), with a digest of
    its version stamp in the nanoseconds. Every machine's copy of an object then has the same size
    and time, so the run's source index (steps/degrade_rerun.py) tells an unchanged photo by a stat
    on any machine, and a replaced object (new stamp) differs even within the same second."""
    when = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if when is None:
        return None
    if isinstance(when, str):
        from datetime import datetime

        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return None
    seconds = int(when.timestamp()) if hasattr(when, "timestamp") else int(float(when))
    return seconds * 1_000_000_000 + int(hashlib.sha256(stamp(info).encode()).hexdigest()[:8], 16) % 1_000_000_000


class Mirror:
    """A remote folder and its local copy (`tree`), with a record of what was last in sync.

    The record maps each file's relative path to its remote stamp and its local size and time,
    so `pull` and `push` move only files that changed on one side since.
    """

    def __init__(self, url: str, role: str):
        self.url = url.rstrip("/")
        self.fs, self.path = filesystem(self.url)
        self.path = self.path.rstrip("/")
        self.root = mirror_dir(self.url, role)  # its lock (storage/lock.py) and sync record; the files under `tree`
        self.tree = mirrored(self.url, role, self.url + "/")
        self._record_path = self.root / SYNC_RECORD

    def _record(self) -> dict[str, dict]:
        try:
            record = read_json(self._record_path)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) and record.get("url") == self.url else {}

    def _save(self, files: dict) -> None:
        write_json(self._record_path, {"url": self.url, "files": files})

    def remote_files(self, keep=lambda rel: True) -> dict[str, dict]:
        try:
            self.fs.invalidate_cache(self.path)  # others (workers, another machine) write there too: list afresh
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # the store's own errors (credentials, endpoint, bucket) in one line
            raise RemoteError(f"{self.url}: cannot list it ({type(e).__name__}: {e})") from None
        out = {}
        for name, info in found.items():
            rel = name[len(self.path) :].lstrip("/") if name.startswith(self.path) else None
            if rel and info.get("type", "file") == "file" and rel.rsplit("/", 1)[-1] != LOCK and keep(rel):
                out[rel] = info
        return out

    def pull(self, keep=lambda rel: True) -> int:
        """Bring the local copy up to the remote folder (files `keep` accepts): fetch what changed
        there (all at once: the store's driver runs the transfers concurrently), drop local files
        that were in sync and are gone there. Local files never synced (the work of a run cut off
        before its upload) stay, for the run to resume from and upload. Returns the files fetched."""
        known = self._record().get("files", {})
        remote = self.remote_files(keep)
        self.tree.mkdir(parents=True, exist_ok=True)
        fetch = [
            rel
            for rel, info in sorted(remote.items())
            if not (rel in known and known[rel]["remote"] == stamp(info) and _local_unchanged(self.tree / rel, known[rel]))
        ]
        parts = [self.tree / f"{rel}.part" for rel in fetch]
        for part in parts:
            part.parent.mkdir(parents=True, exist_ok=True)
        if fetch:
            try:
                self.fs.get([f"{self.path}/{rel}" for rel in fetch], [str(p) for p in parts])
            except Exception as e:
                for part in parts:
                    part.unlink(missing_ok=True)
                raise RemoteError(f"{self.url}: downloading {len(fetch)} files failed ({type(e).__name__}: {e})") from None
        for rel, part in zip(fetch, parts):
            if (ns := object_time_ns(remote[rel])) is not None:
                os.utime(part, ns=(ns, ns))
            os.replace(part, self.tree / rel)
        files = {rel: {"remote": stamp(info), **_local_stat(self.tree / rel)} for rel, info in remote.items()}
        files.update({rel: was for rel, was in known.items() if rel not in files and not keep(rel)})  # left out this time, not gone
        for path in sorted(self.tree.rglob("*"), reverse=True):  # gone remotely: gone here
            rel = path.relative_to(self.tree).as_posix()
            if path.is_file() and rel in known and rel not in files:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        self._save(files)
        return len(fetch)

    def push(self, last: tuple[str, ...] = ()) -> int:
        """Upload local files that changed since the last sync and delete remote files the local
        copy no longer has. Files under the `last` prefixes go up after all others (the resume
        records: they must never point at files not yet uploaded). Returns the files uploaded."""
        known = self._record().get("files", {})
        local = {p.relative_to(self.tree).as_posix(): p for p in self.tree.rglob("*") if p.is_file() and not p.name.endswith(".part") and p.name != LOCK}
        changed = sorted(rel for rel, p in local.items() if not (rel in known and _local_unchanged(p, known[rel])))
        records = [rel for rel in changed if last and rel.startswith(last)]
        for batch in ([rel for rel in changed if rel not in records], records):
            if not batch:
                continue
            uploads, copies = _same_content(batch, local)
            try:
                self.fs.put([str(local[rel]) for rel in uploads], [f"{self.path}/{rel}" for rel in uploads])
                for src, dst in copies:  # inside the store: nothing sent twice
                    self.fs.copy(f"{self.path}/{src}", f"{self.path}/{dst}")
            except Exception as e:  # the files not recorded as synced go up again next time
                self._save({rel: known[rel] for rel in local if rel in known and rel not in changed})
                raise RemoteError(f"{self.url}: uploading {len(batch)} files failed ({type(e).__name__}: {e})") from None
        remote = self.remote_files() if changed else {}
        files = {}
        for rel, p in local.items():
            if rel in remote and rel in changed:
                files[rel] = {"remote": stamp(remote[rel]), **_local_stat(p)}
            elif rel in known and rel not in changed:
                files[rel] = known[rel]
        gone = [f"{self.path}/{rel}" for rel in known if rel not in local]
        if gone:
            try:
                self.fs.rm(gone)
            except FileNotFoundError:
                pass
        self._save(files)
        return len(changed)


def fetch_file(url: str, role: str) -> Path:
    """The local copy of one remote file (a model a run names by URL), downloaded only when its
    version stamp differs from the copy's; the copy is replaced whole (a reader never sees half)."""
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        raise RemoteError(f"{url}: no such file") from None
    except Exception as e:
        raise RemoteError(f"{url}: cannot read it ({type(e).__name__}: {e})") from None
    root = mirror_dir(url, role)
    local, record = root / url.rstrip("/").rsplit("/", 1)[-1], root / SYNC_RECORD
    try:
        known = read_json(record)
    except (OSError, ValueError):
        known = {}
    if local.is_file() and known.get("remote") == stamp(info) and _local_unchanged(local, known):
        return local
    part = local.with_name(f"{local.name}.{os.getpid()}.part")  # two processes fetching it do not share a file
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get(path, str(part))
    except Exception as e:
        part.unlink(missing_ok=True)
        raise RemoteError(f"{url}: downloading it failed ({type(e).__name__}: {e})") from None
    os.replace(part, local)
    write_json(record, {"url": url, "remote": stamp(info), **_local_stat(local)})
    return local


def copy_file(src: str | Path, dst: str | Path) -> None:
    """`src` to `dst`, either a path or a URL; a copy within one store stays there (no download)."""
    if not is_url(src) and not is_url(dst):
        from realsr.storage.atomic import write_bytes

        write_bytes(Path(dst), Path(src).read_bytes())
        return
    fs, dpath = filesystem(str(dst)) if is_url(dst) else (None, None)
    sfs, spath = filesystem(str(src)) if is_url(src) else (None, None)
    try:
        if sfs is not None and type(sfs) is type(fs):
            fs.copy(spath, dpath)
        elif sfs is not None:  # to a folder here, or to another store: through a local copy
            copy_file(fetch_file(str(src), "copies"), dst)
        else:
            fs.put_file(str(src), dpath)
    except RemoteError:
        raise
    except Exception as e:
        raise RemoteError(f"copying {src} to {dst} failed ({type(e).__name__}: {e})") from None


def remote_bytes(url: str) -> bytes | None:
    """The bytes of one remote file, None where it does not exist."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except Exception as e:
        raise RemoteError(f"{url}: cannot read it ({type(e).__name__}: {e})") from None


def remote_text(url: str) -> str | None:
    """The text of one small remote file, None where it does not exist."""
    data = remote_bytes(url)
    return None if data is None else data.decode("utf-8", "replace")


def _same_content(batch: list[str], local: dict[str, Path], least: int = 1 << 20) -> tuple[list[str], list[tuple[str, str]]]:
    """(files to upload, (uploaded file, its copy) pairs): files of a MB or more with the content
    of another in the batch are copied inside the store instead (a training folder's best, latest
    and last numbered generator are often one file, 134 MB each for x4plus)."""
    from collections import Counter

    from realsr.storage.atomic import file_sha256

    sizes = {rel: local[rel].stat().st_size for rel in batch}
    common = Counter(sizes.values())
    first: dict[str, str] = {}
    uploads, copies = [], []
    for rel in batch:
        if sizes[rel] >= least and common[sizes[rel]] > 1:
            digest = file_sha256(local[rel])
            if digest in first:
                copies.append((first[digest], rel))
                continue
            first[digest] = rel
        uploads.append(rel)
    return uploads, copies


def _local_stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _local_unchanged(path: Path, was: dict) -> bool:
    try:
        return _local_stat(path) == {"size": was["size"], "mtime_ns": was["mtime_ns"]}
    except (OSError, KeyError):
        return False
