"""Element-wise activation: ``ReLU`` (any shape)."""

from __future__ import annotations

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn.module import Module


class ReLU(Module):
    """``y = max(x, 0)``; the gradient at exactly 0 is 0 (torch's convention).

    ``forward(x)``: any shape -> ``(y same shape and dtype, cache = mask x > 0)``.
    """

    def forward(self, x):
        xp = get_array_module(x)
        mask = x > 0
        return xp.where(mask, x, xp.zeros((), dtype=x.dtype)), mask

    def backward(self, dy, cache):
        mask = cache
        xp = get_array_module(dy)
        return xp.where(mask, dy, xp.zeros((), dtype=dy.dtype))
