"""Multiply-add FLOPs of the matrix products of a forward and backward pass, counted by wrapping
the layers that lower to BLAS products (``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear``).

A layer's forward is ``2 x`` its multiply-adds; its backward is the weight gradient and the
input gradient, each as large as the forward. Layers whose backward the model does not call
(the RPN head's 3x3 conv, whose backward is sparse, docs/performance.md) count their forward
only, which is what is computed; the sparse backward's few products are left out. Everything
else (RoIAlign, GroupNorm, the losses, NumPy copies) is not a product and not counted: the count
over the machine's sgemm rate (``timing.sgemm_gflops``) is a floor no implementation on those
cores can beat.

    with count_flops() as flops:
        model.forward_train(...); model.backward(None, cache)
    flops.forward, flops.backward   # FLOPs
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from minimaskrcnn import nn


@dataclass
class FlopCount:
    forward: float = 0.0
    backward: float = 0.0
    _by_cache: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.forward + self.backward


def _forward_flops(layer, x, y) -> float:
    if isinstance(layer, nn.Linear):
        return 2.0 * (x.size // x.shape[-1]) * layer.in_features * layer.out_features
    kh, kw = layer.kernel_size
    if isinstance(layer, nn.ConvTranspose2d):  # every input pixel meets every output channel
        return 2.0 * x.size * layer.out_channels * kh * kw
    return 2.0 * y.size * layer.in_channels * kh * kw  # Conv2d: per output value, C kh kw


@contextlib.contextmanager
def count_flops():
    """Count the products' FLOPs of every forward and backward run inside the block."""
    count = FlopCount()
    originals = {}
    for cls in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear):
        originals[cls] = (cls.forward, cls.backward)

        def forward(self, x, _orig=cls.forward):
            y, cache = _orig(self, x)
            f = _forward_flops(self, x, y)
            count.forward += f
            count._by_cache[id(cache)] = f
            return y, cache

        def backward(self, dy, cache, _orig=cls.backward):
            count.backward += 2.0 * count._by_cache.get(id(cache), 0.0)
            return _orig(self, dy, cache)

        cls.forward, cls.backward = forward, backward
    try:
        yield count
    finally:
        for cls, (f, b) in originals.items():
            cls.forward, cls.backward = f, b
