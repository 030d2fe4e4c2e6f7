"""Numba CUDA tier of NMS: the bitmask algorithm of torchvision's CUDA ``nms_kernel``.

Greedy NMS is sequential (whether box ``i`` survives depends on every decision before it), but
almost all of its work, the IoUs, is not. The bitmask algorithm splits the two:

1. **Sort** the boxes by decreasing score (stable), on the host for NumPy input, on the device
   for CuPy input, and precompute the areas.
2. **Suppression matrix on the device.** Cut the sorted boxes into blocks of 64. For every box
   ``i`` and every block ``w`` of 64 later boxes, one thread computes the 64 IoUs and packs
   them into one uint64 word: bit ``b`` of ``mask[i, w]`` is set when box ``j = 64 * w + b``
   comes after ``i`` (``j > i``) and ``IoU(i, j) > iou_threshold``. The matrix is
   ``(N, ceil(N / 64))`` uint64; words left of ``i``'s own block stay 0. This is
   ``O(N^2 / 2)`` IoUs, fully parallel, and ``N^2 / 8`` bytes instead of ``N^2`` booleans.
   (torchvision gives each (row block, column block) pair a 64-thread CUDA block that stages
   the column boxes in shared memory; here one thread owns one (row, word) pair and reads the
   column boxes through the L1 cache, neighbouring threads taking neighbouring rows of the same
   word so their reads coincide. The matrix is the same.)
3. **Greedy scan on the host** (:func:`.numba_cpu.greedy_scan_bitmask`): walk ``i`` in score
   order with a running ``removed`` bit row of ``ceil(N / 64)`` words; if bit ``i`` of
   ``removed`` is clear, keep ``i`` and OR row ``i`` of the matrix into ``removed``. That is
   exactly the greedy rule (a box is dropped iff a *kept* earlier box overlaps it), at
   ``N / 64`` word operations per kept box.

IoUs are computed in the boxes' dtype and compared with the threshold converted by
:func:`.reference.threshold_in_dtype`, as the CPU tiers do. On a real GPU the compiler may fuse
``area_i + area_j - w * h`` into a fused multiply-add, so an IoU within one ulp of the threshold
can decide differently from the CPU (torchvision's CUDA kernel has the same property).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from minimaskrcnn import backend
from minimaskrcnn.ops._cuda_common import (
    device_in,
    device_out,
    finish,
    launch_1d,
    launch_stream,
)

from .numba_cpu import greedy_scan_bitmask
from .reference import sort_by_score, threshold_in_dtype

BITS = 64  # boxes per mask word


@cuda.jit
def _nms_mask_kernel(boxes, areas, threshold, zero, mask):
    """``mask[i, w]``: bit ``b`` set iff ``j = 64 w + b > i`` and IoU(i, j) > threshold."""
    n = boxes.shape[0]
    words = mask.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, n * words, stride):
        w = task // n  # neighbouring threads: neighbouring rows, same column block
        i = task - w * n
        col_start = w * BITS
        x1, y1, x2, y2, area = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], areas[i]
        bits = np.uint64(0)
        for j in range(max(i + 1, col_start), min(col_start + BITS, n)):
            iw = max(min(x2, boxes[j, 2]) - max(x1, boxes[j, 0]), zero)
            ih = max(min(y2, boxes[j, 3]) - max(y1, boxes[j, 1]), zero)
            inter = iw * ih
            if inter / (area + areas[j] - inter) > threshold:
                bits |= np.uint64(1) << np.uint64(j - col_start)
        mask[i, w] = bits


def nms(boxes, scores, iou_threshold: float):
    """``(N, 4)`` boxes, ``(N,)`` scores -> int64 indices kept, by decreasing score."""
    xp = backend.get_array_module(boxes, scores)
    n = boxes.shape[0]
    if n == 0:
        return xp.empty(0, dtype=np.int64)
    order = sort_by_score(scores)
    sorted_boxes = xp.ascontiguousarray(boxes[order])
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    words = math.ceil(n / BITS)
    d_boxes, d_areas = device_in(sorted_boxes), device_in(areas)
    d_mask, mask = device_out((n, words), np.uint64, boxes)
    blocks, threads = launch_1d(n * words)
    dt = boxes.dtype.type
    with np.errstate(divide="ignore", invalid="ignore"):  # simulator: 0 / 0 -> NaN, kept
        _nms_mask_kernel[blocks, threads, launch_stream(boxes)](
            d_boxes, d_areas, threshold_in_dtype(iou_threshold, boxes.dtype), dt(0), d_mask
        )
    keep = np.empty(n, dtype=np.int64)
    # the greedy scan runs on the host (torchvision's CUDA nms does the same): on a GPU this
    # copy is the host synchronisation of every NMS call
    n_keep = greedy_scan_bitmask(backend.to_numpy(finish(d_mask, mask)), keep)
    return order[xp.asarray(keep[:n_keep])].astype(np.int64)
