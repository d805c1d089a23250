"""`realsr kernels train-prior`: train the kernel prior (`models.kernel_prior`) and write its file.

Reproducible from the seed on one machine and thread count; the shipped prior is this command's
output at the defaults (`storage/data/kernel_prior_x2.pt`, BENCHMARKS.md says how it was made).
An existing file is kept unless `force`: a user's trained prior is not overwritten by accident.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from realsr.models.errors import InputError
from realsr.models.kernel_prior import PriorConfig, train_prior
from realsr.storage import kernel_prior_file


def train_prior_file(out: Path, steps: int | None = None, seed: int = 0, force: bool = False, log=print) -> dict:
    """Train a prior with the default config (`steps` and `seed` as given) into `out`; returns its record."""
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it")
    if out.suffix != ".pt":
        raise InputError(f"{out}: the prior file's name must end in .pt")
    cfg = replace(PriorConfig(), seed=seed, **({"steps": steps} if steps else {}))
    t0 = time.perf_counter()
    log(f"training the kernel prior: {cfg.steps} steps of {cfg.batch} kernels, seed {cfg.seed}")
    prior, record = train_prior(cfg, progress=lambda step, nll: log(f"step {step}/{cfg.steps}: negative log-likelihood {nll} nats per tap"))
    record = {**record, "seconds": round(time.perf_counter() - t0, 1)}
    digest = kernel_prior_file.save(prior, cfg, record, out)
    log(f"{out}: sha256 {digest} (held-out negative log-likelihood {record['held_out_nll_per_tap']} nats per tap)")
    return {**record, "path": str(out), "sha256": digest}
