"""Batched products whose result for one image does not depend on the rest of the batch.

Training many images in one loop must give each the kernel it gets alone, bitwise (a user's
kernel must not depend on the worker count or the folder's other photos). Grouped convolutions
break that (their algorithm changes with the group count), and so do batched matrix products
with one row or one column (a gemv path whose rounding changes with the batch). Everything
per image in KernelGAN goes through these two functions; `tests/test_kernelgan.py` checks the
whole training loop bitwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, M, K) @ (B, K, N); a vector product (M or N = 1) as multiply + sum."""
    if a.shape[1] == 1:
        return (a.transpose(1, 2) * b).sum(1, keepdim=True)
    if b.shape[2] == 1:
        return (a * b.transpose(1, 2)).sum(2, keepdim=True)
    return torch.bmm(a, b)


def strided_correlation(x: torch.Tensor, k: torch.Tensor, stride: int) -> torch.Tensor:
    """Each image's channels correlated with its own kernel: x (B, C, H, W), k (B, K, K)."""
    b, ch, h, w = x.shape
    size = k.shape[-1]
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    cols = F.unfold(x.reshape(b * ch, 1, h, w), size, stride=stride)  # (B*C, K*K, oh*ow)
    cols = cols.reshape(b, ch, size * size, oh * ow).transpose(1, 2).reshape(b, size * size, ch * oh * ow)
    return batch_matmul(k.reshape(b, 1, size * size), cols).reshape(b, ch, oh, ow)
