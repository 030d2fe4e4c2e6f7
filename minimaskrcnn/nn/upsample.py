"""Nearest-neighbour and bilinear upsampling, ``torch.nn.Upsample`` /
``F.interpolate`` semantics (``mode="nearest"``, ``mode="bilinear", align_corners=False``).

Nearest: output pixel ``i`` reads input pixel ``min(floor(i * scale), in - 1)`` with
``scale = in / out`` computed in float32, as torch's CPU kernel does (``nearest_idx``); for an
integer factor f that is ``i // f``. The backward sums every output gradient into the input
pixel it was read from. FPN's top-down path uses a factor of 2 (or ``size=`` the lateral's size).

Bilinear (the keypoint head's 2x upscaling, torchvision's ``KeypointRCNNPredictor``:
``F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``): along each axis output
cell ``d`` reads ``src = scale (d + 0.5) - 0.5`` clamped at 0, ``scale = in / out`` in float32
(for an integer factor f that is ``1 / f``, what torch uses with ``recompute_scale_factor=False``),
cells ``i0 = min(floor(src), in - 1)`` and ``i0 + 1`` (the last cell repeated) with weights
``1 - l, l``, ``l = src - i0``. The resize is separable and linear: ``y = A_h x A_w^T`` with
``(out, in)`` interpolation matrices per axis, so the backward is ``dx = A_h^T dy A_w``. Values
agree with torch's to float rounding (the products are summed in another order).
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
    """Nearest or bilinear upsampling of ``(N, C, H, W)`` by an integer ``scale_factor`` or to a ``size``.

    Args:
        scale_factor: positive int (or ``(h, w)`` ints): ``Ho = H * f``. Exclusive with size.
        size: ``int`` or ``(Ho, Wo)``.
        mode: ``"nearest"`` or ``"bilinear"`` (``align_corners=False``; see the module).

    ``forward(x)`` -> ``(y (N, C, Ho, Wo), cache)``; ``backward`` sums over the copies.

    Raises:
        ValueError: neither or both of ``scale_factor``/``size``, non-integer factor, other
            mode, input rank not 4.
    """

    def __init__(self, scale_factor=None, size=None, mode: str = "nearest"):
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
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
        size = self.output_size(x.shape[2], x.shape[3])
        if self.mode == "bilinear":
            return upsample_bilinear(x, size)
        return upsample_nearest(x, size)

    def backward(self, dy, cache):
        if self.mode == "bilinear":
            return upsample_bilinear_backward(dy, cache)
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


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in) float64`` interpolation matrix of one axis (``align_corners=False``, see
    the module docstring): row ``d`` holds the weights ``1 - l`` and ``l`` of the two cells
    output cell ``d`` reads (one weight 1 where both are the last cell)."""
    scale = np.float32(n_in) / np.float32(n_out)
    a = np.zeros((n_out, n_in))
    for d in range(n_out):
        src = max(scale * (np.float32(d) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        lam = min(max(float(src) - i0, 0.0), 1.0)
        a[d, i0] += 1.0 - lam
        a[d, i1] += lam
    return a


def upsample_bilinear(x, size: tuple[int, int]):
    """Functional form: ``x (N, C, H, W)`` -> ``(y (N, C, Ho, Wo), cache)``, bilinear with
    ``align_corners=False``; ``y`` in ``x``'s dtype and array module."""
    xp = get_array_module(x)
    H, W = x.shape[2:]
    ah = xp.asarray(bilinear_matrix(H, size[0]), dtype=x.dtype)  # (Ho, H)
    aw = xp.asarray(bilinear_matrix(W, size[1]), dtype=x.dtype)  # (Wo, W)
    return xp.matmul(xp.matmul(ah, x), aw.T), (ah, aw)


def upsample_bilinear_backward(dy, cache):
    """``dy (N, C, Ho, Wo)`` -> ``dx (N, C, H, W) = A_h^T dy A_w``."""
    ah, aw = cache
    xp = get_array_module(dy)
    return xp.matmul(xp.matmul(ah.T, dy), aw)
