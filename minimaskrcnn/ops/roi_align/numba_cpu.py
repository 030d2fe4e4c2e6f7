"""Numba CPU tier of RoIAlign (and RoIWarp): ``@njit(parallel=True, cache=True)``.

Forward: ``prange`` over RoIs; each RoI first tabulates its samples (four flat offsets into the
``H*W`` plane and four bilinear weights per sample, torchvision's ``pre_calc``), then runs over
its channels. Each output row ``out[r]`` has one writer, so there is no race.

Backward, deterministic by construction: ``prange`` over work items ``(n, channel block)``; the
item owns the planes ``grad_input[n, c0:c1]`` and scans the RoIs of image ``n`` in increasing
RoI index (tabulating each RoI's samples once per item), scattering into its own planes only.
Every cell of ``grad_input`` therefore has exactly one writer and receives its contributions in
the same order (RoI, bin, sample) whatever the number of threads or blocks: the result is
bitwise reproducible and needs no atomics.

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


@njit(cache=True, parallel=True)
def _forward(flat, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max,
             H, W, out, argmax):
    """flat: (N, C, H*W); out: (R, C, Ph*Pw); argmax: (R, C, Ph*Pw) int64 (used if use_max)."""
    R = rois.shape[0]
    C = flat.shape[1]
    nbins = pooled_h * pooled_w
    for r in prange(R):
        n = int(rois[r, 0])
        offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                           sampling_ratio, aligned, quantize)
        cnt = out.dtype.type(count)
        for c in range(C):
            plane = flat[n, c]
            for b in range(nbins):
                s0 = b * G
                if use_max:
                    best = out.dtype.type(0)
                    best_k = -1
                    for k in range(G):
                        s = s0 + k
                        val = (wts[s, 0] * plane[offs[s, 0]] + wts[s, 1] * plane[offs[s, 1]]
                               + wts[s, 2] * plane[offs[s, 2]] + wts[s, 3] * plane[offs[s, 3]])
                        if k == 0 or val > best:
                            best = val
                            best_k = k
                    out[r, c, b] = best
                    argmax[r, c, b] = best_k
                else:
                    acc = out.dtype.type(0)
                    for s in range(s0, s0 + G):
                        acc += (wts[s, 0] * plane[offs[s, 0]] + wts[s, 1] * plane[offs[s, 1]]
                                + wts[s, 2] * plane[offs[s, 2]] + wts[s, 3] * plane[offs[s, 3]])
                    out[r, c, b] = acc / cnt


@njit(cache=True, parallel=True)
def _backward(gout, rois, argmax, order, starts, scale, pooled_h, pooled_w, sampling_ratio,
              aligned, quantize, use_max, H, W, nblocks, gin):
    """gout: (R, C, Ph*Pw); gin: (N, C, H*W) zeros, written plane-block by plane-block."""
    N = gin.shape[0]
    C = gin.shape[1]
    nbins = pooled_h * pooled_w
    block = (C + nblocks - 1) // nblocks
    for item in prange(N * nblocks):
        n = item // nblocks
        c0 = (item % nblocks) * block
        c1 = min(c0 + block, C)
        for j in range(starts[n], starts[n + 1]):
            r = order[j]
            offs, wts, G, count = _roi_samples(rois, r, scale, H, W, pooled_h, pooled_w,
                                               sampling_ratio, aligned, quantize)
            cnt = gin.dtype.type(count)
            for c in range(c0, c1):
                plane = gin[n, c]
                for b in range(nbins):
                    g = gout[r, c, b]
                    s0 = b * G
                    if use_max:
                        k = argmax[r, c, b]
                        if k < 0:
                            continue
                        s = s0 + k
                        for q in range(4):
                            plane[offs[s, q]] += g * wts[s, q]
                    else:
                        for s in range(s0, s0 + G):
                            for q in range(4):
                                plane[offs[s, q]] += g * wts[s, q] / cnt


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
                   quantize, use_max):
    """Same contract as ``reference.sample_forward``: ``(out, argmax or None)``."""
    N, C, H, W = input.shape
    R = rois.shape[0]
    dt = input.dtype.type
    out = np.zeros((R, C, pooled_h * pooled_w), dtype=input.dtype)
    argmax = np.full((R, C, pooled_h * pooled_w), -1, dtype=np.int64)
    if R and C and H and W:
        _forward(input.reshape(N, C, H * W), rois, dt(spatial_scale), pooled_h, pooled_w,
                 sampling_ratio, aligned, quantize, use_max, H, W, out, argmax)
    out = out.reshape(R, C, pooled_h, pooled_w)
    return out, (argmax.reshape(R, C, pooled_h, pooled_w) if use_max else None)


def sample_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, aligned, quantize, use_max):
    """Same contract as ``reference.sample_backward``; deterministic (see module docstring)."""
    N, C, H, W = input_shape
    R = rois.shape[0]
    dt = grad_output.dtype.type
    gin = np.zeros((N, C, H * W), dtype=grad_output.dtype)
    if R and C and H and W:
        order, starts = rois_by_image(rois[:, 0], N)
        nblocks = min(C, max(1, -(-4 * numba.get_num_threads() // N)))
        gout = np.ascontiguousarray(grad_output).reshape(R, C, pooled_h * pooled_w)
        am = (np.ascontiguousarray(argmax).reshape(R, C, pooled_h * pooled_w) if use_max
              else np.zeros((1, 1, 1), dtype=np.int64))
        _backward(gout, rois, am, order, starts, dt(spatial_scale), pooled_h, pooled_w,
                  sampling_ratio, aligned, quantize, use_max, H, W, nblocks, gin)
    return gin.reshape(N, C, H, W)


def roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    return sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          aligned, False, False)[0]


def roi_align_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                       sampling_ratio, aligned, deterministic=True):
    return sample_backward(grad_output, rois, None, input_shape, pooled_h, pooled_w,
                           spatial_scale, sampling_ratio, aligned, False, False)
