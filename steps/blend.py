"""The fidelity/perception control: a generator blended with its init or another of its shape.

`realsr blend A B alpha -o OUT` writes (1 - alpha) * A + alpha * B as a checkpoint that any
RRDBNet loader reads; `realsr upscale --model M --blend ALPHA` blends on the fly with the init the
fine-tuned M records (or `--blend-with`), alpha being M's share: 1 is M as trained, 0 its init.
"""

from __future__ import annotations

from pathlib import Path

from realsr.models.errors import RealsrError
from realsr.models.network_interp import InterpolationError, interpolate
from realsr.storage.model_files import (
    CheckpointError,
    LoadedGenerator,
    canonical_rrdb_keys,
    generator_from_state,
    read_checkpoint,
    resolve_weights,
    save_state,
)


class BlendError(RealsrError, ValueError):
    """The blend cannot be made: which model, and why."""


def recorded_init(model: str | Path) -> str | None:
    """The init a realsr-trained checkpoint records (a released name or a path), None if it has none."""
    _, meta = read_checkpoint(resolve_weights(model))
    init = meta.get("init") if isinstance(meta, dict) else None
    return str(init) if init else None


def blend_partner(model: str | Path, given: str | None) -> str:
    """What `model` is blended with: `given`, else the init it records; refused when there is none."""
    if given:
        return given
    init = recorded_init(model)
    if not init:
        raise BlendError(f"{model}: records no init (trained from scratch, or not by realsr train); pass --blend-with MODEL")
    return init


def blended_state(a: str | Path, b: str | Path, alpha: float) -> tuple[dict, Path, Path]:
    """(state, path of a, path of b): (1 - alpha) * a + alpha * b, checked to be one architecture."""
    pa, pb = resolve_weights(a), resolve_weights(b)
    sa, sb = (_canonical(read_checkpoint(p)[0]) for p in (pa, pb))
    try:
        return interpolate(sa, sb, alpha), pa, pb
    except InterpolationError as e:
        raise BlendError(f"{pa.name} and {pb.name} cannot be blended: {e}") from None


def _canonical(state: dict) -> dict:
    """RRDBNet tensors under BasicSR's names (old ESRGAN files blend with new ones); others as they are."""
    canon = canonical_rrdb_keys(state)
    return state if canon is None else canon


def blended_generator(model: str | Path, partner: str | Path, alpha: float, expect_scale: int | None = None) -> LoadedGenerator:
    """`model` at share `alpha`, `partner` at 1 - alpha, ready for inference."""
    state, pm, pp = blended_state(partner, model, alpha)
    label = Path(f"{pm.stem}@{alpha:g}+{pp.stem}")
    try:
        return generator_from_state(state, label, expect_scale)
    except CheckpointError as e:
        raise BlendError(str(e)) from None


def write_blend(a: str | Path, b: str | Path, alpha: float, out: Path, overwrite: bool = False) -> Path:
    """Write (1 - alpha) * a + alpha * b to `out` (BasicSR's layout); refuses an existing file unless asked."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BlendError(f"{out} exists; pass --overwrite to replace it")
    state, pa, pb = blended_state(a, b, alpha)
    generator_from_state(state, out, None)  # it must load as a generator before it is written
    save_state(out, state, {"blend": {"a": str(a), "b": str(b), "alpha": alpha, "a_file": str(pa), "b_file": str(pb)}})
    return out
