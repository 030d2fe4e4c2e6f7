"""Numba CPU tier of the keypoint ops: ``@njit(cache=True, parallel=True)`` loops.

Same arithmetic as :mod:`.reference`, written per element (:func:`.reference.cubic_source` is
compiled here, not rewritten). ``prange`` runs over RoIs (targets, decoding) or over the
``R * K`` heatmaps (loss); each iteration writes only its own slice of the outputs, so there are
no races. The loss is summed per heatmap in float64 and the per-heatmap sums are added in order
afterwards: the result does not depend on the thread count. The decoding evaluates the bicubic
resize in the reference's order (x first, taps left to right, then y) and scans the resized map
in row-major order keeping the first maximum (``argmax``), so keypoints and scores are bitwise
the reference's.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from minimaskrcnn.ops.keypoints.reference import cubic_source as _cubic_source_py

cubic_source = njit(cache=True)(_cubic_source_py)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _to_heatmap(keypoints, rois, m, targets, valid):
    R, K = keypoints.shape[0], keypoints.shape[1]
    dt = rois.dtype.type
    last = dt(m - 1)
    fm = dt(m)
    for r in prange(R):
        x1, y1, x2, y2 = rois[r, 0], rois[r, 1], rois[r, 2], rois[r, 3]
        scale_x = fm / (x2 - x1)
        scale_y = fm / (y2 - y1)
        for k in range(K):
            x = keypoints[r, k, 0]
            y = keypoints[r, k, 1]
            xf = last if x == x2 else np.floor((x - x1) * scale_x)  # float: no overflow
            yf = last if y == y2 else np.floor((y - y1) * scale_y)
            ok = (xf >= 0 and yf >= 0 and xf < m and yf < m and keypoints[r, k, 2] > 0)
            valid[r, k] = ok
            targets[r, k] = int(yf) * m + int(xf) if ok else 0


def keypoints_to_heatmap(keypoints, rois, heatmap_size):
    """``(R, K, 3)``, ``(R, 4)``, ``m`` -> ``(targets (R, K) int64, valid (R, K) bool)``."""
    R, K = keypoints.shape[:2]
    targets = np.zeros((R, K), dtype=np.int64)
    valid = np.zeros((R, K), dtype=np.bool_)
    _to_heatmap(keypoints, rois, heatmap_size, targets, valid)
    return targets, valid


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _loss(flat, targets, valid, normalizer, grad, row_loss):
    n_rows, n = flat.shape
    dt = flat.dtype.type
    norm = dt(normalizer)
    for i in prange(n_rows):
        if not valid[i]:
            continue
        shift = flat[i, 0]
        for j in range(1, n):
            shift = max(shift, flat[i, j])
        z = dt(0)
        for j in range(n):
            z += math.exp(flat[i, j] - shift)
        t = targets[i]
        row_loss[i] = shift + math.log(z) - flat[i, t]
        for j in range(n):
            grad[i, j] = math.exp(flat[i, j] - shift) / z / norm
        grad[i, t] -= dt(1) / norm


def keypoint_loss(logits, targets, valid, normalizer):
    """``(R, K, m, m)``, ``(R, K)``, ``(R, K)``, normaliser -> ``(loss float, grad)``."""
    R, K, m, _ = logits.shape
    flat = logits.reshape(R * K, m * m)
    grad = np.zeros_like(flat)
    row_loss = np.zeros(R * K, dtype=np.float64)
    _loss(flat, targets.reshape(-1), valid.reshape(-1), float(normalizer), grad, row_loss)
    total = 0.0
    for v in row_loss:  # fixed order
        total += v
    return float(total / normalizer), grad.reshape(logits.shape)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _axis_table(out_size, in_size, scale, idx, w):
    """The reference's ``_axis_table``: per output cell four source cells and weights."""
    for d in range(out_size):
        i0, i1, i2, i3, w0, w1, w2, w3 = cubic_source(d, scale, in_size)
        idx[d, 0] = i0
        idx[d, 1] = i1
        idx[d, 2] = i2
        idx[d, 3] = i3
        w[d, 0] = w0
        w[d, 1] = w1
        w[d, 2] = w2
        w[d, 3] = w3


@njit(cache=True, parallel=True)
def _decode(maps, rois, keypoints, scores):
    R, K, mh, mw = maps.shape
    dt = maps.dtype.type
    one = dt(1)
    half = dt(0.5)
    for r in prange(R):
        x1 = rois[r, 0]
        y1 = rois[r, 1]
        w = max(rois[r, 2] - x1, one)
        h = max(rois[r, 3] - y1, one)
        wc = int(math.ceil(w))
        hc = int(math.ceil(h))
        # per-axis tables, as the reference's _axis_table
        ix = np.empty((wc, 4), np.int64)
        wx = np.empty((wc, 4), maps.dtype)
        _axis_table(wc, mw, dt(mw) / dt(wc), ix, wx)
        iy = np.empty((hc, 4), np.int64)
        wy = np.empty((hc, 4), maps.dtype)
        _axis_table(hc, mh, dt(mh) / dt(hc), iy, wy)
        tmp = np.empty((mh, wc), maps.dtype)
        for k in range(K):
            for row in range(mh):  # along x
                for c in range(wc):
                    v = maps[r, k, row, ix[c, 0]] * wx[c, 0]
                    v = v + maps[r, k, row, ix[c, 1]] * wx[c, 1]
                    v = v + maps[r, k, row, ix[c, 2]] * wx[c, 2]
                    v = v + maps[r, k, row, ix[c, 3]] * wx[c, 3]
                    tmp[row, c] = v
            best = tmp[0, 0] * dt(0)
            by = -1
            bx = -1
            for yy in range(hc):  # along y, scanning row-major for the first maximum
                for c in range(wc):
                    v = tmp[iy[yy, 0], c] * wy[yy, 0]
                    v = v + tmp[iy[yy, 1], c] * wy[yy, 1]
                    v = v + tmp[iy[yy, 2], c] * wy[yy, 2]
                    v = v + tmp[iy[yy, 3], c] * wy[yy, 3]
                    if by < 0 or v > best:
                        best = v
                        by = yy
                        bx = c
            keypoints[r, k, 0] = (dt(bx) + half) * (w / dt(wc)) + x1
            keypoints[r, k, 1] = (dt(by) + half) * (h / dt(hc)) + y1
            keypoints[r, k, 2] = one
            scores[r, k] = best


def heatmaps_to_keypoints(maps, rois):
    """``(R, K, m, m)``, ``(R, 4)`` -> ``(keypoints (R, K, 3), scores (R, K))`` in maps' dtype."""
    R, K = maps.shape[:2]
    keypoints = np.zeros((R, K, 3), dtype=maps.dtype)
    scores = np.zeros((R, K), dtype=maps.dtype)
    _decode(maps, rois, keypoints, scores)
    return keypoints, scores
