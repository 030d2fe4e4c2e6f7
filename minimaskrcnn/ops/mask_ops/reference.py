"""NumPy reference of the mask-head ops: the specification the kernels are checked against.

Arguments arrive validated by :mod:`minimaskrcnn.ops.mask_ops` (shapes, dtypes, index ranges),
so this module only computes. Arithmetic stays in the working dtype (float32 in the model) by
making every literal an ``np.float32`` (exact for 0.5 and 1), as torchvision's float kernels do.

The scalar helper :func:`linear_source` (one axis of ``F.interpolate(mode="bilinear",
align_corners=False)``) is flat plain Python so the Numba CPU and CUDA tiers compile this very
function (``njit`` / ``cuda.jit(device=True)``). :func:`project_masks_on_boxes` *is* RoIAlign:
it calls the RoIAlign reference on the masks.
"""

from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.ops.roi_align.reference import sample_forward

# --------------------------------------------------------------------------------------------
# Scalar helper (flat; shared with the kernels)
# --------------------------------------------------------------------------------------------


def linear_source(dst, scale, in_size):
    """Source cells of output cell ``dst`` along one axis of a bilinear resize (align_corners=False).

    PyTorch's ``upsample_bilinear2d`` (``area_pixel_compute_source_index`` and
    ``guard_index_and_lambda``): ``src = scale * (dst + 0.5) - 0.5`` clamped at 0, with
    ``scale = in_size / out_size`` in the working dtype; ``i0 = min(floor(src), in_size - 1)``,
    ``i1 = i0 + 1`` unless ``i0`` is the last cell, ``w1 = clamp(src - i0, 0, 1)``,
    ``w0 = 1 - w1``.

    Returns:
        ``(i0, i1, w0, w1)``: two cell indices and their weights (``w0 + w1 == 1``).
    """
    src = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
    src = max(src, np.float32(0.0))
    i0 = min(int(math.floor(src)), in_size - 1)
    w1 = min(max(src - np.float32(i0), np.float32(0.0)), np.float32(1.0))
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    return i0, i1, np.float32(1.0) - w1, w1


# --------------------------------------------------------------------------------------------
# Mask targets: RoIAlign of the ground-truth masks (torchvision's project_masks_on_boxes)
# --------------------------------------------------------------------------------------------


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M):
    """``(G, H, W)`` masks (uint8 or boxes' dtype), ``(R, 4)`` boxes, ``(R,)`` indices -> ``(R, M, M)``.

    Exactly torchvision's definition, written as it: RoIAlign (the reference sampling kernel of
    :mod:`minimaskrcnn.ops.roi_align.reference`) of the matched masks, as a float map with one
    channel, over the boxes, with ``spatial_scale=1``, ``aligned=False`` and the adaptive
    sampling grid ``ceil(roi_size / M)`` per bin on each axis.
    """
    used, inverse = np.unique(matched_idxs, return_inverse=True)  # masks actually referenced
    masks = gt_masks[used].astype(boxes.dtype)[:, None]  # (U, 1, H, W), torchvision's .to(rois)
    rois = np.concatenate([inverse.reshape(-1, 1).astype(boxes.dtype), boxes], axis=1)
    out, _ = sample_forward(masks, rois, M, M, 1.0, 0, aligned=False, quantize=False,
                            use_max=False)
    return out[:, 0]  # (R, M, M)


# --------------------------------------------------------------------------------------------
# Mask loss: value and gradient with respect to the logits
# --------------------------------------------------------------------------------------------


def _sigmoid(x):
    """Stable logistic function (no overflow for large |x|)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def mask_loss(mask_logits, labels, mask_targets, mode):
    """``(R, K, M, M)`` logits, ``(R,)`` labels 1..K, ``(R, M, M)`` targets -> ``(loss, grad)``.

    ``mode="sigmoid"``: per pixel ``max(x, 0) - x t + log1p(exp(-|x|))`` on channel
    ``label - 1`` (binary cross-entropy with logits), mean over the ``R M M`` pixels; gradient
    ``(sigmoid(x) - t) / (R M M)`` on that channel, zero on the others.

    ``mode="softmax"``: softmax over the K class logits plus an implicit background logit 0;
    pixel target: class ``label`` with weight ``t``, background with ``1 - t``. Per pixel
    ``log Z - t x_c`` with ``Z = 1 + sum_k exp(x_k)``; gradient ``(p_k - t [k == c]) / (R M M)``
    with ``p_k = exp(x_k) / Z`` on every channel.

    The loss is accumulated in float64 and returned as a Python float; the gradient has the
    logits' dtype.
    """
    R, K, M, _ = mask_logits.shape
    dt = mask_logits.dtype.type
    grad = np.zeros_like(mask_logits)
    if R == 0:
        return 0.0, grad
    n = dt(R * M * M)
    rows = np.arange(R)
    channel = labels.astype(np.int64) - 1  # label 1..K -> channel 0..K-1
    x = mask_logits[rows, channel]  # (R, M, M) the ground-truth class's logits
    t = mask_targets.astype(mask_logits.dtype)
    if mode == "sigmoid":
        per_pixel = np.maximum(x, dt(0)) - x * t + np.log1p(np.exp(-np.abs(x)))
        grad[rows, channel] = (_sigmoid(x) - t) / n
    else:  # softmax over K classes and a background logit fixed at 0
        shift = np.maximum(mask_logits.max(axis=1), dt(0))  # (R, M, M), >= the background's 0
        e = np.exp(mask_logits - shift[:, None])  # (R, K, M, M)
        z = np.exp(-shift) + e.sum(axis=1)  # (R, M, M) = Z * exp(-shift)
        per_pixel = shift + np.log(z) - t * x  # log Z - t x_c
        grad[...] = e / z[:, None] / n  # p_k / n on every channel
        grad[rows, channel] -= t / n
    return float(per_pixel.sum(dtype=np.float64) / (R * M * M)), grad


# --------------------------------------------------------------------------------------------
# Pasting masks into the image (torchvision's paste_masks_in_image)
# --------------------------------------------------------------------------------------------


def paste_masks_in_image(masks, int_boxes, H, W, padding):
    """``(D, Mh, Mw)`` masks, ``(D, 4)`` int64 expanded boxes -> ``(D, H, W)`` in masks' dtype.

    Box ``d`` = ``(x0, y0, x1, y1)`` (already expanded and truncated to ints by the public
    function) covers pixels ``x0 .. x1`` and ``y0 .. y1`` inclusive: the zero-padded mask is
    resized bilinearly to ``h = max(y1 - y0 + 1, 1)`` by ``w = max(x1 - x0 + 1, 1)`` and the
    part of that ``h x w`` patch inside the image is written at ``(y0, x0)``.
    """
    D, Mh, Mw = masks.shape
    Ph, Pw = Mh + 2 * padding, Mw + 2 * padding
    dt = masks.dtype.type
    out = np.zeros((D, H, W), dtype=masks.dtype)
    for d in range(D):
        padded = np.zeros((Ph, Pw), dtype=masks.dtype)
        padded[padding:padding + Mh, padding:padding + Mw] = masks[d]
        x0, y0, x1, y1 = (int(v) for v in int_boxes[d])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        # bilinear resize (Ph, Pw) -> (h, w), one axis at a time
        ys = [linear_source(i, dt(Ph) / dt(h), Ph) for i in range(h)]
        xs = [linear_source(j, dt(Pw) / dt(w), Pw) for j in range(w)]
        y_a, y_b, wy_a, wy_b = (np.array(v) for v in zip(*ys, strict=True))
        x_a, x_b, wx_a, wx_b = (np.array(v) for v in zip(*xs, strict=True))
        top = padded[y_a][:, x_a] * wx_a + padded[y_a][:, x_b] * wx_b  # (h, w) rows y_a
        bottom = padded[y_b][:, x_a] * wx_a + padded[y_b][:, x_b] * wx_b  # (h, w) rows y_b
        resized = top * wy_a[:, None] + bottom * wy_b[:, None]  # (h, w)
        # the part of the patch inside the image
        ix0, ix1 = max(x0, 0), min(x1 + 1, W)
        iy0, iy1 = max(y0, 0), min(y1 + 1, H)
        if ix1 > ix0 and iy1 > iy0:
            out[d, iy0:iy1, ix0:ix1] = resized[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return out
