"""Numba CPU tier of RoIPool: ``@njit(parallel=True, cache=True)``, same semantics as reference.

Forward: ``prange`` over RoIs (each output row has one writer). Backward, deterministic:
``prange`` over the planes ``(n, c)`` of ``grad_input``; each plane's thread scans the RoIs of
image ``n`` in increasing index and adds their gradients at the argmax cells, so every cell has
one writer and a fixed summation order whatever the thread count (no atomics, bitwise
reproducible).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minimaskrcnn.ops._roi_common import jit_helpers, rois_by_image

_h = jit_helpers(njit(cache=True))
quantized_span = _h["quantized_span"]
pool_bin = _h["pool_bin"]

LOWEST = np.float32(-np.finfo(np.float32).max)


@njit(cache=True, parallel=True)
def _forward(flat, rois, scale, pooled_h, pooled_w, H, W, out, argmax):
    """flat (N, C, H*W); out, argmax (R, C, Ph, Pw)."""
    R = rois.shape[0]
    C = flat.shape[1]
    for r in prange(R):
        n = int(rois[r, 0])
        x1 = rois[r, 1] * scale
        start_w, width = quantized_span(x1, rois[r, 3] * scale)
        start_h, height = quantized_span(rois[r, 2] * scale, rois[r, 4] * scale)
        bin_h = rois.dtype.type(height) / rois.dtype.type(pooled_h)
        bin_w = rois.dtype.type(width) / rois.dtype.type(pooled_w)
        for ph in range(pooled_h):
            h0, h1 = pool_bin(ph, bin_h, start_h, H)
            for pw in range(pooled_w):
                w0, w1 = pool_bin(pw, bin_w, start_w, W)
                if h1 <= h0 or w1 <= w0:
                    continue
                for c in range(C):  # full subscripts: no per-channel views (atomic refcounts)
                    best = out.dtype.type(LOWEST)
                    best_i = -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = flat[n, c, h * W + w]
                            if v > best:
                                best = v
                                best_i = h * W + w
                    out[r, c, ph, pw] = best
                    argmax[r, c, ph, pw] = best_i


@njit(cache=True, parallel=True)
def _backward(gout, argmax, order, starts, gin):
    """gout, argmax (R, C, Ph*Pw); gin (N, C, H*W) zeros."""
    N = gin.shape[0]
    C = gin.shape[1]
    nbins = gout.shape[2]
    for item in prange(N * C):
        n = item // C
        c = item % C
        plane = gin[n, c]
        for j in range(starts[n], starts[n + 1]):
            r = order[j]
            for b in range(nbins):
                a = argmax[r, c, b]
                if a >= 0:
                    plane[a] += gout[r, c, b]


def roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    N, C, H, W = input.shape
    R = rois.shape[0]
    out = np.zeros((R, C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = np.full((R, C, pooled_h, pooled_w), -1, dtype=np.int64)
    if R and C and H and W:
        _forward(input.reshape(N, C, H * W), rois, input.dtype.type(spatial_scale),
                 pooled_h, pooled_w, H, W, out, argmax)
    return out, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape, deterministic=True):
    N, C, H, W = input_shape
    R = rois.shape[0]
    gin = np.zeros((N, C, H * W), dtype=grad_output.dtype)
    if R and C and H and W:
        order, starts = rois_by_image(rois[:, 0], N)
        nb = grad_output.shape[2] * grad_output.shape[3]
        _backward(np.ascontiguousarray(grad_output).reshape(R, C, nb),
                  np.ascontiguousarray(argmax, dtype=np.int64).reshape(R, C, nb), order, starts, gin)
    return gin.reshape(N, C, H, W)
