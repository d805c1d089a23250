"""Per-image operations for many images trained in one loop, each image's result independent of
the rest of the batch.

Training many images together must give each the kernel it gets alone, bitwise (a user's kernel
must not depend on the worker count or the folder's other photos). Grouped convolutions break
that (their algorithm changes with the group count), and so do batched matrix products
(measured on this CPU: `bmm` rounds an image's product differently at another batch size or
position once a side is 1 or the inner dimension is large). So every per-image operation here is
one plain call per image, with the same shapes and strides whatever else is in the batch; the
batch still shares the optimiser, the losses' bookkeeping and the loop.
`tests/test_kernelgan.py` checks the whole training loop bitwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def strided_correlation(x: torch.Tensor, k: torch.Tensor, stride: int) -> torch.Tensor:
    """Each image's channels correlated with its own kernel: x (B, C, H, W), k (B, K, K)."""
    return torch.cat([F.conv2d(xi.unsqueeze(1), ki[None, None], stride=stride).transpose(0, 1) for xi, ki in zip(x, k)])


def compose_linear(weights: list[torch.Tensor]) -> torch.Tensor:
    """(B, K, K) composed correlation kernels of B deep linear nets, from their layers'
    (B, out, in, kh, kw) weights (the last layer has one output channel).

    Composed from the output side: a transposed convolution is the full convolution that
    composes two correlations: ~1 M multiply-adds, against ~30 M for pushing a delta through the
    layers as the reference does.
    """
    out = []
    per_image = zip(*(w.unbind(0) for w in weights))  # unbind: one backward for all images, not B selects
    for layers in per_image:
        m = layers[-1].reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        for w in reversed(layers[:-1]):
            m = F.conv_transpose2d(m, w)  # (1, C_in, k', k')
        out.append(m[0, 0])
    return torch.stack(out)


def conv_stack(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], between) -> torch.Tensor:
    """Each image through its own convolutions: x (B, C, H, W), weights[j] (B, out, in, kh, kw),
    biases[j] (B, out); `between(j, image, y)` runs after conv j (BN, ReLU, ...)."""
    out = []
    weights, biases = [w.unbind(0) for w in weights], [b.unbind(0) for b in biases]
    for i, y in enumerate(x.split(1)):
        for j, (w, b) in enumerate(zip(weights, biases)):
            if w[i].shape[-2:] == (1, 1):  # a 1x1 conv is a matrix product (torch's conv takes a slow path here)
                y = torch.addmm(b[i][:, None], w[i].flatten(1), y.flatten(2)[0]).view(1, -1, *y.shape[-2:])
            else:
                y = F.conv2d(y, w[i], b[i])
            y = between(j, i, y)
        out.append(y)
    return torch.cat(out)
