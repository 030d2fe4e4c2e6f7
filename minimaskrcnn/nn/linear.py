"""Fully connected layer and flattening: ``Linear`` and ``Flatten`` (torch semantics).

Shapes: Linear maps x ``(*, in_features)`` to y ``(*, out_features)`` with ``y = x @ W^T + b``,
weight ``(out_features, in_features)`` as in ``torch.nn.Linear``; the box head uses it on
``(R, C*Ph*Pw)`` RoI features.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn._validate import shape_str
from minimaskrcnn.backend import get_array_module, host_threads, map_chunks
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Param

PARALLEL_MIN_MACS = 1 << 24
"""A 2-D forward of at least this many multiply-adds (~0.2 ms on one core) splits its rows over
the host threads; below it the handoff to the pool (~0.1 ms) does not pay."""

PARALLEL_MIN_ROWS = 64
"""Rows per thread at least, when the forward splits its rows."""


class Linear(Module):
    """``y = x @ weight^T + bias``.

    Args:
        in_features, out_features: sizes of the last axis of x and y.
        bias: learn a ``(out_features,)`` bias.
        rng: ``np.random.Generator`` for torch's default init (kaiming_uniform a=sqrt(5), bias
            U(+-1/sqrt(in_features))); ``None``: fresh OS entropy.
        dtype: parameter dtype (float32).

    ``forward(x)``: x ``(*, in_features)`` -> ``(y (*, out_features), cache)``. A large 2-D
    NumPy input (the box head's FC6 and FC7 on 1000 proposals in ``predict``) has its rows split
    over :func:`~minimaskrcnn.backend.host_threads` threads, one BLAS thread each
    (:func:`~minimaskrcnn.backend.map_chunks`): each row is the one-thread row up to float
    summation order (the BLAS blocks a product of fewer rows differently), and the same for a
    given thread count.

    Raises:
        ValueError: x has rank 0 or its last axis is not ``in_features`` (names layer, shapes).
        TypeError: x's dtype differs from the parameters'.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None,
                 dtype=np.float32):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Param(np.zeros((out_features, in_features), dtype=dtype), "weight")
        self.bias = Param(np.zeros((out_features,), dtype=dtype), "bias") if bias else None
        init.default_layer_init_(self.weight, self.bias, init.make_rng(rng))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if self.bias is not None else ", bias=False"))

    def forward(self, x):
        if not hasattr(x, "ndim") or x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self!r}: input must have shape (*, {self.in_features}), got "
                             f"{shape_str(x.shape) if hasattr(x, 'shape') else type(x).__name__}")
        self._check_input(x, x.ndim, None, "", self.weight.data)
        w = self.weight.data
        rows = x.shape[0] if x.ndim == 2 else 0
        threads = host_threads(x) if rows * w.size >= PARALLEL_MIN_MACS else 1
        if threads > 1:
            y = np.empty((rows, self.out_features), dtype=x.dtype)

            def run(r0: int, r1: int) -> None:
                np.matmul(x[r0:r1], w.T, out=y[r0:r1])

            map_chunks(run, rows, threads, PARALLEL_MIN_ROWS)
        else:
            y = x @ w.T
        if self.bias is not None:
            y += self.bias.data
        return y, x

    def backward(self, dy, cache):
        x = cache
        x2 = x.reshape(-1, self.in_features)                 # (R, in)
        dy2 = dy.reshape(-1, self.out_features)              # (R, out)
        self.weight.grad += dy2.T @ x2
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return dy @ self.weight.data


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one (``torch.nn.Flatten``, default from axis 1).

    ``(N, C, H, W) -> (N, C*H*W)``; backward reshapes back. A view when x is contiguous.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, x):
        nd = x.ndim
        s, e = self.start_dim % nd, self.end_dim % nd
        if s > e:
            raise ValueError(f"{self!r}: start_dim after end_dim for input {shape_str(x.shape)}")
        shape = x.shape[:s] + (-1,) + x.shape[e + 1:]
        if x.size == 0:
            shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        return get_array_module(x).ascontiguousarray(x).reshape(shape), x.shape

    def backward(self, dy, cache):
        return dy.reshape(cache)
