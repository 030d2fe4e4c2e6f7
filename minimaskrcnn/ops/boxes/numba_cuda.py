"""Numba CUDA tier of the box ops: one thread per output element, grid-stride loops.

NumPy inputs are copied to the device and results back; CuPy inputs are used in place (through
``__cuda_array_interface__``) and results come back as CuPy arrays. Scalars that must be in the
boxes' dtype (``zero``, the clip bounds, ``min_size``) are passed as typed arguments so float32
kernels never promote to float64. Runs on the Numba simulator with ``NUMBA_ENABLE_CUDASIM=1``.
The host glue (``device_in``, ``device_out``, ``finish``, ``launch_*``) is
:mod:`minimaskrcnn.ops._cuda_common`'s, shared by every Numba CUDA tier.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from minimaskrcnn import backend
from minimaskrcnn.ops._cuda_common import (
    device_in,
    device_out,
    finish,
    launch_1d,
    launch_2d,
    launch_stream,
)


@cuda.jit
def _box_area_kernel(boxes, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, boxes.shape[0], stride):
        out[i] = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])


def box_area(boxes):
    """``(N, 4)`` -> ``(N,)`` areas."""
    n = boxes.shape[0]
    d_boxes = device_in(boxes)
    d_out, out = device_out(n, d_boxes.dtype, boxes)
    if n:
        blocks, threads = launch_1d(n)
        _box_area_kernel[blocks, threads, launch_stream(boxes)](d_boxes, d_out)
    return finish(d_out, out)


@cuda.jit
def _box_iou_kernel(boxes1, boxes2, zero, out):
    """``out[i, j]`` = IoU of ``boxes1[i]`` and ``boxes2[j]``; x of the grid runs along j."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, boxes1.shape[0], si):
        x1, y1, x2, y2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area1 = (x2 - x1) * (y2 - y1)
        for j in range(j0, boxes2.shape[0], sj):
            area2 = (boxes2[j, 2] - boxes2[j, 0]) * (boxes2[j, 3] - boxes2[j, 1])
            w = max(min(x2, boxes2[j, 2]) - max(x1, boxes2[j, 0]), zero)
            h = max(min(y2, boxes2[j, 3]) - max(y1, boxes2[j, 1]), zero)
            inter = w * h
            out[i, j] = inter / (area1 + area2 - inter)


def box_iou(boxes1, boxes2):
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` IoU."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    d1, d2 = device_in(boxes1), device_in(boxes2)
    d_out, out = device_out((n, m), d1.dtype, boxes1)
    if n and m:
        blocks, threads = launch_2d(n, m)
        with np.errstate(divide="ignore", invalid="ignore"):  # simulator: 0 / 0 -> NaN
            _box_iou_kernel[blocks, threads, launch_stream(boxes1)](d1, d2, d1.dtype.type(0),
                                                                    d_out)
    return finish(d_out, out)


@cuda.jit
def _clip_kernel(boxes, height, width, zero, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, boxes.shape[0] * 4, stride):
        i, k = e // 4, e % 4
        hi = width if k % 2 == 0 else height  # x at columns 0 and 2, y at 1 and 3
        out[i, k] = min(max(boxes[i, k], zero), hi)


def clip_boxes_to_image(boxes, height, width):
    """``(N, 4)`` -> ``(N, 4)`` clamped to ``[0, width] x [0, height]``."""
    n = boxes.shape[0]
    d_boxes = device_in(boxes)
    d_out, out = device_out((n, 4), d_boxes.dtype, boxes)
    if n:
        dt = d_boxes.dtype.type
        blocks, threads = launch_1d(4 * n)
        _clip_kernel[blocks, threads, launch_stream(boxes)](d_boxes, dt(height), dt(width), dt(0),
                                                           d_out)
    return finish(d_out, out)


@cuda.jit
def _small_mask_kernel(boxes, min_size, keep):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, boxes.shape[0], stride):
        wide = boxes[i, 2] - boxes[i, 0] >= min_size
        tall = boxes[i, 3] - boxes[i, 1] >= min_size
        keep[i] = 1 if wide and tall else 0


def remove_small_boxes(boxes, min_size):
    """``(N, 4)`` -> int64 indices of boxes with width and height ``>= min_size``."""
    n = boxes.shape[0]
    xp = backend.get_array_module(boxes)
    d_boxes = device_in(boxes)
    d_keep, keep = device_out(n, np.uint8, boxes)
    if n:
        blocks, threads = launch_1d(n)
        _small_mask_kernel[blocks, threads, launch_stream(boxes)](
            d_boxes, d_boxes.dtype.type(min_size), d_keep)
    return xp.flatnonzero(finish(d_keep, keep)).astype(np.int64)  # CuPy: a host sync (count)
