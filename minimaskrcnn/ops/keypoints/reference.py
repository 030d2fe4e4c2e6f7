"""NumPy reference of the keypoint ops: the specification the Numba tier is checked against.

Arguments arrive validated by :mod:`minimaskrcnn.ops.keypoints` (shapes, dtypes, finite values,
positive RoI sizes for the targets), so this module only computes. Arithmetic stays in the
working dtype (float32 in the model): every literal is an ``np.float32`` that is exact (0.5, 1,
-0.75, ...), so float32 stays float32 and float64 stays float64.

The scalar helper :func:`cubic_source` (one axis of PyTorch's bicubic resize) is flat plain
Python so the Numba tier compiles this very function (``njit``). The resize is separable and
both tiers evaluate it in the same order (along x first, four taps summed left to right, then
along y), so their decoded keypoints are bitwise equal.
"""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------------
# Scalar helper (flat; shared with the kernels)
# --------------------------------------------------------------------------------------------


def cubic_source(dst, scale, in_size):
    """The four source cells and weights of output cell ``dst`` along one axis of a bicubic
    resize, PyTorch's ``upsample_bicubic2d`` with ``align_corners=False``.

    ``real = scale * (dst + 0.5) - 0.5`` (``area_pixel_compute_source_index`` with
    ``cubic=True``: *not* clamped at 0), ``scale = in_size / out_size`` in the working dtype;
    ``i = min(floor(real), in_size - 1)``, ``t = clamp(real - i, 0, 1)``
    (``guard_index_and_lambda``); taps ``i - 1 .. i + 2`` clamped into ``[0, in_size - 1]``
    (``upsample_get_value_bounded``), weights Keys' cubic convolution with ``A = -0.75``
    (``get_cubic_upsample_coefficients``): ``cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)`` with
    ``cc1(x) = ((A + 2) x - (A + 3)) x x + 1`` and ``cc2(x) = ((A x - 5 A) x + 8 A) x - 4 A``.

    Returns:
        ``(i0, i1, i2, i3, w0, w1, w2, w3)``: four cell indices and their weights
        (``w0 + w1 + w2 + w3 == 1`` up to rounding).
    """
    real = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
    i = min(int(math.floor(real)), in_size - 1)
    t = min(max(real - np.float32(i), np.float32(0.0)), np.float32(1.0))
    # A = -0.75: A + 2 = 1.25, A + 3 = 2.25, 5A = -3.75, 8A = -6, 4A = -3 (all exact)
    x0 = t + np.float32(1.0)
    w0 = ((np.float32(-0.75) * x0 + np.float32(3.75)) * x0 - np.float32(6.0)) * x0 + np.float32(3.0)
    w1 = (np.float32(1.25) * t - np.float32(2.25)) * t * t + np.float32(1.0)
    x2 = np.float32(1.0) - t
    w2 = (np.float32(1.25) * x2 - np.float32(2.25)) * x2 * x2 + np.float32(1.0)
    x3 = np.float32(2.0) - t
    w3 = ((np.float32(-0.75) * x3 + np.float32(3.75)) * x3 - np.float32(6.0)) * x3 + np.float32(3.0)
    last = in_size - 1
    i0 = min(max(i - 1, 0), last)
    i1 = min(max(i, 0), last)
    i2 = min(max(i + 1, 0), last)
    i3 = min(max(i + 2, 0), last)
    return i0, i1, i2, i3, w0, w1, w2, w3


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def keypoints_to_heatmap(keypoints, rois, heatmap_size):
    """``(R, K, 3)`` keypoints (rois' dtype), ``(R, 4)`` RoIs, ``m`` -> ``(targets (R, K) int64,
    valid (R, K) bool)``; see :func:`minimaskrcnn.ops.keypoints.keypoints_to_heatmap`.

    Cell ``floor((x - x1) * (m / (x2 - x1)))`` per axis, ``m - 1`` where the keypoint lies
    exactly on the RoI's right (bottom) edge; valid when both cells lie in ``[0, m)`` and the
    visibility is > 0; target ``y * m + x`` where valid, 0 elsewhere.
    """
    m = heatmap_size
    dt = rois.dtype.type
    x1, y1 = rois[:, 0:1], rois[:, 1:2]
    x2, y2 = rois[:, 2:3], rois[:, 3:4]
    scale_x = dt(m) / (x2 - x1)
    scale_y = dt(m) / (y2 - y1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    xf = np.where(x == x2, dt(m - 1), np.floor((x - x1) * scale_x))  # cells, still float
    yf = np.where(y == y2, dt(m - 1), np.floor((y - y1) * scale_y))
    valid = (xf >= 0) & (yf >= 0) & (xf < m) & (yf < m) & (keypoints[..., 2] > 0)
    xi = np.where(valid, xf, 0).astype(np.int64)  # cast only in-range values
    yi = np.where(valid, yf, 0).astype(np.int64)
    return yi * m + xi, valid


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def keypoint_loss(logits, targets, valid, normalizer):
    """``(R, K, m, m)`` logits, ``(R, K)`` int64 targets, ``(R, K)`` bool valid, a positive
    normaliser -> ``(loss float, grad (R, K, m, m))``.

    Per valid ``(r, k)``: cross-entropy of the softmax over the ``m * m`` locations,
    ``logsumexp(x) - x[target]`` (shifted by the row's maximum); gradient
    ``(softmax(x) - onehot(target)) / normalizer``; rows not valid get 0. The loss is summed in
    float64 and divided by ``normalizer``.
    """
    R, K, m, _ = logits.shape
    dt = logits.dtype.type
    flat = logits.reshape(R * K, m * m)
    grad = np.zeros_like(flat)
    rows = np.flatnonzero(valid.reshape(-1))
    if rows.size == 0:
        return 0.0, grad.reshape(logits.shape)
    x = flat[rows]  # (n, m m)
    t = targets.reshape(-1)[rows]
    n = np.arange(rows.size)
    shift = x.max(axis=1)
    e = np.exp(x - shift[:, None])
    z = e.sum(axis=1)
    per_row = shift + np.log(z) - x[n, t]
    p = e / z[:, None]
    p[n, t] -= dt(1)
    grad[rows] = p / dt(normalizer)
    return float(per_row.sum(dtype=np.float64) / normalizer), grad.reshape(logits.shape)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def roi_map_geometry(roi):
    """``(x1, y1, w, h, wc, hc)`` of one RoI: torchvision clamps the RoI's width and height at
    1 (``w = max(x2 - x1, 1)``) and resizes the heatmap to ``ceil(h) x ceil(w)`` cells."""
    one = roi[0] * np.float32(0) + np.float32(1)  # 1 in the RoI's dtype
    w = max(roi[2] - roi[0], one)
    h = max(roi[3] - roi[1], one)
    return roi[0], roi[1], w, h, int(math.ceil(w)), int(math.ceil(h))


def _axis_table(out_size, in_size, dt):
    """Per output cell the four source cells ``(out, 4) int64`` and weights ``(out, 4)``."""
    scale = dt(in_size) / dt(out_size)
    rows = [cubic_source(d, scale, in_size) for d in range(out_size)]
    idx = np.array([r[:4] for r in rows], dtype=np.int64).reshape(out_size, 4)
    w = np.array([r[4:] for r in rows], dtype=dt).reshape(out_size, 4)
    return idx, w


def bicubic_resize(maps, out_h, out_w):
    """``(K, m, m)`` -> ``(K, out_h, out_w)`` in ``maps``' dtype: ``F.interpolate(maps[:, None],
    size=(out_h, out_w), mode="bicubic", align_corners=False)[:, 0]``. Along x first (four taps
    summed left to right), then along y."""
    dt = maps.dtype.type
    K, mh, mw = maps.shape
    ix, wx = _axis_table(out_w, mw, dt)
    iy, wy = _axis_table(out_h, mh, dt)
    tmp = maps[:, :, ix[:, 0]] * wx[:, 0]  # (K, mh, out_w)
    for j in range(1, 4):
        tmp = tmp + maps[:, :, ix[:, j]] * wx[:, j]
    out = tmp[:, iy[:, 0], :] * wy[:, 0, None]  # (K, out_h, out_w)
    for j in range(1, 4):
        out = out + tmp[:, iy[:, j], :] * wy[:, j, None]
    return out


def heatmaps_to_keypoints(maps, rois):
    """``(R, K, m, m)`` heatmaps, ``(R, 4)`` RoIs -> ``(keypoints (R, K, 3), scores (R, K))`` in
    ``maps``' dtype; see :func:`minimaskrcnn.ops.keypoints.heatmaps_to_keypoints`."""
    R, K = maps.shape[:2]
    dt = maps.dtype.type
    keypoints = np.zeros((R, K, 3), dtype=maps.dtype)
    scores = np.zeros((R, K), dtype=maps.dtype)
    for r in range(R):
        x1, y1, w, h, wc, hc = roi_map_geometry(rois[r])
        resized = bicubic_resize(maps[r], hc, wc)  # (K, hc, wc)
        pos = resized.reshape(K, -1).argmax(axis=1)  # first maximum, row-major
        x_int = pos % wc
        y_int = pos // wc
        keypoints[r, :, 0] = (x_int.astype(dt) + dt(0.5)) * (w / dt(wc)) + x1
        keypoints[r, :, 1] = (y_int.astype(dt) + dt(0.5)) * (h / dt(hc)) + y1
        keypoints[r, :, 2] = dt(1)
        scores[r] = resized[np.arange(K), y_int, x_int]
    return keypoints, scores
