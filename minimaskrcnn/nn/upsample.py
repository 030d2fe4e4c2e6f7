"""Nearest-neighbour upsampling, ``torch.nn.Upsample(mode="nearest")`` /
``F.interpolate(mode="nearest")`` semantics.

Output pixel ``i`` reads input pixel ``min(floor(i * scale), in - 1)`` with
``scale = in / out`` computed in float32, as torch's CPU kernel does (``nearest_idx``); for an
integer factor f that is ``i // f``. The backward sums every output gradient into the input
pixel it was read from. FPN's top-down path uses a factor of 2 (or ``size=`` the lateral's size).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn.module import Module


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output index, ``(n_out,) int64``, torch's float32 rule."""
    if n_out == n_in:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


class Upsample(Module):
    """Nearest upsampling of ``(N, C, H, W)`` by an integer ``scale_factor`` or to a ``size``.

    Args:
        scale_factor: positive int (or ``(h, w)`` ints): ``Ho = H * f``. Exclusive with size.
        size: ``int`` or ``(Ho, Wo)``.
        mode: only ``"nearest"``.

    ``forward(x)`` -> ``(y (N, C, Ho, Wo), cache)``; ``backward`` sums over the copies.

    Raises:
        ValueError: neither or both of ``scale_factor``/``size``, non-integer factor, other
            mode, input rank not 4.
    """

    def __init__(self, scale_factor=None, size=None, mode: str = "nearest"):
        if mode != "nearest":
            raise ValueError(f"Upsample: only mode='nearest' is implemented, got {mode!r}")
        if (scale_factor is None) == (size is None):
            raise ValueError("Upsample: give exactly one of scale_factor and size")
        if scale_factor is not None:
            f = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (
                scale_factor, scale_factor)
            if not all(float(v) == int(v) and int(v) >= 1 for v in f):
                raise ValueError(f"Upsample: scale_factor must be a positive integer, got "
                                 f"{scale_factor!r}")
            self.scale_factor = (int(f[0]), int(f[1]))
            self.size = None
        else:
            s = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            if len(s) != 2 or min(s) < 1:
                raise ValueError(f"Upsample: size must be a positive int or pair, got {size!r}")
            self.size = (int(s[0]), int(s[1]))
            self.scale_factor = None
        self.mode = mode

    def extra_repr(self) -> str:
        if self.size is not None:
            return f"size={self.size}, mode={self.mode!r}"
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        return H * self.scale_factor[0], W * self.scale_factor[1]

    def forward(self, x):
        self._check_input(x, 4, None, "(N, C, H, W)")
        return upsample_nearest(x, self.output_size(x.shape[2], x.shape[3]))

    def backward(self, dy, cache):
        return upsample_nearest_backward(dy, cache)


def upsample_nearest(x, size: tuple[int, int]):
    """Functional form: ``x (N, C, H, W)`` -> ``(y (N, C, Ho, Wo), cache)``."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = size
    if Ho % H == 0 and Wo % W == 0:   # integer factors: broadcast copy, no gather
        fh, fw = Ho // H, Wo // W
        y = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, fh, W, fw))
        return y.reshape(N, C, Ho, Wo), (x.shape, None, None)
    ih = xp.asarray(nearest_indices(H, Ho))
    iw = xp.asarray(nearest_indices(W, Wo))
    return x[:, :, ih][:, :, :, iw], (x.shape, ih, iw)


def upsample_nearest_backward(dy, cache):
    """Sum ``dy (N, C, Ho, Wo)`` into the input pixels each output copied -> ``(N, C, H, W)``."""
    shape, ih, iw = cache
    N, C, H, W = shape
    Ho, Wo = dy.shape[2:]
    if ih is None:
        return dy.reshape(N, C, H, Ho // H, W, Wo // W).sum(axis=(3, 5))
    xp = get_array_module(dy)
    # one-hot selection matrices: dx = Sh^T dy Sw with Sh (Ho, H), Sw (Wo, W)
    sh = (ih[:, None] == xp.arange(H)[None, :]).astype(dy.dtype)
    sw = (iw[:, None] == xp.arange(W)[None, :]).astype(dy.dtype)
    return xp.matmul(xp.matmul(sh.T, dy), sw)
