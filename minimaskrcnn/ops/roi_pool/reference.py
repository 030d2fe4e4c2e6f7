"""NumPy reference of RoIPool (Fast R-CNN, Girshick 2015; torchvision.ops.roi_pool): the spec.

Loops over RoIs, bins and the cells of each bin, vectorised over channels, transcribing
torchvision's CPU kernel: corners ``round(coord * spatial_scale)`` half away from zero, RoI size
``max(x2 - x1 + 1, 1)`` cells, bin ``p`` covering ``[floor(p * b), ceil((p + 1) * b))`` offset by
the RoI start and clipped to the map, max with ``-FLT_MAX`` as the start value and a strict ``>``
(the first maximum wins; NaN never wins); an empty bin gives 0 and argmax -1.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.ops._roi_common import pool_bin, quantized_span

LOWEST = np.float32(-np.finfo(np.float32).max)
"""torchvision starts every non-empty bin's max at ``-FLT_MAX`` (also for float64)."""


def pool_geometry(roi, spatial_scale, pooled_h, pooled_w):
    """``(n, start_h, bin_h, start_w, bin_w)`` of one RoI (bin sizes in the roi's dtype)."""
    n = int(roi[0])
    x1, y1, x2, y2 = (roi[k] * spatial_scale for k in (1, 2, 3, 4))
    start_w, width = quantized_span(x1, x2)
    start_h, height = quantized_span(y1, y2)
    # float(length) / float(pooled) in the roi's dtype (v * 0 + c keeps v's dtype).
    bin_h = (x1 * np.float32(0.0) + np.float32(height)) / np.float32(pooled_h)
    bin_w = (x1 * np.float32(0.0) + np.float32(width)) / np.float32(pooled_w)
    return n, start_h, bin_h, start_w, bin_w


def roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """Forward: ``(out (R, C, Ph, Pw), argmax (R, C, Ph, Pw) int64 flat index into H*W)``."""
    N, C, H, W = input.shape
    R = rois.shape[0]
    scale = input.dtype.type(spatial_scale)
    out = np.zeros((R, C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = np.full((R, C, pooled_h, pooled_w), -1, dtype=np.int64)
    for r in range(R):
        n, start_h, bin_h, start_w, bin_w = pool_geometry(rois[r], scale, pooled_h, pooled_w)
        for ph in range(pooled_h):
            h0, h1 = pool_bin(ph, bin_h, start_h, H)
            for pw in range(pooled_w):
                w0, w1 = pool_bin(pw, bin_w, start_w, W)
                if h1 <= h0 or w1 <= w0:
                    continue  # empty bin: 0, argmax -1
                best = np.full(C, LOWEST, dtype=input.dtype)
                best_i = np.full(C, -1, dtype=np.int64)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = input[n, :, h, w]
                        better = v > best
                        best = np.where(better, v, best)
                        best_i = np.where(better, h * W + w, best_i)
                out[r, :, ph, pw] = best
                argmax[r, :, ph, pw] = best_i
    return out, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape, deterministic=True):
    """Backward: each output cell's gradient goes to its argmax cell (nothing for -1)."""
    N, C, H, W = input_shape
    R = rois.shape[0]
    grad_input = np.zeros((N, C, H * W), dtype=grad_output.dtype)
    channels = np.arange(C)
    for r in range(R):
        n = int(rois[r, 0])
        for ph in range(grad_output.shape[2]):
            for pw in range(grad_output.shape[3]):
                a = argmax[r, :, ph, pw]
                hit = a >= 0
                np.add.at(grad_input[n], (channels[hit], a[hit]), grad_output[r, hit, ph, pw])
    return grad_input.reshape(N, C, H, W)
