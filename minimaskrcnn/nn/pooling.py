"""Max pooling, ``torch.nn.MaxPool2d`` semantics (floor mode, implicit -inf padding).

x ``(N, C, H, W)`` -> y ``(N, C, Ho, Wo)``, ``Ho = (H + 2*p - k) // s + 1``. FPN's P6 is
``MaxPool2d(kernel_size=1, stride=2)`` (subsampling). Ties: the gradient goes to the first
maximal tap in row-major window order (as torch's CPU kernel; gradient checks use inputs
without ties).
"""

from __future__ import annotations

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn.conv import _pair
from minimaskrcnn.nn.module import Module


class MaxPool2d(Module):
    """Max over ``kernel_size`` windows moved by ``stride`` (default: the kernel size).

    Args:
        kernel_size, stride, padding: int or ``(h, w)``; ``padding <= kernel_size // 2``.

    ``forward(x)``: ``(N, C, H, W)`` -> ``(y (N, C, Ho, Wo), cache = (argmax tap, shape))``.

    Raises:
        ValueError: rank is not 4, padding too large, or the input smaller than the window.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(self.kernel_size if stride is None else stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"MaxPool2d: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _geometry(self, H, W):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{self!r}: input of spatial size ({H}, {W}) is smaller than the "
                             "window")
        return Ho, Wo

    def _taps(self, buf, Ho, Wo):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for a in range(kh):
            for b in range(kw):
                yield a * kw + b, buf[:, :, a : a + sh * (Ho - 1) + 1 : sh,
                                      b : b + sw * (Wo - 1) + 1 : sw]

    def forward(self, x):
        self._check_input(x, 4, None, "(N, C, H, W)")
        xp = get_array_module(x)
        N, C, H, W = x.shape
        Ho, Wo = self._geometry(H, W)
        ph, pw = self.padding
        if ph or pw:
            buf = xp.full((N, C, H + 2 * ph, W + 2 * pw), -xp.inf, dtype=x.dtype)
            buf[:, :, ph : ph + H, pw : pw + W] = x
        else:
            buf = x
        y = None
        arg = xp.zeros((N, C, Ho, Wo), dtype=xp.int32)
        for t, view in self._taps(buf, Ho, Wo):
            if y is None:
                y = view.copy()
                continue
            better = view > y          # strict: the first maximum keeps the gradient
            y = xp.where(better, view, y)
            arg[better] = t
        return y, (arg, x.shape)

    def backward(self, dy, cache):
        arg, shape = cache
        xp = get_array_module(dy)
        N, C, H, W = shape
        ph, pw = self.padding
        Ho, Wo = dy.shape[2:]
        dbuf = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
        zero = xp.zeros((), dtype=dy.dtype)
        for t, view in self._taps(dbuf, Ho, Wo):
            view += xp.where(arg == t, dy, zero)
        if ph or pw:
            return xp.ascontiguousarray(dbuf[:, :, ph : ph + H, pw : pw + W])
        return dbuf
