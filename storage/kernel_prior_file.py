"""The kernel prior's file: the one the package ships, or one a user trained, verified before use.

A prior file is a torch checkpoint of plain tensors and numbers: the flow's config, its weights
and the record of its training. It is read with `weights_only=True` and only after its sha256
matches: the shipped file against the digest in this module, a user's file against the
`<file>.sha256` that `realsr kernels train-prior` writes beside it. A file that fails either
check is refused with one line naming it, before any photo is touched.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import torch

from realsr.models.errors import RealsrError
from realsr.models.kernel_prior import PRIOR_VERSION, KernelPrior, PriorConfig
from realsr.storage.atomic import write_bytes

BUILTIN = Path(__file__).with_name("data") / "kernel_prior_x2.pt"
BUILTIN_SHA256 = "1f2da0892e0acd0907151eda4f56f6f9e5eef4d580e9f1b71a096e814fcf8f8a"


class PriorFileError(RealsrError, ValueError):
    """A kernel prior file that cannot be used; the message is one line and names the file."""


def sha256_of(path: Path) -> str:
    """The file's sha256, hashed once per state of the file (a run asks for it per photo's cache key)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_sha256(path: Path) -> str:
    """The digest a prior file must have: the shipped one's, or its sidecar's."""
    if path.resolve() == BUILTIN.resolve():
        return BUILTIN_SHA256
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise PriorFileError(f"{path}: no {side.name} beside it (realsr kernels train-prior writes one): the prior cannot be verified")
    return side.read_text().split()[0].strip().lower()


def resolve(spec: str) -> Path:
    """'builtin' or a path -> the prior file's path."""
    return BUILTIN if spec == "builtin" else Path(spec).expanduser()


def verify(spec: str, data: bytes | None = None) -> Path:
    """Check a prior file's presence and sha256 (cheap: no torch); raises PriorFileError.
    `data`: the file's bytes when the caller has read them (checked as they are, then used)."""
    path = resolve(spec)
    if not path.is_file():
        raise PriorFileError(f"{path}: kernel prior file not found")
    want, got = expected_sha256(path), (sha256_of(path) if data is None else hashlib.sha256(data).hexdigest())
    if got != want:
        raise PriorFileError(f"{path}: kernel prior file damaged or replaced (sha256 {got[:16]}..., expected {want[:16]}...)")
    return path


def load(spec: str = "builtin") -> tuple[KernelPrior, dict]:
    """The verified prior (eval mode, CPU) and its training record."""
    path = resolve(spec)
    data = path.read_bytes() if path.is_file() else None
    verify(spec, data)  # the bytes that are loaded are the bytes that were checked
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        cfg = PriorConfig(**blob["config"])
        prior = KernelPrior(cfg)
        prior.load_state_dict(blob["state_dict"])
    except Exception as e:  # a verified file that still does not load: another version's layout
        raise PriorFileError(f"{path}: not a kernel prior this version can read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if blob.get("record", {}).get("version") != PRIOR_VERSION:
        raise PriorFileError(f"{path}: kernel prior of version {blob.get('record', {}).get('version')!r}, this version reads {PRIOR_VERSION!r}: retrain it")
    return prior.eval(), dict(blob["record"], sha256=hashlib.sha256(data).hexdigest())


def save(prior: KernelPrior, cfg: PriorConfig, record: dict, path: Path) -> str:
    """Write the prior and its `.sha256` sidecar atomically; returns the digest."""
    buf = io.BytesIO()
    torch.save({"config": cfg.as_dict(), "state_dict": prior.state_dict(), "record": record}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    write_bytes(path, data)
    write_bytes(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    return digest
