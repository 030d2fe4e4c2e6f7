"""Numba CPU tier of RoIAlign (and RoIWarp): ``@njit(parallel=True, cache=True)``.

Both passes work channels-last: the input (or ``grad_input``) is held as ``(N, H*W, C)`` so
that the four neighbours of a sample are four contiguous ``C``-vectors and the innermost loop,
over channels, vectorises. The transposes in and out are parallel copies.

Forward: ``prange`` over RoIs; each RoI first tabulates its samples (four flat offsets into the
``H*W`` plane and four bilinear weights per sample, torchvision's ``pre_calc``), then, bin by
bin and sample by sample, accumulates all channels at once. Each output row ``out[r]`` has one
writer, so there is no race; each element sums its samples in the reference's order.

Backward, deterministic by construction: ``prange`` over work items ``(n, channel block)``; the
item owns ``grad_input[n, :, c0:c1]`` (channels ``c0..c1-1`` of every cell of image ``n``) and
scans the RoIs of image ``n`` in increasing RoI index (tabulating each RoI's samples once per
item), scattering into its own channels only. Every cell of ``grad_input`` therefore has
exactly one writer and receives its contributions in the same order (RoI, bin, sample,
neighbour) as the reference, whatever the number of threads or blocks: the result is bitwise
reproducible and needs no atomics.

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
    S = pooled_h * pooled_w * G
    offs = np.zeros((S, 4), dtype=np.int64)
    wts = np.zeros((S, 4), dtype=rois.dtype)
    s = 0
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            for iy in range(grid_h):
                y = sample_point(start_h, bin_h, ph, iy, grid_h)
                vy, y_lo, y_hi, hy, ly = interp_axis(y, H)
                for ix in range(grid_w):
                    x = sample_point(start_w, bin_w, pw, ix, grid_w)
                    vx, x_lo, x_hi, hx, lx = interp_axis(x, W)
                    if vy and vx:
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
    """All bins and channels of RoI ``r`` (a plain function: LLVM vectorises it better than
    the same code inlined in a ``prange`` body)."""
    C = x_cl.shape[2]
    n = int(rois[r, 0])
    offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                       sampling_ratio, aligned, quantize)
    cnt = out.dtype.type(count)
    for b in range(pooled_h * pooled_w):
        acc = out[r, b]  # (C,) zeros; the loops over c vectorise
        for k in range(G):
            s = b * G + k
            w0, w1, w2, w3 = wts[s, 0], wts[s, 1], wts[s, 2], wts[s, 3]
            v0, v1 = x_cl[n, offs[s, 0]], x_cl[n, offs[s, 1]]
            v2, v3 = x_cl[n, offs[s, 2]], x_cl[n, offs[s, 3]]
            if use_max:
                am = argmax[r, b]
                for c in range(C):
                    val = w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c]
                    if k == 0 or val > acc[c]:
                        acc[c] = val
                        am[c] = k
            else:
                for c in range(C):
                    acc[c] += w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c]
        if not use_max:
            for c in range(C):
                acc[c] = acc[c] / cnt


@njit(cache=True, parallel=True)
def _forward(x_cl, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max,
             H, W, out, argmax):
    """x_cl: (N, H*W, C) channels-last input; out, argmax: (R, Ph*Pw, C) (argmax if use_max)."""
    for r in prange(rois.shape[0]):
        _forward_roi(x_cl, rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize,
                     use_max, H, W, out, argmax)


@njit(cache=True)
def _backward_item(gout_cl, rois, argmax_cl, order, starts, n, c0, c1, scale, pooled_h,
                   pooled_w, sampling_ratio, aligned, quantize, use_max, H, W, gin_cl):
    """Channels ``c0..c1-1`` of image ``n``: scan its RoIs in order, scatter into gin_cl."""
    for j in range(starts[n], starts[n + 1]):
        r = order[j]
        offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                           sampling_ratio, aligned, quantize)
        cnt = gin_cl.dtype.type(count)
        for b in range(pooled_h * pooled_w):
            g = gout_cl[r, b]
            if use_max:
                am = argmax_cl[r, b]
                for c in range(c0, c1):
                    k = am[c]
                    if k >= 0:
                        s = b * G + k
                        for q in range(4):
                            gin_cl[n, offs[s, q], c] += g[c] * wts[s, q]
                continue
            for s in range(b * G, b * G + G):
                for q in range(4):
                    w = wts[s, q]
                    cell = gin_cl[n, offs[s, q]]
                    for c in range(c0, c1):
                        cell[c] += g[c] * w / cnt


@njit(cache=True, parallel=True)
def _backward(gout_cl, rois, argmax_cl, order, starts, scale, pooled_h, pooled_w,
              sampling_ratio, aligned, quantize, use_max, H, W, nblocks, gin_cl):
    """gout_cl, argmax_cl: (R, Ph*Pw, C); gin_cl: (N, H*W, C) zeros, one writer per cell."""
    N = gin_cl.shape[0]
    C = gin_cl.shape[2]
    block = (C + nblocks - 1) // nblocks
    for item in prange(N * nblocks):
        n = item // nblocks
        c0 = (item % nblocks) * block
        _backward_item(gout_cl, rois, argmax_cl, order, starts, n, c0, min(c0 + block, C),
                       scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max,
                       H, W, gin_cl)


@njit(cache=True, parallel=True)
def swap_last_axes(x):
    """``(A, M, K) -> (A, K, M)`` copy in 32 x 32 tiles (cache-friendly), parallel over tiles.

    Converts channels-first ``(N, C, H*W)`` to channels-last ``(N, H*W, C)`` and back.
    """
    A, M, K = x.shape
    y = np.empty((A, K, M), dtype=x.dtype)
    T = 32
    tm = (M + T - 1) // T
    tk = (K + T - 1) // T
    for t in prange(A * tm * tk):
        a = t // (tm * tk)
        i0 = ((t // tk) % tm) * T
        j0 = (t % tk) * T
        for i in range(i0, min(i0 + T, M)):
            for j in range(j0, min(j0 + T, K)):
                y[a, j, i] = x[a, i, j]
    return y


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
                   quantize, use_max):
    """Same contract as ``reference.sample_forward``: ``(out, argmax or None)``.

    Runs channels-last (the input is transposed to ``(N, H*W, C)`` once) so that the inner
    loop over channels is contiguous and vectorises; each output element still sums its
    samples in the reference's order.
    """
    N, C, H, W = input.shape
    R = rois.shape[0]
    nbins = pooled_h * pooled_w
    out = np.zeros((R, nbins, C), dtype=input.dtype)
    argmax = np.full((R, nbins, C) if use_max else (1, 1, 1), -1, dtype=np.int64)
    if R and C and H and W:
        x_cl = swap_last_axes(input.reshape(N, C, H * W))
        _forward(x_cl, rois, input.dtype.type(spatial_scale), pooled_h, pooled_w,
                 sampling_ratio, aligned, quantize, use_max, H, W, out, argmax)
    out = swap_last_axes(out).reshape(R, C, pooled_h, pooled_w)
    if use_max:
        return out, swap_last_axes(argmax).reshape(R, C, pooled_h, pooled_w)
    return out, None


def sample_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, aligned, quantize, use_max):
    """Same contract as ``reference.sample_backward``; deterministic (see module docstring)."""
    N, C, H, W = input_shape
    R = rois.shape[0]
    dt = grad_output.dtype.type
    nbins = pooled_h * pooled_w
    gin_cl = np.zeros((N, H * W, C), dtype=grad_output.dtype)
    if R and C and H and W:
        order, starts = rois_by_image(rois[:, 0], N)
        nblocks = min(C, max(1, -(-2 * numba.get_num_threads() // N)))
        gout_cl = swap_last_axes(np.ascontiguousarray(grad_output).reshape(R, C, nbins))
        am = (swap_last_axes(np.ascontiguousarray(argmax).reshape(R, C, nbins)) if use_max
              else np.zeros((1, 1, 1), dtype=np.int64))
        _backward(gout_cl, rois, am, order, starts, dt(spatial_scale), pooled_h, pooled_w,
                  sampling_ratio, aligned, quantize, use_max, H, W, nblocks, gin_cl)
    return swap_last_axes(gin_cl).reshape(N, C, H, W)


def roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    return sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          aligned, False, False)[0]


def roi_align_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                       sampling_ratio, aligned, deterministic=True):
    return sample_backward(grad_output, rois, None, input_shape, pooled_h, pooled_w,
                           spatial_scale, sampling_ratio, aligned, False, False)
