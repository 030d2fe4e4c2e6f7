"""Group normalisation (Wu & He, ECCV 2018), ``torch.nn.GroupNorm`` semantics.

x ``(N, C, *)`` is split into G groups of C/G channels; each (image, group) is normalised by
its own mean and biased variance over its channels and positions, then scaled and shifted per
channel: ``y = (x - mu_ng) / sqrt(var_ng + eps) * weight_c + bias_c``.
"""

from __future__ import annotations

import math

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
        S = math.prod(x.shape[2:])                               # H*W
        xg = x.reshape(N, G, (C // G) * S)                       # (N, G, C/G * H*W)
        xc = xg - xg.mean(axis=2, keepdims=True)                 # centred
        var = _rowdot(xc, xc) / xc.shape[2]                      # (N, G), biased
        rstd = 1.0 / xp.sqrt(var + x.dtype.type(self.eps))       # (N, G)
        rstd_c = xp.repeat(rstd, C // G, axis=1)                 # (N, C)
        xc = xc.reshape(N, C, S)                                 # (N, C, H*W)
        # y = xhat * weight + bias with xhat = xc * rstd folded into one per-channel scale
        y = xc * (rstd_c * self.weight.data)[:, :, None]
        y += self.bias.data[:, None]
        return y.reshape(x.shape), (xc, rstd_c)

    def backward(self, dy, cache):
        """dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)), dxhat = dy * weight,
        written as ``a*dy + b*xc + c`` with per-(n, c) coefficients from two reductions."""
        xc, rstd_c = cache
        N, C = dy.shape[:2]
        G = self.num_groups
        M = (C // G) * xc.shape[2]                               # elements per group
        S = xc.shape[2]
        dy3 = dy.reshape(N, C, S)                                # (N, C, H*W)
        sum_dy = dy3.sum(axis=2)                                 # (N, C)
        sum_dy_xc = _rowdot(dy3, xc)                             # (N, C)
        gamma = self.weight.data
        self.weight.grad += (sum_dy_xc * rstd_c).sum(axis=0)
        self.bias.grad += sum_dy.sum(axis=0)
        # per group: mean(dxhat) and mean(dxhat * xhat)
        m1 = (gamma * sum_dy).reshape(N, G, C // G).sum(axis=2) / M        # (N, G)
        m2 = (gamma * sum_dy_xc * rstd_c).reshape(N, G, C // G).sum(axis=2) / M
        rstd = rstd_c.reshape(N, G, C // G)[:, :, :1]                      # (N, G, 1)
        b = (-(rstd * rstd) * m2[:, :, None]).reshape(N, G, 1)
        c = -(rstd * m1[:, :, None])
        a = rstd_c * gamma                                                 # (N, C)
        dx = dy3 * a[:, :, None]
        xb = xc.reshape(N, G, M) * b                                       # (N, G, C/G*H*W)
        dx += xb.reshape(N, C, S)
        dx = dx.reshape(N, G, M)
        dx += c
        return dx.reshape(dy.shape)


def _rowdot(a, b):
    """``sum(a * b, axis=-1)`` without the temporary (NumPy's vecdot calls the BLAS dot, which
    also accumulates more accurately than a float32 running sum)."""
    xp = get_array_module(a)
    vecdot = getattr(xp, "vecdot", None)
    if vecdot is not None:
        return vecdot(a, b)
    return (a * b).sum(axis=-1)
