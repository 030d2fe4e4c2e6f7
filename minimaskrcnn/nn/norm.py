"""Group normalisation (Wu & He, ECCV 2018), ``torch.nn.GroupNorm`` semantics.

x ``(N, C, *)`` is split into G groups of C/G channels; each (image, group) is normalised by
its own mean and biased variance over its channels and positions, then scaled and shifted per
channel: ``y = (x - mu_ng) / sqrt(var_ng + eps) * weight_c + bias_c``.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn.module import Module, Param


class GroupNorm(Module):
    """GroupNorm with affine parameters ``weight (C,)`` (init 1) and ``bias (C,)`` (init 0).

    Args:
        num_groups: G, must divide ``num_channels``.
        num_channels: C.
        eps: added to the variance (1e-5 as torch).
        dtype: parameter dtype (float32).

    ``forward(x)``: x ``(N, C, *)`` (usually ``(N, C, H, W)``) -> ``(y same shape, cache)``.
    The statistics are computed in x's dtype (float32 stays float32).

    Raises:
        ValueError: ``num_channels % num_groups != 0``; input rank < 2 or channel count wrong
            (naming the layer and shapes).
        TypeError: input dtype differs from the parameters'.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, dtype=np.float32):
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = float(eps)
        self.weight = Param(np.ones((num_channels,), dtype=dtype), "weight")
        self.bias = Param(np.zeros((num_channels,), dtype=dtype), "bias")

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"

    def forward(self, x):
        if not hasattr(x, "ndim") or x.ndim < 2:
            self._check_input(x, 4, self.num_channels, f"(N, {self.num_channels}, *)")
        self._check_input(x, x.ndim, self.num_channels, f"(N, {self.num_channels}, *)",
                          self.weight.data)
        xp = get_array_module(x)
        N, C = x.shape[:2]
        G = self.num_groups
        xg = x.reshape(N, G, -1)                                 # (N, G, C/G * H*W)
        mean = xg.mean(axis=2, keepdims=True)
        xc = xg - mean
        var = (xc * xc).mean(axis=2, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + x.dtype.type(self.eps))       # (N, G, 1)
        xhat = (xc * rstd).reshape(N, C, -1)                     # (N, C, H*W)
        y = xhat * self.weight.data[:, None] + self.bias.data[:, None]
        return y.reshape(x.shape), (xhat, rstd)

    def backward(self, dy, cache):
        xhat, rstd = cache
        N, C = dy.shape[:2]
        G = self.num_groups
        dy3 = dy.reshape(N, C, -1)                               # (N, C, H*W)
        self.weight.grad += (dy3 * xhat).sum(axis=(0, 2))
        self.bias.grad += dy3.sum(axis=(0, 2))
        dxhat = (dy3 * self.weight.data[:, None]).reshape(N, G, -1)  # (N, G, C/G * H*W)
        xh = xhat.reshape(N, G, -1)
        dx = rstd * (dxhat - dxhat.mean(axis=2, keepdims=True)
                     - xh * (dxhat * xh).mean(axis=2, keepdims=True))
        return dx.reshape(dy.shape)
