"""The torch device a setting names: `auto` is CUDA when there is a GPU, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(spec: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
