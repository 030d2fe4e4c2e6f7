"""2-D convolution and transposed convolution, NCHW, lowered to one BLAS matrix product.

This is the tuned form. The plain definition, forward and backward in a few lines, is
:mod:`minimaskrcnn.nn.conv_reference`; ``tests/nn/test_conv.py`` checks this module against it.

Shapes: x ``(N, C, H, W)``, weight ``(O, C, kh, kw)`` (``ConvTranspose2d``: ``(C, O, kh, kw)``
as in torch), y ``(N, O, Ho, Wo)`` with ``Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1``
(torch.nn.Conv2d's formula, floor mode).

The lowering (im2col). The input is zero-padded once into a channel-major buffer
``(C, N, ...)``; for every kernel tap ``t = (a, b)`` a strided *view* of it holds the input pixel
that tap reads for every output pixel; the taps are copied into
``cols (C*kh*kw, N*Ho*Wq)`` and ``y = W(O, C*kh*kw) @ cols`` is a matrix product on the BLAS.
On the CPU the product is done block by block (whole small images, or bands of output rows of
a large one) so that each block of ``cols`` (~4 MiB) is still in cache when the BLAS reads it;
on the GPU it is one product.

* Stride 1 uses "wide rows": the padded image is flattened and output row ``i`` is computed for
  all ``Wq = Wp`` padded columns, so each tap is a *contiguous* slice of the flat image
  (``offset = a*dh*Wp + b*dw``) and both im2col and col2im are plain memory copies/adds; the
  ``Wp - Wo`` extra columns of each output row are discarded (their gradient is zero).
* Stride > 1 uses exact rows (``Wq = Wo``) and strided tap views.
* A 1x1 stride-1 unpadded conv needs no im2col: ``cols`` is the (channel-major) input.
* Large stride-1 maps skip ``cols`` too: one product per kernel tap on the tap's view,
  accumulated (~5-10% faster there; small maps batch several images per product instead).

The backward pass is the same lowering read backwards: ``dW = dy @ cols^T``,
``dcols = W^T @ dy`` and col2im adds every tap's slice of ``dcols`` back into the padded input
gradient. ``ConvTranspose2d`` is exactly the backward of a ``Conv2d`` (and vice versa).

Everything runs on NumPy or CuPy arrays (``xp = get_array_module(x)``); float32 stays float32.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn.backend import get_array_module, host_threads, map_chunks
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Param


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


class Geometry(NamedTuple):
    """Index arithmetic of one convolution (input ``H x W`` -> output ``Ho x Wo``)."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    H: int
    W: int
    Ho: int
    Wo: int
    Hp: int  # padded height
    Wp: int  # padded width
    Wq: int  # computed row width: Wp for stride 1 ("wide rows"), Wo otherwise
    wide: bool


def conv_geometry(H, W, kernel, stride, padding, dilation, who: str) -> Geometry:
    """Output size and lowering layout; raises ``ValueError`` (naming ``who``) if empty."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wp - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{who}: input of spatial size ({H}, {W}) is too small for the kernel "
                         f"(padded ({Hp}, {Wp}), dilated kernel "
                         f"({dh * (kh - 1) + 1}, {dw * (kw - 1) + 1}))")
    wide = sh == 1 and sw == 1
    return Geometry(kh, kw, sh, sw, ph, pw, dh, dw, H, W, Ho, Wo, Hp, Wp, Wp if wide else Wo, wide)


def _flat_len(g: Geometry) -> int:
    # the last tap of the last wide row reads dw*(kw-1) elements past Hp*Wp
    return g.Hp * g.Wp + g.dw * (g.kw - 1)


def _is_pointwise(g: Geometry) -> bool:
    """1x1, stride 1, no padding: ``cols`` is the input itself (no im2col, no col2im)."""
    return g.kh == 1 and g.kw == 1 and g.wide and g.ph == 0 and g.pw == 0


def _tiles_input(g: Geometry) -> bool:
    """Kernel = stride, no padding or dilation, and the output's windows tile the input
    exactly: every input pixel is read by one tap of one output pixel. col2im is then a pure
    rearrangement (:func:`_depth_to_space`). The transposed conv with kernel 2 stride 2 (the
    mask head's 2x upsampling) is the backward of such a conv."""
    return (not g.wide and (g.kh, g.kw) == (g.sh, g.sw) and g.ph == g.pw == 0
            and g.dh == g.dw == 1 and (g.H, g.W) == (g.Ho * g.sh, g.Wo * g.sw))


def _depth_to_space(dcols, g: Geometry, C: int, N: int, bias=None):
    """col2im for :func:`_tiles_input` geometries: ``dcols (C*kh*kw, N*Ho*Wo)`` -> the
    ``(N, C, H, W)`` image whose pixel ``(i*kh + a, j*kw + b)`` of channel ``c`` is
    ``dcols[(c, a, b), (n, i, j)] (+ bias[c])``: one strided copy per tap (the bias added in the
    same pass) instead of zeroing, kh*kw strided adds, the un-padding and a pass for the bias."""
    xp = get_array_module(dcols)
    src = dcols.reshape(C, g.kh, g.kw, N, g.Ho, g.Wo)
    out = xp.empty((N, C, g.Ho, g.kh, g.Wo, g.kw), dtype=dcols.dtype)
    for a in range(g.kh):
        for b in range(g.kw):
            tap = src[:, a, b].transpose(1, 0, 2, 3)                 # (N, C, Ho, Wo) view
            if bias is None:
                out[:, :, :, a, :, b] = tap
            else:
                xp.add(tap, bias[:, None, None], out=out[:, :, :, a, :, b])
    return out.reshape(N, C, g.H, g.W)


def pad_input(x, g: Geometry):
    """Zero-padded, channel-major copy of ``x (N, C, H, W)``: ``(C, N, flat_len)`` for wide
    rows (stride 1), else ``(C, N, Hp, Wp)``."""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    xt = x.transpose(1, 0, 2, 3)                                 # (C, N, H, W) view
    if _is_pointwise(g):
        return xp.ascontiguousarray(xt).reshape(C, N, g.H * g.W)
    if g.wide:
        buf = xp.zeros((C, N, _flat_len(g)), dtype=x.dtype)
        interior = buf[:, :, : g.Hp * g.Wp].reshape(C, N, g.Hp, g.Wp)
    else:
        buf = interior = xp.zeros((C, N, g.Hp, g.Wp), dtype=x.dtype)
    interior[:, :, g.ph : g.ph + g.H, g.pw : g.pw + g.W] = xt
    return buf


def unpad(dbuf, g: Geometry):
    """Inverse of :func:`pad_input`'s layout: the ``(N, C, H, W)`` interior, contiguous."""
    xp = get_array_module(dbuf)
    C, N = dbuf.shape[:2]
    if g.wide:
        dbuf = dbuf[:, :, : g.Hp * g.Wp].reshape(C, N, g.Hp, g.Wp)
    interior = dbuf[:, :, g.ph : g.ph + g.H, g.pw : g.pw + g.W]
    return xp.ascontiguousarray(interior.transpose(1, 0, 2, 3))


class Block(NamedTuple):
    """Images ``n0:n1`` and output rows ``r0:r1`` of each (a block of ``cols``)."""

    n0: int
    n1: int
    r0: int
    r1: int


BLOCK_ELEMENTS = 1 << 20
"""Target size of one block of ``cols`` on the CPU (4 MiB of float32). The matrix products of a
convolution have few rows (O = 32..64), so the BLAS is limited by reading ``cols``; a block
that was just written is still in cache when the BLAS reads it. Measured on the 2-core machine
(docs/performance.md): 2^20 beat 2^15..2^19 and 2^22, and was 1.4-1.7x faster forward +
backward than one product over all of ``cols``."""


def _blocks(xp, g: Geometry, N: int, C: int) -> list[Block]:
    """Split the work into blocks of about BLOCK_ELEMENTS values of ``cols``: several whole
    images when they fit, else bands of output rows of one image; one block on the GPU."""
    if xp is not np:
        return [Block(0, N, 0, g.Ho)]
    row = C * g.kh * g.kw * g.Wq                                 # cols values per output row
    if row * g.Ho <= BLOCK_ELEMENTS:
        k = max(1, BLOCK_ELEMENTS // (row * g.Ho))
        return [Block(n0, min(n0 + k, N), 0, g.Ho) for n0 in range(0, N, k)]
    rows = max(1, BLOCK_ELEMENTS // row)
    return [Block(n, n + 1, r0, min(r0 + rows, g.Ho))
            for n in range(N) for r0 in range(0, g.Ho, rows)]


def _span(a, blk: Block, g: Geometry):
    """``a (K, N, Ho*Wq)`` restricted to a block, as a 2-D view ``(K, images*rows*Wq)``."""
    return a[:, blk.n0 : blk.n1, blk.r0 * g.Wq : blk.r1 * g.Wq].reshape(a.shape[0], -1)


def _tap(buf, g: Geometry, a: int, b: int, blk: Block):
    """View of the padded buffer read by kernel tap ``(a, b)`` for a block:
    ``(C, images, rows*Wq)`` when wide, ``(C, images, rows, Wo)`` otherwise."""
    if g.wide:
        off = a * g.dh * g.Wp + b * g.dw
        return buf[:, blk.n0 : blk.n1, off + blk.r0 * g.Wp : off + blk.r1 * g.Wp]
    i0, c0 = a * g.dh + g.sh * blk.r0, b * g.dw
    return buf[:, blk.n0 : blk.n1, i0 : i0 + g.sh * (blk.r1 - blk.r0 - 1) + 1 : g.sh,
               c0 : c0 + g.sw * (g.Wo - 1) + 1 : g.sw]


def _block_size(blk: Block, g: Geometry) -> int:
    return (blk.n1 - blk.n0) * (blk.r1 - blk.r0) * g.Wq


def _cols_block(buf, g: Geometry, blk: Block, scratch):
    """``cols`` of one block, ``(C*kh*kw, images*rows*Wq)``: a view of the input for pointwise
    convs, else copied tap by tap into ``scratch (C, kh*kw, >= n)``."""
    if _is_pointwise(g):
        return _span(buf, blk, g)
    C = buf.shape[0]
    n = _block_size(blk, g)
    out = scratch[:, :, :n]                                      # (C, kh*kw, n)
    for a in range(g.kh):
        for b in range(g.kw):
            tap = _tap(buf, g, a, b, blk)
            out[:, a * g.kw + b].reshape(tap.shape)[...] = tap
    return out.reshape(C * g.kh * g.kw, n)


def conv_lowered(buf, g: Geometry, w2=None, dyw=None):
    """One pass over the ``cols`` of a padded buffer ``buf`` (from :func:`pad_input`):

    * ``w2 (O, C*kh*kw)`` given: ``yw = w2 @ cols``, ``(O, N, Ho*Wq)`` (the forward);
    * ``dyw (O, N, Ho*Wq)`` given: ``dw = dyw @ cols^T``, ``(O, C*kh*kw)``.

    Returns ``(yw, dw)`` (``None`` for what was not asked).
    """
    xp = get_array_module(buf)
    C, N = buf.shape[:2]
    kk = g.kh * g.kw
    blocks = _blocks(xp, g, N, C)
    yw = dw = None
    if w2 is not None:
        yw = xp.empty((w2.shape[0], N, g.Ho * g.Wq), dtype=buf.dtype)
    if dyw is not None:
        dw = xp.zeros((dyw.shape[0], C * kk), dtype=buf.dtype)
    per_tap = bool(blocks) and _per_tap(g, blocks)

    def run(b0: int, b1: int) -> None:                           # blocks b0:b1, in order
        part = blocks[b0:b1]
        if per_tap:
            _conv_lowered_per_tap(buf, g, part, w2, yw, dyw, dw)
            return
        biggest = max((_block_size(blk, g) for blk in part), default=0)
        scratch = None if _is_pointwise(g) else xp.empty((C, kk, biggest), dtype=buf.dtype)
        for blk in part:
            cols = _cols_block(buf, g, blk, scratch)             # (C*kh*kw, n)
            if w2 is not None:
                xp.matmul(w2, cols, out=_span(yw, blk, g))
            if dyw is not None:
                dw[...] += _span(dyw, blk, g) @ cols.T  # in place (conv_lowered.dw)

    # The forward's blocks write disjoint spans of yw with the same products as in one thread:
    # split over the host threads, bit-identical. dW sums over the blocks: one thread, in order.
    threads = host_threads(buf) if dyw is None else 1
    map_chunks(run, len(blocks), threads)
    return yw, dw


def _per_tap(g: Geometry, blocks: list[Block]) -> bool:
    """Large images with stride 1 (blocks are row bands of one image): every tap of a block is
    a 2-D ``(C, rows*Wp)`` view of the input that the BLAS can read directly."""
    return g.wide and not _is_pointwise(g) and blocks[0].n1 - blocks[0].n0 == 1 and len(
        blocks) > 1


def _conv_lowered_per_tap(buf, g: Geometry, blocks, w2, yw, dyw, dw):
    """:func:`conv_lowered` without materialising ``cols``: ``y = sum_t W_t @ x_t`` and
    ``dW_t = dy @ x_t^T`` with one product per kernel tap ``t`` on its input view ``x_t``
    (~10% faster than im2col + one product on large maps, where ``cols`` does not fit in cache;
    slower on small ones, which therefore keep im2col)."""
    xp = get_array_module(buf)
    C = buf.shape[0]
    kk = g.kh * g.kw
    taps = [(a, b) for a in range(g.kh) for b in range(g.kw)]
    if w2 is not None:
        O = w2.shape[0]
        w_taps = xp.ascontiguousarray(w2.reshape(O, C, kk).transpose(2, 0, 1))  # (kk, O, C)
        tmp = xp.empty((O, max(_block_size(blk, g) for blk in blocks)), dtype=buf.dtype)
    if dw is not None:
        dw3 = dw.reshape(dw.shape[0], C, kk)                     # (O, C, kh*kw) view
    for blk in blocks:
        n = _block_size(blk, g)
        out = _span(yw, blk, g) if w2 is not None else None      # (O, n)
        dyb = _span(dyw, blk, g) if dyw is not None else None    # (O, n)
        for t, (a, b) in enumerate(taps):
            x_t = _tap(buf, g, a, b, blk)[:, 0]                  # (C, n) view
            if w2 is not None:
                if t == 0:
                    xp.matmul(w_taps[0], x_t, out=out)
                else:
                    xp.matmul(w_taps[t], x_t, out=tmp[:, :n])
                    out += tmp[:, :n]
            if dyw is not None:
                dw3[:, :, t] += dyb @ x_t.T


def conv_lowered_input_grad(dyw, g: Geometry, w2, C: int, bias=None):
    """``col2im(w2^T @ dyw)`` un-padded: from ``dyw (O, N, Ho*Wq)`` the gradient
    ``(N, C, H, W)`` of the conv input (equivalently: the transposed convolution of ``dyw``),
    plus ``bias (C,)`` on every channel if given (the transposed conv's bias)."""
    xp = get_array_module(dyw)
    N = dyw.shape[1]
    kk = g.kh * g.kw
    w2t = xp.ascontiguousarray(w2.T)                               # (C*kh*kw, O)
    if _is_pointwise(g):
        dx = xp.matmul(w2t, dyw.reshape(dyw.shape[0], -1))         # (C, N*H*W)
        return _plus_bias(unpad(dx.reshape(C, N, g.H * g.W), g), bias)
    blocks = _blocks(xp, g, N, C)
    if _tiles_input(g):
        dcols = xp.empty((C * kk, N, g.Ho * g.Wq), dtype=dyw.dtype)

        def run(b0: int, b1: int) -> None:  # disjoint spans of dcols: the host threads' work
            for blk in blocks[b0:b1]:
                xp.matmul(w2t, _span(dyw, blk, g), out=_span(dcols, blk, g))

        map_chunks(run, len(blocks), host_threads(dyw))
        return _depth_to_space(dcols, g, C, N, bias)
    shape = (C, N, _flat_len(g)) if g.wide else (C, N, g.Hp, g.Wp)
    dbuf = xp.zeros(shape, dtype=dyw.dtype)
    scratch = xp.empty((C * kk, max((_block_size(blk, g) for blk in blocks), default=0)),
                       dtype=dyw.dtype)
    for blk in blocks:
        n = _block_size(blk, g)
        dcols = scratch[:, :n]
        xp.matmul(w2t, _span(dyw, blk, g), out=dcols)
        dcols = dcols.reshape(C, kk, n)
        for a in range(g.kh):
            for b in range(g.kw):
                tap = _tap(dbuf, g, a, b, blk)
                tap += dcols[:, a * g.kw + b].reshape(tap.shape)
    return _plus_bias(unpad(dbuf, g), bias)


def _plus_bias(x, bias):
    """``x (N, C, H, W)`` (a fresh array) with ``bias (C,)`` added in place, if given."""
    if bias is not None:
        x += bias[:, None, None]
    return x


def to_wide(y, g: Geometry):
    """``(N, O, Ho, Wo) -> (O, N, Ho*Wq)``, channel-major, zeros in the discarded columns."""
    xp = get_array_module(y)
    N, O = y.shape[:2]
    yt = y.transpose(1, 0, 2, 3)                                 # (O, N, Ho, Wo) view
    if g.Wq == g.Wo:
        return xp.ascontiguousarray(yt).reshape(O, N, g.Ho * g.Wq)
    yw = xp.zeros((O, N, g.Ho, g.Wq), dtype=y.dtype)
    yw[..., : g.Wo] = yt
    return yw.reshape(O, N, g.Ho * g.Wq)


def from_wide(yw, g: Geometry, bias=None):
    """``(O, N, Ho*Wq) -> (N, O, Ho, Wo)`` contiguous, adding ``bias (O,)`` in the same pass."""
    xp = get_array_module(yw)
    O, N = yw.shape[:2]
    y = yw.reshape(O, N, g.Ho, g.Wq)[..., : g.Wo].transpose(1, 0, 2, 3)
    if bias is not None:
        return y + bias[:, None, None]
    return xp.ascontiguousarray(y)


class Conv2d(Module):
    """2-D convolution (cross-correlation), ``torch.nn.Conv2d`` semantics without groups.

    Args:
        in_channels, out_channels: C and O.
        kernel_size, stride, padding, dilation: int or ``(h, w)`` pair (zero padding, pixels).
        bias: learn an additive ``(O,)`` bias.
        rng: ``np.random.Generator`` for the default init (``None``: fresh OS entropy; pass one
            for reproducible weights). Default init is PyTorch's: ``kaiming_uniform_(a=sqrt(5))``
            for the weight and U(+-1/sqrt(fan_in)) for the bias.
        dtype: parameter dtype (float32; use ``astype(np.float64)`` for gradient checks).

    Parameters: ``weight (O, C, kh, kw)``, ``bias (O,)``.

    ``forward(x)``: x ``(N, C, H, W)`` of the parameters' dtype -> ``(y (N, O, Ho, Wo), cache)``;
    the cache is the padded input (about the size of x; ``cols`` is rebuilt block by block in
    the backward instead of keeping ``kh*kw`` copies of the input alive).
    ``backward(dy, cache)`` -> dx ``(N, C, H, W)``; accumulates ``weight.grad``/``bias.grad``.

    Raises:
        ValueError: input rank is not 4, its channel count is not ``in_channels``, or the input
            is smaller than the dilated kernel (the message names the layer and the shapes).
        TypeError: input dtype differs from the parameters' dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, rng=None, dtype=np.float32):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        kh, kw = self.kernel_size
        self.weight = Param(np.zeros((out_channels, in_channels, kh, kw), dtype=dtype), "weight")
        self.bias = Param(np.zeros((out_channels,), dtype=dtype), "bias") if bias else None
        init.default_layer_init_(self.weight, self.bias, init.make_rng(rng))

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")

    def geometry(self, H: int, W: int) -> Geometry:
        return conv_geometry(H, W, self.kernel_size, self.stride, self.padding, self.dilation,
                             repr(self))

    def forward(self, x):
        self._check_input(x, 4, self.in_channels, f"(N, {self.in_channels}, H, W)",
                          self.weight.data)
        g = self.geometry(x.shape[2], x.shape[3])
        buf = pad_input(x, g)
        w2 = self.weight.data.reshape(self.out_channels, -1)     # (O, C*kh*kw)
        yw, _ = conv_lowered(buf, g, w2=w2)                      # (O, N, Ho*Wq)
        y = from_wide(yw, g, None if self.bias is None else self.bias.data)
        return y, (buf, g)

    def backward(self, dy, cache):
        buf, g = cache
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))
        dyw = to_wide(dy, g)                                     # (O, N, Ho*Wq)
        _, dw = conv_lowered(buf, g, dyw=dyw)                    # (O, C*kh*kw)
        self.weight.grad += dw.reshape(self.weight.grad.shape)
        w2 = self.weight.data.reshape(self.out_channels, -1)
        return conv_lowered_input_grad(dyw, g, w2, self.in_channels)


class ConvTranspose2d(Module):
    """Transposed convolution, ``torch.nn.ConvTranspose2d`` semantics without groups.

    ``y`` is the gradient of a ``Conv2d(out_channels -> in_channels)`` with the same kernel,
    stride, padding and dilation with respect to its input; output size
    ``Ho = (H - 1)*sh - 2*ph + dh*(kh - 1) + output_padding + 1``. Kernel 2 stride 2 (the mask
    head's 2x upsampling) gives non-overlapping 2x2 output blocks.

    Args:
        in_channels, out_channels: C and O.
        kernel_size, stride, padding, output_padding, dilation: int or ``(h, w)``;
            ``output_padding`` must be smaller than the stride or the dilation (torch's rule).
        bias, rng, dtype: as :class:`Conv2d` (default init is torch's: its fan_in is
            ``weight.shape[1]*kh*kw = O*kh*kw``).

    Parameters: ``weight (C, O, kh, kw)``, ``bias (O,)``.

    ``forward(x)``: x ``(N, C, H, W)`` -> ``(y (N, O, Ho, Wo), cache)``.

    Raises:
        ValueError: wrong rank or channel count (naming the layer and shapes), bad
            ``output_padding``.
        TypeError: input dtype differs from the parameters'.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, bias: bool = True, rng=None, dtype=np.float32):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.output_padding = _pair(output_padding, "output_padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(f"output_padding {self.output_padding} must be smaller than "
                                 f"stride {self.stride} or dilation {self.dilation}")
        kh, kw = self.kernel_size
        self.weight = Param(np.zeros((in_channels, out_channels, kh, kw), dtype=dtype), "weight")
        self.bias = Param(np.zeros((out_channels,), dtype=dtype), "bias") if bias else None
        init.default_layer_init_(self.weight, self.bias, init.make_rng(rng))

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")

    def geometry(self, H: int, W: int) -> Geometry:
        """Geometry of the equivalent Conv2d whose *output* is ``H x W``."""
        size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in zip(
            (H, W), self.stride, self.padding, self.dilation, self.kernel_size,
            self.output_padding, strict=True)]
        if min(size) < 1:
            raise ValueError(f"{self!r}: input of spatial size ({H}, {W}) gives an empty output "
                             f"{tuple(size)}")
        g = conv_geometry(size[0], size[1], self.kernel_size, self.stride, self.padding,
                          self.dilation, repr(self))
        assert (g.Ho, g.Wo) == (H, W), (g, H, W)
        return g

    def forward(self, x):
        self._check_input(x, 4, self.in_channels, f"(N, {self.in_channels}, H, W)",
                          self.weight.data)
        g = self.geometry(x.shape[2], x.shape[3])
        xw = to_wide(x, g)                                       # (C, N, H*Wq)
        w2 = self.weight.data.reshape(self.in_channels, -1)      # (C, O*kh*kw)
        bias = None if self.bias is None else self.bias.data
        y = conv_lowered_input_grad(xw, g, w2, self.out_channels, bias)  # (N, O, Ho, Wo)
        return y, (xw, g)

    def backward(self, dy, cache):
        xw, g = cache
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))
        w2 = self.weight.data.reshape(self.in_channels, -1)
        dxw, dw = conv_lowered(pad_input(dy, g), g, w2=w2, dyw=xw)  # (C, N, H*Wq), (C, O*kh*kw)
        self.weight.grad += dw.reshape(self.weight.grad.shape)
        return from_wide(dxw, g)                                 # (N, C, H, W)
