"""NumPy reference of the box ops: the specification the kernel tiers are tested against.

One box (or one row of boxes) at a time, with the arithmetic of torchvision's
``box_area`` / ``box_iou`` / ``clip_boxes_to_image`` / ``remove_small_boxes``, in the input's
float dtype. Inputs are validated by :mod:`minimaskrcnn.ops.boxes`.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` -> ``(N,)`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` IoU, one row of ``boxes1`` at a time."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    iou = np.empty((n, m), dtype=boxes1.dtype)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    zero = boxes1.dtype.type(0)
    for i in range(n):
        x1, y1, x2, y2 = boxes1[i]
        w = np.maximum(np.minimum(x2, boxes2[:, 2]) - np.maximum(x1, boxes2[:, 0]), zero)
        h = np.maximum(np.minimum(y2, boxes2[:, 3]) - np.maximum(y1, boxes2[:, 1]), zero)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 -> NaN as in torchvision
            iou[i] = inter / (area1[i] + area2 - inter)
    return iou


def clip_boxes_to_image(boxes: np.ndarray, height, width) -> np.ndarray:
    """``(N, 4)`` -> ``(N, 4)`` with x in ``[0, width]`` and y in ``[0, height]``."""
    out = np.empty_like(boxes)
    dt = boxes.dtype.type
    h, w, zero = dt(height), dt(width), dt(0)
    for i in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[i]
        out[i, 0] = min(max(x1, zero), w)
        out[i, 1] = min(max(y1, zero), h)
        out[i, 2] = min(max(x2, zero), w)
        out[i, 3] = min(max(y2, zero), h)
    return out


def remove_small_boxes(boxes: np.ndarray, min_size) -> np.ndarray:
    """``(N, 4)`` -> int64 indices of boxes with width and height ``>= min_size``."""
    min_size = boxes.dtype.type(min_size)  # compared in the boxes' dtype, as torch does
    keep = []
    for i in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[i]
        if x2 - x1 >= min_size and y2 - y1 >= min_size:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)
