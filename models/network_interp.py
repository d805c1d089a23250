"""Network interpolation (ESRGAN, Wang et al. 2018, section 3.4): one knob between fidelity and
perception.

Two generators of one architecture, one fine-tuned from the other (or a PSNR-oriented and a GAN
one), are blended parameter by parameter: theta = (1 - alpha) * theta_A + alpha * theta_B. Because
the fine-tuned weights stay close to their start, every alpha gives a working network whose
output moves smoothly from A's (sharper or more faithful) to B's, without the artefacts of
blending the two output images. Real-ESRGAN's `--denoise_strength` is the same operation (its
`dni`).
"""

from __future__ import annotations

import torch

from realsr.models.errors import RealsrError


class InterpolationError(RealsrError, ValueError):
    """The two state dicts cannot be blended (other architectures or sizes)."""


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b for every floating tensor, in float32 (then a's dtype); alpha in [0, 1].

    Integer tensors (BatchNorm's step counters) must be equal and are kept. Refuses state dicts
    whose keys or shapes differ, naming the first difference.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha {alpha} is outside [0, 1]")
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise InterpolationError(f"the networks have other parameters ({len(only)} differ, e.g. {only[0]})")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape:
            raise InterpolationError(f"{k}: shape {tuple(ta.shape)} against {tuple(tb.shape)}")
        if not ta.is_floating_point():
            if not torch.equal(ta, tb):
                raise InterpolationError(f"{k}: integer tensors differ")
            out[k] = ta.clone()
            continue
        out[k] = torch.lerp(ta.float(), tb.float(), float(alpha)).to(ta.dtype)
    return out
