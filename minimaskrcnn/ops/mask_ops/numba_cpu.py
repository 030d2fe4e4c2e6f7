"""Numba CPU tier of the mask-head ops: ``@njit(cache=True, parallel=True)`` loops.

Same arithmetic as :mod:`.reference`, written per element (the RoIAlign sampling helpers of
:mod:`minimaskrcnn.ops._roi_common` and :func:`.reference.linear_source` are compiled here, not
rewritten). ``prange`` runs over RoIs (targets, loss) or detections (paste); each writes only its
own slice of the output, so there are no races. The loss is summed per RoI in float64 and the
per-RoI sums are added in RoI order afterwards: the result does not depend on the thread count.
Constants are made in the input's dtype (``dtype.type(...)`` or exact ``np.float32`` literals),
so float32 stays float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from minimaskrcnn.ops._roi_common import jit_helpers
from minimaskrcnn.ops.mask_ops.reference import linear_source as _linear_source_py

_h = jit_helpers(njit(cache=True))
sampling_axis = _h["sampling_axis"]
sample_point = _h["sample_point"]
interp_axis = _h["interp_axis"]
linear_source = njit(cache=True)(_linear_source_py)


# --------------------------------------------------------------------------------------------
# Mask targets
# --------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _project(gt_masks, boxes, matched_idxs, M, out):
    H = gt_masks.shape[1]
    W = gt_masks.shape[2]
    for r in prange(boxes.shape[0]):
        g = matched_idxs[r]
        start_h, bin_h, grid_h = sampling_axis(boxes[r, 1], boxes[r, 3], M, 0, False)
        start_w, bin_w, grid_w = sampling_axis(boxes[r, 0], boxes[r, 2], M, 0, False)
        count = boxes.dtype.type(max(grid_h * grid_w, 1))
        for ph in range(M):
            for pw in range(M):
                acc = boxes.dtype.type(0)
                for iy in range(grid_h):
                    y = sample_point(start_h, bin_h, ph, iy, grid_h)
                    vy, y_lo, y_hi, hy, ly = interp_axis(y, H)
                    for ix in range(grid_w):
                        x = sample_point(start_w, bin_w, pw, ix, grid_w)
                        vx, x_lo, x_hi, hx, lx = interp_axis(x, W)
                        if vy and vx:
                            acc += (hy * hx * gt_masks[g, y_lo, x_lo]
                                    + hy * lx * gt_masks[g, y_lo, x_hi]
                                    + ly * hx * gt_masks[g, y_hi, x_lo]
                                    + ly * lx * gt_masks[g, y_hi, x_hi])
                out[r, ph, pw] = acc / count


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M):
    """``(G, H, W)`` uint8 or boxes' dtype, ``(R, 4)``, ``(R,)`` -> ``(R, M, M)`` in boxes' dtype.

    A uint8 mask value times a float weight is computed in the float type (Numba's promotion).
    """
    out = np.empty((boxes.shape[0], M, M), dtype=boxes.dtype)
    _project(gt_masks, boxes, matched_idxs, M, out)
    return out


# --------------------------------------------------------------------------------------------
# Mask loss
# --------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _sigmoid_loss(logits, labels, targets, grad, roi_loss):
    R, _, M, _ = logits.shape
    dt = logits.dtype.type
    zero = dt(0)
    one = dt(1)
    n = dt(R * M * M)
    for r in prange(R):
        c = labels[r] - 1
        acc = 0.0  # float64
        for i in range(M):
            for j in range(M):
                x = logits[r, c, i, j]
                t = targets[r, i, j]
                e = math.exp(-abs(x))  # in (0, 1]
                acc += max(x, zero) - x * t + math.log1p(e)
                s = one / (one + e) if x >= zero else e / (one + e)
                grad[r, c, i, j] = (s - t) / n
        roi_loss[r] = acc


@njit(cache=True, parallel=True)
def _softmax_loss(logits, labels, targets, grad, roi_loss):
    R, K, M, _ = logits.shape
    dt = logits.dtype.type
    zero = dt(0)
    n = dt(R * M * M)
    for r in prange(R):
        c = labels[r] - 1
        acc = 0.0  # float64
        for i in range(M):
            for j in range(M):
                shift = zero  # the background logit
                for k in range(K):
                    shift = max(shift, logits[r, k, i, j])
                z = math.exp(-shift)
                for k in range(K):
                    z += math.exp(logits[r, k, i, j] - shift)
                t = targets[r, i, j]
                acc += shift + math.log(z) - t * logits[r, c, i, j]
                for k in range(K):
                    grad[r, k, i, j] = math.exp(logits[r, k, i, j] - shift) / z / n
                grad[r, c, i, j] -= t / n
        roi_loss[r] = acc


def mask_loss(mask_logits, labels, mask_targets, mode):
    """``(R, K, M, M)``, ``(R,)``, ``(R, M, M)`` -> ``(loss float, grad (R, K, M, M))``."""
    R, K, M, _ = mask_logits.shape
    grad = np.zeros_like(mask_logits)
    roi_loss = np.zeros(R, dtype=np.float64)
    kernel = _sigmoid_loss if mode == "sigmoid" else _softmax_loss
    kernel(mask_logits, labels, mask_targets, grad, roi_loss)
    total = 0.0
    for v in roi_loss:  # fixed order
        total += v
    return float(total / (R * M * M)), grad


# --------------------------------------------------------------------------------------------
# Pasting
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def padded_value(mask, padding, y, x):
    """Cell ``(y, x)`` of ``mask`` zero-padded by ``padding`` on every side."""
    yy = y - padding
    xx = x - padding
    if yy < 0 or xx < 0 or yy >= mask.shape[0] or xx >= mask.shape[1]:
        return mask.dtype.type(0)
    return mask[yy, xx]


@njit(cache=True, parallel=True)
def _paste(masks, int_boxes, padding, out):
    D, Mh, Mw = masks.shape
    H = out.shape[1]
    W = out.shape[2]
    dt = masks.dtype.type
    Ph = Mh + 2 * padding
    Pw = Mw + 2 * padding
    for d in prange(D):
        x0, y0, x1, y1 = int_boxes[d, 0], int_boxes[d, 1], int_boxes[d, 2], int_boxes[d, 3]
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        scale_y = dt(Ph) / dt(h)
        scale_x = dt(Pw) / dt(w)
        mask = masks[d]
        for y in range(max(y0, 0), min(y1 + 1, H)):
            ya, yb, wya, wyb = linear_source(y - y0, scale_y, Ph)
            for x in range(max(x0, 0), min(x1 + 1, W)):
                xa, xb, wxa, wxb = linear_source(x - x0, scale_x, Pw)
                top = padded_value(mask, padding, ya, xa) * wxa + padded_value(mask, padding, ya, xb) * wxb
                bottom = padded_value(mask, padding, yb, xa) * wxa + padded_value(mask, padding, yb, xb) * wxb
                out[d, y, x] = top * wya + bottom * wyb


def paste_masks_in_image(masks, int_boxes, H, W, padding):
    """``(D, M, M)``, ``(D, 4)`` int64 expanded boxes -> ``(D, H, W)`` in masks' dtype."""
    out = np.zeros((masks.shape[0], H, W), dtype=masks.dtype)
    _paste(masks, int_boxes, padding, out)
    return out
