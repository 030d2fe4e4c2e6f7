"""Numba CUDA tier of the keypoint ops: grid-stride loops, no atomics, no shared memory.

- targets: one thread per keypoint ``(r, k)``;
- loss: one thread per heatmap row of ``R * K`` (a softmax over its ``m * m`` cells), writing
  that map's gradient and its loss term into a float64 per-map array, summed afterwards in a
  fixed order (deterministic);
- decoding: one thread per heatmap ``(r, k)``, scanning the ``ceil(h) x ceil(w)`` resized map in
  row-major order; each resized value is computed where it is needed from the 4 x 4 taps, in the
  reference's order (along x for each of the four rows, then along y), so no scratch map is kept.

:func:`.reference.cubic_source` is compiled as a device function (the same source as the other
tiers). NumPy inputs are copied to the device and results back; CuPy inputs stay on the device
(the helpers of :mod:`minimaskrcnn.ops._cuda_common`). Constants come from input elements
(``x * np.float32(0)``), so float32 kernels stay float32. On the simulator the results are
bitwise the reference's; on a GPU the compiler may fuse multiply-adds in the bicubic taps, so
decoded keypoints can differ from the CPU tiers' where two resized cells are within an ulp.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from minimaskrcnn.ops._cuda_common import (
    device_in,
    device_out,
    finish,
    launch_1d,
    launch_stream,
)
from minimaskrcnn.ops.keypoints.reference import cubic_source as _cubic_source_py

cubic_source = cuda.jit(device=True)(_cubic_source_py)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


@cuda.jit
def _to_heatmap_kernel(keypoints, rois, m, targets, valid):
    R, K = keypoints.shape[0], keypoints.shape[1]
    zero = rois[0, 0] * np.float32(0)
    fm = zero + np.float32(m)
    low = zero - np.float32(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, R * K, stride):
        r = idx // K
        k = idx % K
        x1, y1, x2, y2 = rois[r, 0], rois[r, 1], rois[r, 2], rois[r, 3]
        x = keypoints[r, k, 0]
        y = keypoints[r, k, 1]
        # scaled offsets clamped to [-1, m] before the integer floor (no overflow; the cells
        # that decide validity, < 0 and >= m, stay on their side)
        ax = min(max((x - x1) * (fm / (x2 - x1)), low), fm)
        ay = min(max((y - y1) * (fm / (y2 - y1)), low), fm)
        xi = m - 1 if x == x2 else int(math.floor(ax))
        yi = m - 1 if y == y2 else int(math.floor(ay))
        ok = xi >= 0 and yi >= 0 and xi < m and yi < m and keypoints[r, k, 2] > zero
        valid[r, k] = 1 if ok else 0
        targets[r, k] = yi * m + xi if ok else 0


def keypoints_to_heatmap(keypoints, rois, heatmap_size):
    """``(R, K, 3)``, ``(R, 4)``, ``m`` -> ``(targets (R, K) int64, valid (R, K) bool)``."""
    R, K = keypoints.shape[:2]
    d_t, t = device_out((R, K), np.int64, rois, zero=True)
    d_v, v = device_out((R, K), np.uint8, rois, zero=True)
    blocks, threads = launch_1d(R * K)
    _to_heatmap_kernel[blocks, threads, launch_stream(rois)](
        device_in(keypoints), device_in(rois), heatmap_size, d_t, d_v)
    return finish(d_t, t), finish(d_v, v).astype(bool)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


@cuda.jit
def _loss_kernel(flat, targets, valid, norm, grad, row_loss):
    n_rows, n = flat.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, n_rows, stride):
        if valid[i] != 0:
            shift = flat[i, 0]
            for j in range(1, n):
                shift = max(shift, flat[i, j])
            z = flat[i, 0] * np.float32(0)
            for j in range(n):
                z += math.exp(flat[i, j] - shift)
            t = targets[i]
            row_loss[i] = shift + math.log(z) - flat[i, t]
            for j in range(n):
                grad[i, j] = math.exp(flat[i, j] - shift) / z / norm[0]
            grad[i, t] -= (z * np.float32(0) + np.float32(1)) / norm[0]


def keypoint_loss(logits, targets, valid, normalizer):
    """``(R, K, m, m)``, ``(R, K)``, ``(R, K)``, normaliser -> ``(loss float, grad)``."""
    R, K, m, _ = logits.shape
    flat = logits.reshape(R * K, m * m)
    d_grad, grad = device_out((R * K, m * m), logits.dtype, logits, zero=True)
    d_row, row = device_out(R * K, np.float64, logits, zero=True)
    norm = np.array([normalizer], dtype=logits.dtype)
    blocks, threads = launch_1d(R * K)
    _loss_kernel[blocks, threads, launch_stream(logits)](
        device_in(flat), device_in(targets.reshape(-1)),
        device_in(valid.reshape(-1).astype(np.uint8)), device_in(norm), d_grad, d_row)
    row = finish(d_row, row)
    return float(row.sum() / normalizer), finish(d_grad, grad).reshape(logits.shape)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _row_value(maps, r, k, row, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3):
    """One source row interpolated along x (the reference's first pass, same order)."""
    v = maps[r, k, row, ix0] * wx0
    v = v + maps[r, k, row, ix1] * wx1
    v = v + maps[r, k, row, ix2] * wx2
    return v + maps[r, k, row, ix3] * wx3


@cuda.jit
def _decode_kernel(maps, rois, keypoints, scores):
    R, K, mh, mw = maps.shape
    zero = maps[0, 0, 0, 0] * np.float32(0)
    one = zero + np.float32(1)
    half = zero + np.float32(0.5)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, R * K, stride):
        r = idx // K
        k = idx % K
        x1 = rois[r, 0]
        y1 = rois[r, 1]
        w = max(rois[r, 2] - x1, one)
        h = max(rois[r, 3] - y1, one)
        wc = int(math.ceil(w))
        hc = int(math.ceil(h))
        scale_x = (zero + np.float32(mw)) / (zero + np.float32(wc))
        scale_y = (zero + np.float32(mh)) / (zero + np.float32(hc))
        best = zero
        by = -1
        bx = -1
        for yy in range(hc):
            iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3 = cubic_source(yy, scale_y, mh)
            for c in range(wc):
                ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3 = cubic_source(c, scale_x, mw)
                v = _row_value(maps, r, k, iy0, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3) * wy0
                v = v + _row_value(maps, r, k, iy1, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3) * wy1
                v = v + _row_value(maps, r, k, iy2, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3) * wy2
                v = v + _row_value(maps, r, k, iy3, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3) * wy3
                if by < 0 or v > best:
                    best = v
                    by = yy
                    bx = c
        keypoints[r, k, 0] = ((zero + np.float32(bx)) + half) * (w / (zero + np.float32(wc))) + x1
        keypoints[r, k, 1] = ((zero + np.float32(by)) + half) * (h / (zero + np.float32(hc))) + y1
        keypoints[r, k, 2] = one
        scores[r, k] = best


def heatmaps_to_keypoints(maps, rois):
    """``(R, K, m, m)``, ``(R, 4)`` -> ``(keypoints (R, K, 3), scores (R, K))`` in maps' dtype."""
    R, K = maps.shape[:2]
    d_kp, kp = device_out((R, K, 3), maps.dtype, maps, zero=True)
    d_s, s = device_out((R, K), maps.dtype, maps, zero=True)
    blocks, threads = launch_1d(R * K)
    _decode_kernel[blocks, threads, launch_stream(maps)](device_in(maps), device_in(rois), d_kp,
                                                          d_s)
    return finish(d_kp, kp), finish(d_s, s)
