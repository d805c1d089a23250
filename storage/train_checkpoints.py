"""Training checkpoints in BasicSR's layout, written atomically, and resuming from them.

OUT/models/net_g_<iter>.pth       {'params': G, 'params_ema': EMA of G}  (BasicSR, Real-ESRGAN, chaiNNer load it)
OUT/models/net_d_<iter>.pth       {'params': D}
OUT/models/net_g_latest.pth, net_g_best.pth   copies of the newest, and of the best by validation
OUT/training_states/<iter>.state  optimisers, schedulers, iteration, torch RNG, the settings

The state is written last: a state file means its iteration's weights are complete. Every
file is read back with `weights_only=True`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from torch import nn

from realsr.storage.atomic import write_bytes
from realsr.storage.model_files import CheckpointError, save_generator

MODELS, STATES = "models", "training_states"


def _save(path: Path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or a pickle needing code: all refused the same way
        raise CheckpointError(f"{path}: not a readable training file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None


def save_checkpoint(out: Path, iteration: int, g: nn.Module, ema: nn.Module, d: nn.Module, trainer_state: dict, meta: dict, g_meta: dict | None = None) -> Path:
    """Weights first (`g_meta` beside G's), then the state that names them complete; returns the state's path."""
    out = Path(out)
    save_generator(out / MODELS / f"net_g_{iteration}.pth", g, ema, g_meta)
    _save(out / MODELS / f"net_d_{iteration}.pth", {"params": {k: v.detach().cpu() for k, v in d.state_dict().items()}})
    state = {"iter": iteration, **trainer_state, "torch_rng": torch.get_rng_state(), "meta": meta}
    path = out / STATES / f"{iteration}.state"
    _save(path, state)
    write_bytes(out / MODELS / "net_g_latest.pth", (out / MODELS / f"net_g_{iteration}.pth").read_bytes())
    return path


def saved_iterations(out: Path) -> list[int]:
    """Iterations with a state file, newest first."""
    folder = Path(out) / STATES
    its = [int(m.group(1)) for p in folder.glob("*.state") if (m := re.fullmatch(r"(\d+)\.state", p.name))] if folder.is_dir() else []
    return sorted(its, reverse=True)


def load_checkpoint(out: Path, iteration: int) -> tuple[dict, dict, dict, dict]:
    """(state, G params, G EMA params, D params) of one saved iteration."""
    out = Path(out)
    state = _load(out / STATES / f"{iteration}.state")
    g = _load(out / MODELS / f"net_g_{iteration}.pth")
    d = _load(out / MODELS / f"net_d_{iteration}.pth")
    if not (isinstance(g, dict) and "params" in g and "params_ema" in g and isinstance(d, dict) and "params" in d):
        raise CheckpointError(f"{out / MODELS}: net_g_{iteration}.pth / net_d_{iteration}.pth lack params or params_ema")
    return state, g["params"], g["params_ema"], d["params"]


def newest_complete(out: Path, log=print) -> tuple[int, tuple] | None:
    """The newest iteration whose state and weights all load (a damaged newer one is named and
    skipped), or None when there is none."""
    for it in saved_iterations(out):
        try:
            return it, load_checkpoint(out, it)
        except (CheckpointError, FileNotFoundError) as e:
            log(f"skipping iteration {it}: {e}")
    return None


def prune_checkpoints(out: Path, keep: int) -> int:
    """Remove numbered checkpoints beyond the newest `keep` (best and latest stay)."""
    out, removed = Path(out), 0
    for it in saved_iterations(out)[keep:]:
        for p in (out / STATES / f"{it}.state", out / MODELS / f"net_g_{it}.pth", out / MODELS / f"net_d_{it}.pth"):
            if p.exists():
                p.unlink()
                removed += 1
    return removed
