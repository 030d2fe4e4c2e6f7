"""Numba CPU tier of RoIAlign (and RoIWarp): ``@njit(parallel=True, cache=True)``.

Both passes work channels-last, so that the four neighbours of a sample are four contiguous
``C``-vectors and the innermost loop, over channels, vectorises (SIMD).

Forward: the input is copied once to ``(N, H*W, C)``. ``prange`` over RoIs; each RoI first
tabulates its samples (four flat offsets into the ``H*W`` plane and four bilinear weights per
sample, torchvision's ``pre_calc``), then, bin by bin and sample by sample, accumulates all
channels at once into a ``(Ph*Pw, C)`` scratch that is written to ``out[r]`` at the end. Each
output row has one writer, so there is no race; each element sums its samples in the
reference's order with the reference's expression (identical results).

Backward, deterministic by construction: ``prange`` over work items ``(n, channel block)``.
The item owns ``grad_input[n, c0:c1]`` and accumulates it in a private channels-last slab
``(H*W, c1 - c0)``: it scans the RoIs of image ``n`` in increasing RoI index (tabulating each
RoI's samples once per item, copying its gradient rows channels-last), scatters into the slab,
and finally copies the slab into ``grad_input``. Every cell therefore has exactly one writer
and receives its contributions in the same order (RoI, bin, sample, neighbour) as the
reference, whatever the number of threads or blocks: the result is bitwise reproducible, equal
to the reference's, and needs no atomics.

Inner loops index arrays with full subscripts rather than taking row views: creating a view of
a shared array updates its reference count atomically, and two threads doing that per sample
were slower than one.

Arithmetic in the input's dtype (float32 stays float32). Same semantics as ``reference.py``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from minimaskrcnn.ops._roi_common import jit_helpers, rois_by_image

_h = jit_helpers(njit(cache=True))
sampling_axis = _h["sampling_axis"]
sample_point = _h["sample_point"]
interp_axis = _h["interp_axis"]
quantized_span = _h["quantized_span"]


@njit(cache=True)
def _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w, sampling_ratio, aligned, quantize):
    """Tabulate RoI ``r``'s samples: ``(offsets (S, 4) int64, weights (S, 4), G, count)``.

    Samples are stored bin after bin (bin ``b = ph * Pw + pw`` owns rows ``b*G .. b*G+G-1``).
    A sample outside the map gets offsets 0 and weights 0 (it contributes nothing).
    """
    x1 = rois[r, 1] * scale
    y1 = rois[r, 2] * scale
    x2 = rois[r, 3] * scale
    y2 = rois[r, 4] * scale
    if quantize:
        xs, wq = quantized_span(x1, x2)
        ys, hq = quantized_span(y1, y2)
        x1 = rois.dtype.type(xs)
        x2 = rois.dtype.type(xs + wq)
        y1 = rois.dtype.type(ys)
        y2 = rois.dtype.type(ys + hq)
    start_h, bin_h, grid_h = sampling_axis(y1, y2, pooled_h, sampling_ratio, aligned)
    start_w, bin_w, grid_w = sampling_axis(x1, x2, pooled_w, sampling_ratio, aligned)
    grid_h = max(grid_h, 0)
    grid_w = max(grid_w, 0)
    G = grid_h * grid_w
    count = max(G, 1)
    # The weights factor per axis: interpolate each row and each column coordinate once.
    iy_tab = np.zeros((pooled_h * grid_h, 3), dtype=np.int64)  # valid, low, high
    wy_tab = np.zeros((pooled_h * grid_h, 2), dtype=rois.dtype)  # w_low, w_high
    for ph in range(pooled_h):
        for iy in range(grid_h):
            t = ph * grid_h + iy
            v, lo, hi, w_lo, w_hi = interp_axis(sample_point(start_h, bin_h, ph, iy, grid_h), H)
            iy_tab[t, 0], iy_tab[t, 1], iy_tab[t, 2] = v, lo, hi
            wy_tab[t, 0], wy_tab[t, 1] = w_lo, w_hi
    ix_tab = np.zeros((pooled_w * grid_w, 3), dtype=np.int64)
    wx_tab = np.zeros((pooled_w * grid_w, 2), dtype=rois.dtype)
    for pw in range(pooled_w):
        for ix in range(grid_w):
            t = pw * grid_w + ix
            v, lo, hi, w_lo, w_hi = interp_axis(sample_point(start_w, bin_w, pw, ix, grid_w), W)
            ix_tab[t, 0], ix_tab[t, 1], ix_tab[t, 2] = v, lo, hi
            wx_tab[t, 0], wx_tab[t, 1] = w_lo, w_hi
    S = pooled_h * pooled_w * G
    offs = np.zeros((S, 4), dtype=np.int64)
    wts = np.zeros((S, 4), dtype=rois.dtype)
    s = 0
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            for iy in range(grid_h):
                ty = ph * grid_h + iy
                y_lo, y_hi = iy_tab[ty, 1], iy_tab[ty, 2]
                hy, ly = wy_tab[ty, 0], wy_tab[ty, 1]
                for ix in range(grid_w):
                    tx = pw * grid_w + ix
                    if iy_tab[ty, 0] and ix_tab[tx, 0]:
                        x_lo, x_hi = ix_tab[tx, 1], ix_tab[tx, 2]
                        hx, lx = wx_tab[tx, 0], wx_tab[tx, 1]
                        offs[s, 0] = y_lo * W + x_lo
                        offs[s, 1] = y_lo * W + x_hi
                        offs[s, 2] = y_hi * W + x_lo
                        offs[s, 3] = y_hi * W + x_hi
                        wts[s, 0] = hy * hx
                        wts[s, 1] = hy * lx
                        wts[s, 2] = ly * hx
                        wts[s, 3] = ly * lx
                    s += 1
    return offs, wts, G, count


@njit(cache=True)
def _forward_roi(x_cl, rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize,
                 use_max, H, W, out, argmax):
    """All bins and channels of RoI ``r``; writes ``out[r]`` (and ``argmax[r]``), (C, Ph*Pw).

    Inner loops index arrays directly (no views: a view of a shared array costs an atomic
    reference-count update, which the two threads would fight over).
    """
    C = x_cl.shape[2]
    nbins = pooled_h * pooled_w
    n = int(rois[r, 0])
    offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                       sampling_ratio, aligned, quantize)
    cnt = out.dtype.type(count)
    acc = np.zeros((nbins, C), dtype=out.dtype)  # channels-last scratch: SIMD over c
    best_k = np.full((nbins, C) if use_max else (1, 1), -1, dtype=np.int64)
    for b in range(nbins):
        for k in range(G):
            s = b * G + k
            w0, w1, w2, w3 = wts[s, 0], wts[s, 1], wts[s, 2], wts[s, 3]
            p0, p1, p2, p3 = offs[s, 0], offs[s, 1], offs[s, 2], offs[s, 3]
            if use_max:
                for c in range(C):
                    val = (w0 * x_cl[n, p0, c] + w1 * x_cl[n, p1, c] + w2 * x_cl[n, p2, c]
                           + w3 * x_cl[n, p3, c])
                    if k == 0 or val > acc[b, c]:
                        acc[b, c] = val
                        best_k[b, c] = k
            else:
                for c in range(C):
                    acc[b, c] += (w0 * x_cl[n, p0, c] + w1 * x_cl[n, p1, c]
                                  + w2 * x_cl[n, p2, c] + w3 * x_cl[n, p3, c])
    if not use_max:
        for b in range(nbins):
            for c in range(C):  # vectorised division
                acc[b, c] = acc[b, c] / cnt
    for c in range(C):
        for b in range(nbins):
            out[r, c, b] = acc[b, c]
            if use_max:
                argmax[r, c, b] = best_k[b, c]


@njit(cache=True, parallel=True)
def _forward(x_cl, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max,
             H, W, out, argmax):
    """x_cl: (N, H*W, C) channels-last input; out, argmax: (R, C, Ph*Pw) (argmax if use_max)."""
    for r in prange(rois.shape[0]):
        _forward_roi(x_cl, rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize,
                     use_max, H, W, out, argmax)


@njit(cache=True)
def _backward_item(gout, rois, argmax, order, starts, n, c0, c1, scale, pooled_h, pooled_w,
                   sampling_ratio, aligned, quantize, use_max, H, W, gin):
    """Channels ``c0..c1-1`` of image ``n``: scan its RoIs in order, scatter, write ``gin``.

    The item accumulates into a private channels-last slab ``(H*W, c1 - c0)`` (SIMD over
    channels) and copies it into ``gin[n, c0:c1]`` at the end; each RoI's gradient rows are
    first copied channels-last into a small buffer.
    """
    nbins = pooled_h * pooled_w
    cb = c1 - c0
    slab = np.zeros((H * W, cb), dtype=gin.dtype)
    gbuf = np.empty((nbins, cb), dtype=gin.dtype)
    kbuf = np.empty((nbins, cb) if use_max else (1, 1), dtype=np.int64)
    for j in range(starts[n], starts[n + 1]):
        r = order[j]
        offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                           sampling_ratio, aligned, quantize)
        cnt = gin.dtype.type(count)
        for cc in range(cb):
            for b in range(nbins):
                gbuf[b, cc] = gout[r, c0 + cc, b]
                if use_max:
                    kbuf[b, cc] = argmax[r, c0 + cc, b]
        for b in range(nbins):
            if use_max:
                for cc in range(cb):
                    k = kbuf[b, cc]
                    if k >= 0:
                        s = b * G + k
                        for q in range(4):
                            slab[offs[s, q], cc] += gbuf[b, cc] * wts[s, q]
                continue
            for s in range(b * G, b * G + G):
                for q in range(4):
                    w = wts[s, q]
                    p = offs[s, q]
                    for cc in range(cb):
                        slab[p, cc] += gbuf[b, cc] * w / cnt
    for cc in range(cb):
        for p in range(H * W):
            gin[n, c0 + cc, p] = slab[p, cc]


@njit(cache=True, parallel=True)
def _backward(gout, rois, argmax, order, starts, scale, pooled_h, pooled_w, sampling_ratio,
              aligned, quantize, use_max, H, W, nblocks, gin):
    """gout, argmax: (R, C, Ph*Pw); gin: (N, C, H*W), one writer per (image, channel block)."""
    N = gin.shape[0]
    C = gin.shape[1]
    block = (C + nblocks - 1) // nblocks
    for item in prange(N * nblocks):
        n = item // nblocks
        c0 = min((item % nblocks) * block, C)
        _backward_item(gout, rois, argmax, order, starts, n, c0, min(c0 + block, C), scale,
                       pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max, H, W, gin)


def swap_last_axes(x):
    """``(A, M, K) -> (A, K, M)`` contiguous copy (channels-first <-> channels-last).

    NumPy's strided copy: 4-5x faster here than a tiled ``prange`` loop.
    """
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, *,
                   aligned, quantize, use_max):
    """Same contract as ``reference.sample_forward``: ``(out, argmax or None)``.

    The input is transposed once to channels-last ``(N, H*W, C)`` so that the inner loop over
    channels is contiguous and vectorises; each output element still sums its samples in the
    reference's order with the same expression (identical results).
    """
    N, C, H, W = input.shape
    R = rois.shape[0]
    nbins = pooled_h * pooled_w
    out = np.zeros((R, C, nbins), dtype=input.dtype)
    argmax = np.full((R, C, nbins) if use_max else (1, 1, 1), -1, dtype=np.int64)
    if R and C and H and W:
        x_cl = swap_last_axes(input.reshape(N, C, H * W))
        _forward(x_cl, rois, input.dtype.type(spatial_scale), pooled_h, pooled_w,
                 sampling_ratio, aligned, quantize, use_max, H, W, out, argmax)
    out = out.reshape(R, C, pooled_h, pooled_w)
    return out, (argmax.reshape(R, C, pooled_h, pooled_w) if use_max else None)


def sample_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, *, aligned, quantize, use_max, argmax=None,
                    deterministic=False):
    """Same contract as ``reference.sample_backward``; deterministic (see module docstring)."""
    N, C, H, W = input_shape
    R = rois.shape[0]
    dt = grad_output.dtype.type
    nbins = pooled_h * pooled_w
    gin = np.zeros((N, C, H * W), dtype=grad_output.dtype)
    if R and C and H and W:
        order, starts = rois_by_image(rois[:, 0], N)
        nblocks = min(C, max(1, -(-2 * numba.get_num_threads() // N)))
        gout = np.ascontiguousarray(grad_output).reshape(R, C, nbins)
        am = (np.ascontiguousarray(argmax).reshape(R, C, nbins) if use_max
              else np.zeros((1, 1, 1), dtype=np.int64))
        _backward(gout, rois, am, order, starts, dt(spatial_scale), pooled_h, pooled_w,
                  sampling_ratio, aligned, quantize, use_max, H, W, nblocks, gin)
    return gin.reshape(N, C, H, W)
