"""Numba CPU tier of NMS: the greedy loop over score-sorted, contiguous coordinate arrays.

Faster than a direct transcription of torchvision's CPU kernel because:

* the boxes are gathered once into score order as four contiguous arrays (x1, y1, x2, y2) plus
  their areas, so the inner loop streams through memory instead of gathering ``order[j]``;
* the inner loop over later boxes has no branch: it computes the IoU with every later box and
  ORs ``iou > t`` into a ``uint8`` suppression array, which LLVM turns into SIMD (8 float32
  lanes with AVX2); the work skipped by torchvision's ``if suppressed[j] continue`` costs less
  than the lost vectorisation. It is a separate function over slices that start at index 0:
  written inline with ``j`` running from ``i + 1``, the same loop did not vectorise here (no
  packed ``vdivps`` in the assembly) and ran about 10x slower;
* the math stays in the boxes' dtype: the threshold is converted once
  (:func:`.reference.threshold_in_dtype`) so that float32 ``iou > t`` decides exactly like the
  reference's float64 comparison.

Only a kept box runs the inner loop, so the cost is ``O(N * kept)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .reference import sort_by_score, threshold_in_dtype


@njit(cache=True, error_model="numpy")  # 0 / 0 -> NaN (two empty boxes), never suppresses
def _suppress_overlaps(ix1, iy1, ix2, iy2, iarea, x1, y1, x2, y2, areas, threshold, suppressed):
    """OR ``IoU(box i, box j) > threshold`` into ``suppressed[j]`` for every ``j``.

    Branch-free over contiguous arrays that start at 0, so LLVM vectorises it.
    """
    zero = x1.dtype.type(0)
    for j in range(x1.shape[0]):
        w = max(min(ix2, x2[j]) - max(ix1, x1[j]), zero)
        h = max(min(iy2, y2[j]) - max(iy1, y1[j]), zero)
        inter = w * h
        suppressed[j] |= inter / (iarea + areas[j] - inter) > threshold


@njit(cache=True)
def _greedy_nms(x1, y1, x2, y2, threshold, keep):
    """Greedy NMS of boxes already in score order; writes kept positions, returns their count."""
    n = x1.shape[0]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=np.uint8)
    n_keep = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[n_keep] = i
        n_keep += 1
        rest = slice(i + 1, n)  # the boxes after i, as views starting at index 0
        _suppress_overlaps(x1[i], y1[i], x2[i], y2[i], areas[i], x1[rest], y1[rest], x2[rest],
                           y2[rest], areas[rest], threshold, suppressed[rest])
    return n_keep


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(N, 4)`` boxes, ``(N,)`` scores -> int64 indices kept, by decreasing score."""
    order = sort_by_score(scores)
    sorted_boxes = boxes[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(sorted_boxes[:, k]) for k in range(4))
    keep = np.empty(boxes.shape[0], dtype=np.int64)
    n_keep = _greedy_nms(x1, y1, x2, y2, threshold_in_dtype(iou_threshold, boxes.dtype), keep)
    return order[keep[:n_keep]].astype(np.int64)


@njit(cache=True)
def greedy_scan_bitmask(mask, keep):
    """Host half of the bitmask NMS of the CUDA tiers (see :mod:`.numba_cuda`).

    ``mask`` is ``(N, ceil(N / 64))`` uint64: bit ``b`` of ``mask[i, w]`` says that box
    ``64 * w + b`` (score order) overlaps box ``i`` by more than the threshold. Walk the boxes in
    score order keeping a running ``removed`` bit row; a box whose bit is not set is kept and ORs
    its own row into ``removed``. Writes kept positions into ``keep``, returns their count.
    """
    n, words = mask.shape
    removed = np.zeros(words, dtype=np.uint64)
    n_keep = 0
    for i in range(n):
        word = i // 64
        bit = np.uint64(1) << np.uint64(i % 64)
        if removed[word] & bit:
            continue
        keep[n_keep] = i
        n_keep += 1
        for w in range(word, words):  # boxes before i's word are decided already
            removed[w] |= mask[i, w]
    return n_keep
