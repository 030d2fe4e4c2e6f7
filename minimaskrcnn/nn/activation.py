"""Element-wise activation: ``ReLU`` (any shape)."""

from __future__ import annotations

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn.module import Module


class ReLU(Module):
    """``y = max(x, 0)``; the gradient at exactly 0 is 0 (torch's convention).

    ``forward(x)``: any shape -> ``(y same shape and dtype, cache = y)``. The cache is the
    output itself, as in torch (``threshold_backward`` reads the result): ``x > 0`` exactly
    where ``y > 0``, so the forward is one pass and inference builds no mask. A NaN stays NaN
    (``torch.relu``'s behaviour); its gradient is 0.
    """

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, x.dtype.type(0))
        return y, y

    def backward(self, dy, cache):
        xp = get_array_module(dy)
        return xp.where(cache > 0, dy, xp.zeros((), dtype=dy.dtype))
