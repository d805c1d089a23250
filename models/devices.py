"""The torch device a setting names (`auto`: CUDA when there is a GPU, else the CPU), and the
precision training runs at on it.

bf16 autocast is worth it where the hardware computes in bf16: every CUDA GPU this project runs
on, and CPUs with AVX512-BF16 or AMX-BF16 (measured on a 2-core EPYC with AVX512-BF16: the
`finetune` step 1.9x faster, 2.0x with channels_last; BENCHMARKS.md). Elsewhere oneDNN emulates
bf16 by conversion and gains nothing, so fp32 stays, and the reason is said.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic


def resolve_device(spec: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def compute_threads(env: dict | None = None) -> int:
    """Threads for the compute of this process (training, upscaling, evaluating): the
    OMP_NUM_THREADS the user gave, else every core this process may use. realsr's own default of 1
    (flows/runtime.py) is for its worker processes, so the command remembers in REALSR_USER_THREADS
    what the user had set ("" for nothing) before it applies that default."""
    env = os.environ if env is None else env
    given = env["REALSR_USER_THREADS"] if "REALSR_USER_THREADS" in env else env.get("OMP_NUM_THREADS", "")
    if given.strip().isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use_compute_threads() -> int:
    """Set torch's intra-op threads to `compute_threads()`; returns the count."""
    n = compute_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def training_precision(device: torch.device, precision: str, flags: set[str] | None = None) -> tuple[torch.dtype | None, str]:
    """(the autocast dtype or None for fp32, why) for `precision` auto, fp32 or bf16 on `device`.

    auto: bf16 on CUDA and on CPUs with native bf16 (`CPU_BF16_FLAGS`), fp32 elsewhere. bf16
    asked for explicitly is used anywhere (on a CPU without native bf16 it is emulated: slower).
    """
    if precision == "fp32":
        return None, "fp32 (asked for)"
    if precision == "bf16":
        return torch.bfloat16, "bf16 autocast (asked for)"
    if device.type == "cuda":
        return torch.bfloat16, "bf16 autocast (auto: a CUDA device)"
    if device.type != "cpu":
        return None, f"fp32 (auto: bf16 autocast is used on CUDA and bf16-capable CPUs, not on {device.type})"
    have = sorted((cpu_flags() if flags is None else flags) & set(CPU_BF16_FLAGS))
    if have:
        return torch.bfloat16, f"bf16 autocast (auto: the CPU has {', '.join(have)})"
    return None, f"fp32 (auto: the CPU has no native bf16, none of {', '.join(CPU_BF16_FLAGS)}; emulated bf16 would be slower)"
