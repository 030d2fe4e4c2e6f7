"""The plain 2-D convolution, forward and backward, in a few readable lines: the specification
that the tuned :class:`~minimaskrcnn.nn.Conv2d` (im2col lowering, blocked BLAS products) is
tested against, and the one to read first (chapter 6, "backward by hand").

Shapes: x ``(N, C, H, W)``, weight ``(O, C, kh, kw)``, bias ``(O,)`` or ``None``,
y ``(N, O, Ho, Wo)`` with ``Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1`` (torch's formula).

A convolution is a sum over the kernel taps. Tap ``(a, b)`` reads, for every output pixel
``(i, j)``, the input pixel ``(i sh + a dh - ph, j sw + b dw - pw)``: a strided window of the
zero-padded input, ``patch(a, b)`` of shape ``(N, C, Ho, Wo)``. Then::

    y        = bias + sum_{a,b} W[:, :, a, b] @ patch(a, b)          (over channels C)
    dW[:, :, a, b] = sum over n, i, j of dy (x) patch(a, b)
    d patch(a, b)  = W[:, :, a, b]^T @ dy, added back where the patch was read
    d bias   = sum of dy over n, i, j

Arithmetic in the input's dtype; NumPy only (a reference, not a layer: no parameters, no cache).
"""

from __future__ import annotations

import numpy as np


def _windows(h, w, kh, kw, stride, dilation, ho, wo):
    """For each tap ``(a, b)``, the slices of the padded input it reads: ``((a, b), (rows, cols))``."""
    (sh, sw), (dh, dw) = stride, dilation
    for a in range(kh):
        for b in range(kw):
            rows = slice(a * dh, a * dh + sh * (ho - 1) + 1, sh)
            cols = slice(b * dw, b * dw + sw * (wo - 1) + 1, sw)
            yield (a, b), (rows, cols)


def conv2d_reference(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``; ``stride``, ``padding``, ``dilation`` are pairs."""
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, O, Ho, Wo), x.dtype)
    for (a, b), (rows, cols) in _windows(H, W, kh, kw, stride, dilation, Ho, Wo):
        patch = xpad[:, :, rows, cols]  # (N, C, Ho, Wo): what tap (a, b) reads
        y += np.einsum("oc,nchw->nohw", weight[:, :, a, b], patch)
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv2d_reference_backward(dy, x, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Gradients of :func:`conv2d_reference`: ``(dx (N, C, H, W), dweight (O, C, kh, kw),
    dbias (O,))`` for the output gradient ``dy (N, O, Ho, Wo)``."""
    N, C, H, W = x.shape
    _, _, kh, kw = weight.shape
    (ph, pw) = padding
    Ho, Wo = dy.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxpad = np.zeros_like(xpad)
    dweight = np.zeros_like(weight)
    for (a, b), (rows, cols) in _windows(H, W, kh, kw, stride, dilation, Ho, Wo):
        patch = xpad[:, :, rows, cols]  # (N, C, Ho, Wo)
        dweight[:, :, a, b] = np.einsum("nohw,nchw->oc", dy, patch)
        dxpad[:, :, rows, cols] += np.einsum("oc,nohw->nchw", weight[:, :, a, b], dy)
    dx = dxpad[:, :, ph:ph + H, pw:pw + W]
    return dx, dweight, dy.sum(axis=(0, 2, 3))
