"""Generator checkpoints (and discriminator inits): reading what users have, safely; writing what BasicSR reads.

Reading never executes code from the file: `torch.load(weights_only=True)` (or safetensors).
Accepted layouts: `{'params_ema': sd}` (preferred), `{'params': sd}`, `{'state_dict': sd}`, or
a bare state dict; key dialects of RRDBNet: BasicSR's, the old ESRGAN names (`RRDB_trunk.*`,
`trunk_conv`, `upconv1/2`, `HRconv`) and the oldest sequential one (`model.0`, `model.1.sub.*`).
The architecture (blocks, width, growth, scale) comes from the tensor shapes. Files of other
architectures load through spandrel when it is installed (for upscaling and evaluation only).
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from realsr.models.errors import RealsrError
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.storage.atomic import write_bytes
from realsr.storage.weights import CATALOG, require


class CheckpointError(RealsrError, ValueError):
    """A checkpoint that cannot be used, with the file and what was found."""


def resolve_weights(spec: str | Path, role: str = "generator") -> Path:
    """A checkpoint path, or a known name of that role (`realesrgan-x4plus`, `realsr-df2k`, ...:
    `realsr weights list`) found verified in REALSR_WEIGHTS_DIR or the cache, else fetched (storage.weights)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if str(spec) in CATALOG and getattr(CATALOG[str(spec)], role):
        return require(str(spec))
    known = [n for n, w in CATALOG.items() if getattr(w, role)]
    raise FileNotFoundError(f"{spec}: no such {'checkpoint' if role == 'generator' else role + ' file'} (known names: {', '.join(known)})")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped; clear errors for every way it can be wrong."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, what realsr recorded with them: its `realsr` entry, {} for other files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package") from None
        try:
            return load_file(str(path)), {}
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither torch's zip format nor a pickle; starts {head.hex()})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: holds Python objects that only code execution could rebuild; refused, nothing was executed ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({type(e).__name__}: {str(e)[:200]})") from None
    meta = obj.get(META) if isinstance(obj, dict) else None
    return unwrap(obj, path), meta if isinstance(meta, dict) else {}


META = "realsr"  # the checkpoint entry holding what realsr records with a generator (its init, a blend's parts)


def unwrap(obj, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict", "model", "net_g"):
            if key in obj and isinstance(obj[key], dict) and obj[key] and all(isinstance(v, torch.Tensor) for v in obj[key].values()):
                return dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        raise CheckpointError(f"{path}: no state dict found (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


_OLD = [  # ESRGAN's first release names -> BasicSR's
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$"), r"body.\1.rdb\2.conv\3.\4"),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv1\."), "conv_up1."),
    (re.compile(r"^upconv2\."), "conv_up2."),
    (re.compile(r"^HRconv\."), "conv_hr."),
]


def canonical_rrdb_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """BasicSR's key names for an RRDBNet state dict in any known dialect; None if it is not one."""
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    if "model.0.weight" in state and any(k.startswith("model.1.sub.") for k in state):
        subs = {int(m.group(1)) for k in state if (m := re.match(r"^model\.1\.sub\.(\d+)\.", k))}
        trunk = max(subs)
        mapping = {
            "model.0.": "conv_first.",
            f"model.1.sub.{trunk}.": "conv_body.",
            "model.3.": "conv_up1.",
            "model.6.": "conv_up2.",
            "model.8.": "conv_hr.",
            "model.10.": "conv_last.",
        }
        out = {}
        for k, v in state.items():
            m = re.match(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", k)
            if m:
                out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = v
                continue
            for old, new in mapping.items():
                if k.startswith(old):
                    out[new + k[len(old) :]] = v
                    break
            else:
                return None
        state = out
    renamed = {}
    for k, v in state.items():
        for pattern, repl in _OLD:
            k = pattern.sub(repl, k)
        renamed[k] = v
    if "conv_first.weight" not in renamed or "body.0.rdb1.conv1.weight" not in renamed or "conv_last.weight" not in renamed:
        return None
    return renamed


def rrdb_config(state: dict[str, torch.Tensor]) -> RRDBConfig:
    """The architecture from the tensor shapes (BasicSR keys)."""
    first, last = state["conv_first.weight"], state["conv_last.weight"]
    out_ch, in_ch = int(last.shape[0]), int(first.shape[1])
    ratio = in_ch / 3 if in_ch % 3 == 0 else None
    scale = {1: 4, 4: 2, 16: 1}.get(int(ratio) if ratio else -1)
    if scale is None:
        raise CheckpointError(f"conv_first takes {in_ch} channels: not an RRDBNet input of 3 channels at x4, x2 or x1")
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^body\.(\d+)\.", k)))
    return RRDBConfig(
        num_in_ch=3, num_out_ch=out_ch, scale=scale, num_feat=int(first.shape[0]), num_block=blocks, num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0])
    )


@dataclass
class LoadedGenerator:
    """A generator ready for inference, and what was recognised in its file."""

    model: nn.Module
    scale: int
    arch: str
    path: Path
    config: RRDBConfig | None = None

    def describe(self) -> str:
        c = self.config
        detail = f" {c.num_block} blocks, {c.num_feat} features, growth {c.num_grow_ch}" if c else ""
        return f"{self.path.name}: {self.arch} x{self.scale}{detail}"


def load_rrdb(path: Path | str, expect_scale: int | None = None) -> LoadedGenerator:
    """Our RRDBNet from a checkpoint in any accepted layout and dialect, loaded strictly."""
    path = resolve_weights(path)
    return rrdb_from_state(read_state(path), path, expect_scale)


def rrdb_from_state(state: dict[str, torch.Tensor], path: Path, expect_scale: int | None = None) -> LoadedGenerator:
    canon = canonical_rrdb_keys(state)
    if canon is None:
        raise CheckpointError(f"{path}: not an RRDBNet checkpoint (keys like {', '.join(list(state)[:4])})")
    try:
        config = rrdb_config(canon)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if expect_scale is not None and config.scale != expect_scale:
        raise CheckpointError(f"{path}: an x{config.scale} RRDBNet, x{expect_scale} was asked for")
    net = RRDBNet(config)
    try:
        net.load_state_dict({k: v.float() for k, v in canon.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: RRDBNet keys or shapes do not match ({str(e).splitlines()[0]})") from None
    return LoadedGenerator(net.eval(), config.scale, "RRDBNet", path, config)


def load_generator(path: Path | str, expect_scale: int | None = None) -> LoadedGenerator:
    """Any SR generator for inference: RRDBNet natively, other architectures through spandrel."""
    path = resolve_weights(path)
    return generator_from_state(read_state(path), path, expect_scale)


def generator_from_state(state: dict[str, torch.Tensor], path: Path, expect_scale: int | None = None) -> LoadedGenerator:
    """`load_generator` of tensors already read (`path` names them in messages)."""
    if canonical_rrdb_keys(state) is not None:
        return rrdb_from_state(state, path, expect_scale)
    try:
        from spandrel import ModelLoader, UnsupportedModelError
    except ImportError:
        raise CheckpointError(f"{path}: not an RRDBNet checkpoint, and spandrel (for other architectures) is not installed") from None
    try:
        desc = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise CheckpointError(f"{path}: architecture not recognised (keys like {', '.join(list(state)[:4])})") from None
    if expect_scale is not None and desc.scale != expect_scale:
        raise CheckpointError(f"{path}: a {desc.architecture.name} x{desc.scale}, x{expect_scale} was asked for")
    return LoadedGenerator(desc.model.eval(), int(desc.scale), desc.architecture.name, path)


def load_discriminator(spec: str | Path, net: nn.Module) -> Path:
    """Load a discriminator file into `net`, strictly: BasicSR's layout (`{'params': sd}`, as the
    released netD and our net_d files) or a bare state dict, every key and shape as `net`'s.
    Returns the file (`spec`: a path, or a released name such as `realesrgan-x4plus-netd`)."""
    path = resolve_weights(spec, "discriminator")
    state, expected = read_state(path), net.state_dict()
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        found = [
            f"{len(ks)} {what} ({', '.join(ks[:3])}{', ...' if len(ks) > 3 else ''})" for what, ks in (("missing", missing), ("unexpected", unexpected)) if ks
        ]
        raise CheckpointError(f"{path}: not a {type(net).__name__} state dict: keys {'; '.join(found)}")
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} tensors of another shape than this {type(net).__name__}'s, first {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} here (a discriminator of another width?)"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return path


def save_generator(path: Path, net: nn.Module, ema: nn.Module | None = None, meta: dict | None = None) -> None:
    """BasicSR's layout, `{'params': sd, 'params_ema': sd}`, written atomically (loads in BasicSR,
    Real-ESRGAN, chaiNNer, which read those two entries), with `meta` (strings and numbers) beside them."""
    state = {"params": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if ema is not None:
        state["params_ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    _write(path, state, meta)


def save_state(path: Path, params: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """A generator's tensors as `{'params': ...}` (BasicSR's layout) with `meta`, atomically."""
    _write(path, {"params": {k: v.detach().cpu() for k, v in params.items()}}, meta)


def _write(path: Path, state: dict, meta: dict | None) -> None:
    if meta:
        state[META] = meta
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(Path(path), buf.getvalue())
