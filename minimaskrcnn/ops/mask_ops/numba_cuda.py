"""Numba CUDA tier of the mask-head ops: one thread per output element, grid-stride loops.

- targets: one thread per ``(r, ph, pw)`` bin, looping over its sampling grid;
- loss: one thread per pixel ``(r, i, j)``, writing that pixel's gradient (all K channels) and its
  loss term into a float64 per-pixel array, summed afterwards in a fixed order (deterministic, no
  atomics);
- paste: one thread per image pixel ``(d, y, x)`` (zero outside the box).

The RoIAlign sampling helpers of :mod:`minimaskrcnn.ops._roi_common` (compiled as device
functions in :mod:`minimaskrcnn.ops._cuda_common`, which also holds ``bilinear_interpolate``)
and :func:`.reference.linear_source` are the same source as the other tiers'. NumPy inputs are
copied to the device and results back; CuPy inputs stay on the device (the host helpers of
:mod:`minimaskrcnn.ops._cuda_common`). No early returns, no warp intrinsics; runs on the Numba
simulator with ``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from minimaskrcnn.ops._cuda_common import (
    bilinear_interpolate,
    device_in,
    device_out,
    finish,
    interp_axis,
    launch_1d,
    launch_stream,
    sample_point,
    sampling_axis,
)
from minimaskrcnn.ops.mask_ops.reference import linear_source as _linear_source_py

linear_source = cuda.jit(device=True)(_linear_source_py)


# --------------------------------------------------------------------------------------------
# Mask targets
# --------------------------------------------------------------------------------------------


@cuda.jit
def _project_kernel(gt_masks, boxes, matched_idxs, M, out):
    H = gt_masks.shape[1]
    W = gt_masks.shape[2]
    zero = boxes[0, 0] * np.float32(0)  # 0 in the boxes' dtype (no int literal: no promotion)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, boxes.shape[0] * M * M, stride):
        r = idx // (M * M)
        ph = (idx // M) % M
        pw = idx % M
        mask = gt_masks[matched_idxs[r]]
        start_h, bin_h, grid_h = sampling_axis(boxes[r, 1], boxes[r, 3], M, 0, False)
        start_w, bin_w, grid_w = sampling_axis(boxes[r, 0], boxes[r, 2], M, 0, False)
        acc = zero
        for iy in range(grid_h):
            y = sample_point(start_h, bin_h, ph, iy, grid_h)
            vy, y_lo, y_hi, hy, ly = interp_axis(y, H)
            for ix in range(grid_w):
                x = sample_point(start_w, bin_w, pw, ix, grid_w)
                vx, x_lo, x_hi, hx, lx = interp_axis(x, W)
                if vy and vx:
                    acc += bilinear_interpolate(mask, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx)
        out[r, ph, pw] = acc / (zero + np.float32(max(grid_h * grid_w, 1)))


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M):
    """``(G, H, W)``, ``(R, 4)``, ``(R,)`` -> ``(R, M, M)`` in boxes' dtype."""
    R = boxes.shape[0]
    d_out, out = device_out((R, M, M), boxes.dtype, boxes, zero=True)
    blocks, threads = launch_1d(R * M * M)
    _project_kernel[blocks, threads, launch_stream(boxes)](
        device_in(gt_masks), device_in(boxes), device_in(matched_idxs), M, d_out)
    return finish(d_out, out)


# --------------------------------------------------------------------------------------------
# Mask loss
# --------------------------------------------------------------------------------------------


@cuda.jit
def _loss_kernel(logits, labels, targets, softmax, pixel_loss, grad):
    R, K, M, _ = logits.shape
    zero = logits[0, 0, 0, 0] * np.float32(0)  # 0 in the logits' dtype
    one = zero + np.float32(1)
    n = zero + np.float32(R * M * M)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, R * M * M, stride):
        r = idx // (M * M)
        i = (idx // M) % M
        j = idx % M
        c = labels[r] - 1
        x = logits[r, c, i, j]
        t = targets[r, i, j]
        if softmax:
            shift = zero  # the background logit
            for k in range(K):
                shift = max(shift, logits[r, k, i, j])
            z = math.exp(-shift)
            for k in range(K):
                z += math.exp(logits[r, k, i, j] - shift)
            pixel_loss[idx] = shift + math.log(z) - t * x
            for k in range(K):
                grad[r, k, i, j] = math.exp(logits[r, k, i, j] - shift) / z / n
            grad[r, c, i, j] -= t / n
        else:
            e = math.exp(-abs(x))
            pixel_loss[idx] = max(x, zero) - x * t + math.log1p(e)
            s = one / (one + e) if x >= zero else e / (one + e)
            grad[r, c, i, j] = (s - t) / n


def mask_loss(mask_logits, labels, mask_targets, mode):
    """``(R, K, M, M)``, ``(R,)``, ``(R, M, M)`` -> ``(loss float, grad (R, K, M, M))``."""
    R, K, M, _ = mask_logits.shape
    d_grad, grad = device_out(mask_logits.shape, mask_logits.dtype, mask_logits, zero=True)
    d_pixel, pixel = device_out(R * M * M, np.float64, mask_logits, zero=True)
    blocks, threads = launch_1d(R * M * M)
    _loss_kernel[blocks, threads, launch_stream(mask_logits)](
        device_in(mask_logits), device_in(labels), device_in(mask_targets), mode == "softmax",
        d_pixel, d_grad)
    # the per-pixel terms summed by NumPy, or by CuPy on the device (then one scalar is read
    # back: the host synchronisation of the loss value)
    pixel = finish(d_pixel, pixel)
    return float(pixel.sum() / (R * M * M)), finish(d_grad, grad)


# --------------------------------------------------------------------------------------------
# Pasting
# --------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def padded_value(mask, d, padding, y, x):
    """Cell ``(y, x)`` of mask ``d`` zero-padded by ``padding`` on every side."""
    yy = y - padding
    xx = x - padding
    if yy < 0 or xx < 0 or yy >= mask.shape[1] or xx >= mask.shape[2]:
        return mask[d, 0, 0] * np.float32(0)
    return mask[d, yy, xx]


@cuda.jit
def _paste_kernel(masks, int_boxes, padding, out):
    D, Mh, Mw = masks.shape
    H = out.shape[1]
    W = out.shape[2]
    zero = masks[0, 0, 0] * np.float32(0)  # 0 in the masks' dtype
    Ph = Mh + 2 * padding
    Pw = Mw + 2 * padding
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, D * H * W, stride):
        d = idx // (H * W)
        y = (idx // W) % H
        x = idx % W
        x0, y0, x1, y1 = int_boxes[d, 0], int_boxes[d, 1], int_boxes[d, 2], int_boxes[d, 3]
        value = zero
        if y >= max(y0, 0) and y < min(y1 + 1, H) and x >= max(x0, 0) and x < min(x1 + 1, W):
            w = max(x1 - x0 + 1, 1)
            h = max(y1 - y0 + 1, 1)
            ya, yb, wya, wyb = linear_source(y - y0, (zero + np.float32(Ph)) / (zero + np.float32(h)), Ph)
            xa, xb, wxa, wxb = linear_source(x - x0, (zero + np.float32(Pw)) / (zero + np.float32(w)), Pw)
            top = (padded_value(masks, d, padding, ya, xa) * wxa
                   + padded_value(masks, d, padding, ya, xb) * wxb)
            bottom = (padded_value(masks, d, padding, yb, xa) * wxa
                      + padded_value(masks, d, padding, yb, xb) * wxb)
            value = top * wya + bottom * wyb
        out[d, y, x] = value


def paste_masks_in_image(masks, int_boxes, H, W, padding):
    """``(D, M, M)``, ``(D, 4)`` int64 expanded boxes -> ``(D, H, W)`` in masks' dtype."""
    D = masks.shape[0]
    d_out, out = device_out((D, H, W), masks.dtype, masks, zero=True)
    blocks, threads = launch_1d(D * H * W)
    _paste_kernel[blocks, threads, launch_stream(masks)](device_in(masks), device_in(int_boxes),
                                                         padding, d_out)
    return finish(d_out, out)
