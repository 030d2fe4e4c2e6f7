"""Numba CPU tier of the box ops: ``@njit(cache=True)`` loops, ``parallel=True`` for ``box_iou``.

Same arithmetic as :mod:`.reference`, written per element; every constant is made in the input's
dtype (``boxes.dtype.type(0)``) so float32 input never promotes to float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _box_area(boxes, out):
    for i in range(boxes.shape[0]):
        out[i] = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` -> ``(N,)`` areas."""
    boxes = np.ascontiguousarray(boxes)
    out = np.empty(boxes.shape[0], dtype=boxes.dtype)
    _box_area(boxes, out)
    return out


@njit(cache=True, parallel=True, error_model="numpy")  # 0 / 0 -> NaN, not ZeroDivisionError
def _box_iou(boxes1, boxes2, out):
    zero = boxes1.dtype.type(0)
    m = boxes2.shape[0]
    area2 = np.empty(m, dtype=boxes2.dtype)
    for j in range(m):
        area2[j] = (boxes2[j, 2] - boxes2[j, 0]) * (boxes2[j, 3] - boxes2[j, 1])
    for i in prange(boxes1.shape[0]):
        x1, y1, x2, y2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area1 = (x2 - x1) * (y2 - y1)
        for j in range(m):
            w = max(min(x2, boxes2[j, 2]) - max(x1, boxes2[j, 0]), zero)
            h = max(min(y2, boxes2[j, 3]) - max(y1, boxes2[j, 1]), zero)
            inter = w * h
            out[i, j] = inter / (area1 + area2[j] - inter)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` IoU."""
    boxes1 = np.ascontiguousarray(boxes1)
    boxes2 = np.ascontiguousarray(boxes2)
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        _box_iou(boxes1, boxes2, out)
    return out


@njit(cache=True)
def _clip(boxes, height, width, out):
    zero = boxes.dtype.type(0)
    for i in range(boxes.shape[0]):
        for k in range(4):
            hi = width if k % 2 == 0 else height  # x at columns 0 and 2, y at 1 and 3
            out[i, k] = min(max(boxes[i, k], zero), hi)


def clip_boxes_to_image(boxes: np.ndarray, height, width) -> np.ndarray:
    """``(N, 4)`` -> ``(N, 4)`` clamped to ``[0, width] x [0, height]``."""
    boxes = np.ascontiguousarray(boxes)
    out = np.empty_like(boxes)
    dt = boxes.dtype.type
    _clip(boxes, dt(height), dt(width), out)
    return out


@njit(cache=True)
def _small_mask(boxes, min_size, keep):
    for i in range(boxes.shape[0]):
        keep[i] = (boxes[i, 2] - boxes[i, 0] >= min_size) and (boxes[i, 3] - boxes[i, 1] >= min_size)


def remove_small_boxes(boxes: np.ndarray, min_size) -> np.ndarray:
    """``(N, 4)`` -> int64 indices of boxes with width and height ``>= min_size``."""
    boxes = np.ascontiguousarray(boxes)
    keep = np.empty(boxes.shape[0], dtype=np.bool_)
    _small_mask(boxes, boxes.dtype.type(min_size), keep)
    return np.flatnonzero(keep).astype(np.int64)
