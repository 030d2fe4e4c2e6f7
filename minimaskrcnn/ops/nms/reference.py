"""NumPy reference of NMS: torchvision's CPU ``nms_kernel`` written out in NumPy.

Greedy non-maximum suppression: sort by decreasing score (stable, so equal scores keep the lower
index first); walk the sorted boxes; keep a box that no kept box has suppressed, and suppress
every later box whose IoU with it is ``> iou_threshold``. IoU is computed in the boxes' dtype and
compared with the threshold in float64, as torchvision's ``ovr > iou_threshold`` (float vs
double) does. Inputs are validated by :mod:`minimaskrcnn.ops.nms`.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import backend


def sort_by_score(scores):
    """Indices that sort ``scores`` decreasing, ties by increasing index (stable sort of -scores).

    Works on NumPy and CuPy arrays (``cupy.argsort`` is always stable and takes no ``kind``).
    """
    if backend.is_cupy_array(scores):
        return backend.get_array_module(scores).argsort(-scores)
    return np.argsort(-scores, kind="stable")


def threshold_in_dtype(iou_threshold: float, dtype) -> np.generic:
    """The threshold as a ``dtype`` scalar ``t`` with ``iou > t  <=>  float64(iou) > iou_threshold``.

    That is the largest ``dtype`` value ``<= iou_threshold``: for float32 IoUs ``x``, comparing
    ``x > t`` in float32 then decides exactly like torchvision's float-vs-double comparison, so
    the kernels can stay in float32.
    """
    dtype = np.dtype(dtype)
    t = dtype.type(iou_threshold)
    if float(t) > iou_threshold:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(N, 4)`` boxes, ``(N,)`` scores -> int64 indices kept, by decreasing score."""
    order = sort_by_score(scores)
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))  # in score order
    areas = (x2 - x1) * (y2 - y1)
    zero = boxes.dtype.type(0)
    n = boxes.shape[0]
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, n)  # IoU of box i with every later box
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), zero)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), zero)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: NaN, kept
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64)
