"""Non-maximum suppression, torchvision.ops-compatible: ``nms`` and ``batched_nms``.

Semantics (torchvision's): boxes are sorted by decreasing score, ties keeping the lower index
first (stable sort); a box is kept unless a kept, higher-ranked box overlaps it with IoU strictly
greater than ``iou_threshold`` (IoU equal to the threshold is kept). The result is the int64
indices of the kept boxes in that order.

Tiers (see :mod:`minimaskrcnn.backend`): ``reference.py`` (NumPy, the specification),
``numba_cpu.py`` (vectorised greedy loop, the default on the CPU), ``numba_cuda.py`` and
``cupy.py`` (the bitmask algorithm of torchvision's CUDA kernel, described in ``numba_cuda.py``).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array, check_boxes, check_scalar
from minimaskrcnn.ops.boxes import check_float_dtype
from minimaskrcnn.ops.nms.reference import sort_by_score

__all__ = ["nms", "batched_nms"]


def _check(boxes, scores, iou_threshold):
    check_boxes("boxes", boxes)
    check_float_dtype("boxes", boxes)
    check_array("scores", scores, ndim=1, float_only=True, finite=True, expected="(N,) float")
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have one entry per box: boxes is (N, 4) with N={boxes.shape[0]} "
            f"but scores has shape ({scores.shape[0]},)"
        )
    check_scalar("iou_threshold", iou_threshold, minimum=0)
    return float(iou_threshold)


def nms(boxes, scores, iou_threshold: float, *, tier: str | None = None):
    """Greedy non-maximum suppression (``torchvision.ops.nms``).

    Args:
        boxes: ``(N, 4)`` float32/float64 ``[x1, y1, x2, y2]``, pixels, finite.
        scores: ``(N,)`` float scores, finite.
        iou_threshold: discard a box whose IoU with a kept higher-scored box is ``>`` this
            (a number ``>= 0``; above 1 keeps everything).
        tier: kernel tier (``None``: default for the array type).

    Returns:
        ``(N',)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score (equal
        scores: lower index first). Same array type as ``boxes``.

    Raises:
        TypeError: ``boxes`` or ``scores`` not a float array, ``iou_threshold`` not a number.
        ValueError: wrong shapes, different ``N``, NaN/inf, or a negative ``iou_threshold``.
    """
    iou_threshold = _check(boxes, scores, iou_threshold)
    fn = backend.implementation(__name__, "nms", tier, boxes, scores)
    return fn(boxes, scores, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold: float, *, tier: str | None = None):
    """NMS run independently per category (``torchvision.ops.batched_nms``).

    Implemented as torchvision's ``_batched_nms_vanilla``: one :func:`nms` per category, the
    kept boxes then merged by decreasing score (stable: equal scores keep the lower index
    first). torchvision switches to the coordinate-offset trick for small inputs; that trick
    shifts each category by ``idx * (max_coordinate + 1)`` and can lose float precision for large
    offsets, so it is not used: the result always equals per-category NMS.

    Args:
        boxes: ``(N, 4)`` float ``[x1, y1, x2, y2]``, pixels.
        scores: ``(N,)`` float scores.
        idxs: ``(N,)`` integer category (or image, or level) of each box.
        iou_threshold: as in :func:`nms`.
        tier: kernel tier of the per-category :func:`nms` calls.

    Returns:
        ``(N',)`` int64 indices of the kept boxes, by decreasing score.

    Raises:
        TypeError / ValueError: as :func:`nms`, and for ``idxs`` that is not an ``(N,)`` integer
            array.
    """
    iou_threshold = _check(boxes, scores, iou_threshold)
    check_array("idxs", idxs, ndim=1, expected="(N,) integer category per box")
    xp = backend.get_array_module(boxes, scores, idxs)
    if not xp.issubdtype(idxs.dtype, xp.integer):
        raise TypeError(f"idxs must be an integer array (N,), got {idxs.dtype}")
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"idxs must have one entry per box: boxes is (N, 4) with N={boxes.shape[0]} "
            f"but idxs has shape ({idxs.shape[0]},)"
        )
    fn = backend.implementation(__name__, "nms", tier, boxes, scores, idxs)
    keep_mask = xp.zeros(boxes.shape[0], dtype=bool)
    for category in xp.unique(idxs).tolist():
        members = xp.flatnonzero(idxs == category)
        kept = fn(boxes[members], scores[members], iou_threshold)
        keep_mask[members[kept]] = True
    kept = xp.flatnonzero(keep_mask)
    return kept[sort_by_score(scores[kept])].astype(np.int64)

