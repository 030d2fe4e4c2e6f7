"""Box ops and box coding, torchvision.ops-compatible.

Boxes are ``(x1, y1, x2, y2)`` in continuous input-image pixels; width is ``x2 - x1`` and height
``y2 - y1`` (no +1), as in ``torchvision.ops.boxes``. Every function accepts NumPy arrays (and
CuPy arrays on a GPU), float32 or float64; results keep the input's float dtype.

Tiers (see :mod:`minimaskrcnn.backend`): ``box_area``, ``box_iou``, ``clip_boxes_to_image`` and
``remove_small_boxes`` have a NumPy reference (``reference.py``), Numba CPU (``numba_cpu.py``) and
Numba CUDA (``numba_cuda.py``) tier; ``box_iou`` also a CuPy ``RawKernel`` tier (``cupy.py``).
:class:`BoxCoder` is elementwise arithmetic written once with ``xp = get_array_module(x)``: a
kernel would only repeat what NumPy/CuPy already do in one fused pass per line.
"""

from __future__ import annotations

import math

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array, check_boxes, check_scalar

__all__ = ["box_area", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "BoxCoder"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_dtype(name: str, x) -> None:
    """Kernels are compiled for float32 and float64 only (float16 is refused with a TypeError)."""
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")


def _boxes(name: str, boxes, *, any_rank: bool = False):
    if any_rank:
        check_array(name, boxes, last=4, float_only=True, finite=True,
                    expected="(..., 4) float [x1, y1, x2, y2]")
    else:
        check_boxes(name, boxes)
    check_float_dtype(name, boxes)
    return boxes


def box_area(boxes, *, tier: str | None = None):
    """Area of each box, ``(x2 - x1) * (y2 - y1)`` (``torchvision.ops.box_area``).

    Args:
        boxes: ``(N, 4)`` float32/float64 ``[x1, y1, x2, y2]``, pixels, finite.
        tier: kernel tier (``None``: default for the array type, see :mod:`minimaskrcnn.backend`).

    Returns:
        ``(N,)`` areas in square pixels, dtype of ``boxes``. Boxes with ``x2 < x1`` (or
        ``y2 < y1``) give negative or zero areas exactly as torchvision does.

    Raises:
        TypeError: ``boxes`` is not a float32/float64 array.
        ValueError: ``boxes`` is not ``(N, 4)`` or holds NaN/inf.
    """
    _boxes("boxes", boxes)
    return backend.implementation(__name__, "box_area", tier, boxes)(boxes)


def box_iou(boxes1, boxes2, *, tier: str | None = None):
    """Pairwise intersection over union (``torchvision.ops.box_iou``).

    ``iou[i, j] = inter / (area1[i] + area2[j] - inter)`` with
    ``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``, computed in the input
    dtype. As in torchvision, two zero-area boxes that do not overlap give ``0 / 0 = NaN``.

    Args:
        boxes1: ``(N, 4)`` float ``[x1, y1, x2, y2]``, pixels.
        boxes2: ``(M, 4)`` float ``[x1, y1, x2, y2]``, pixels (promoted with ``boxes1`` to a
            common float dtype if they differ).
        tier: kernel tier (``None``: default).

    Returns:
        ``(N, M)`` IoU in [0, 1], float32 if both inputs are float32, else float64.

    Raises:
        TypeError: an argument is not a float32/float64 array.
        ValueError: wrong shape, or NaN/inf values.
    """
    _boxes("boxes1", boxes1)
    _boxes("boxes2", boxes2)
    if boxes1.dtype != boxes2.dtype:
        dtype = np.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.astype(dtype), boxes2.astype(dtype)
    return backend.implementation(__name__, "box_iou", tier, boxes1, boxes2)(boxes1, boxes2)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise TypeError(f"size must be a pair (H, W) of image height and width, got {size!r}")
    h, w = size
    check_scalar("size[0] (image height)", h, minimum=0)
    check_scalar("size[1] (image width)", w, minimum=0)
    return h, w


def clip_boxes_to_image(boxes, size, *, tier: str | None = None):
    """Clamp x coordinates to ``[0, W]`` and y coordinates to ``[0, H]``.

    Matches ``torchvision.ops.clip_boxes_to_image`` (which also takes any leading shape).

    Args:
        boxes: ``(..., 4)`` float ``[x1, y1, x2, y2]``, pixels, e.g. ``(R, 4)`` or ``(R, K, 4)``.
        size: ``(H, W)``, the image height and width in pixels (non-negative numbers).
        tier: kernel tier (``None``: default).

    Returns:
        A new array, same shape and dtype as ``boxes``.

    Raises:
        TypeError: ``boxes`` not a float array, or ``size`` not a pair of numbers.
        ValueError: wrong shape, NaN/inf, or a negative ``size``.
    """
    _boxes("boxes", boxes, any_rank=True)
    h, w = _check_size(size)
    fn = backend.implementation(__name__, "clip_boxes_to_image", tier, boxes)
    flat = boxes.reshape(-1, 4)
    return fn(flat, h, w).reshape(boxes.shape)


def remove_small_boxes(boxes, min_size, *, tier: str | None = None):
    """Indices of the boxes whose width and height are both ``>= min_size``.

    Matches ``torchvision.ops.remove_small_boxes``.

    Args:
        boxes: ``(N, 4)`` float ``[x1, y1, x2, y2]``, pixels.
        min_size: minimum width and height in pixels (a number ``>= 0``).
        tier: kernel tier (``None``: default).

    Returns:
        ``(N',)`` int64 indices into ``boxes``, increasing.

    Raises:
        TypeError: ``boxes`` not a float array, ``min_size`` not a number.
        ValueError: wrong shape, NaN/inf, or a negative ``min_size``.
    """
    _boxes("boxes", boxes)
    check_scalar("min_size", min_size, minimum=0)
    fn = backend.implementation(__name__, "remove_small_boxes", tier, boxes)
    return fn(boxes, min_size)


class BoxCoder:
    """Encode boxes as regression targets relative to reference boxes, and decode them back.

    The parameterisation of Faster R-CNN (Ren et al. 2015, eq. 2) with torchvision's
    ``BoxCoder.encode_single`` / ``decode_single`` arithmetic: for a proposal (anchor) with centre
    ``(px, py)`` and size ``(pw, ph)`` and a target box ``(gx, gy, gw, gh)`` (widths ``x2 - x1``)::

        dx = wx * (gx - px) / pw      dy = wy * (gy - py) / ph
        dw = ww * log(gw / pw)        dh = wh * log(gh / ph)

    Decoding inverts this after clamping ``dw / ww`` and ``dh / wh`` to at most
    ``bbox_xform_clip`` (so ``exp`` cannot overflow). Written once with
    ``xp = get_array_module(x)``; it runs on NumPy and CuPy arrays.

    Args:
        weights: ``(wx, wy, ww, wh)``, e.g. ``(1, 1, 1, 1)`` for the RPN and
            ``(10, 10, 5, 5)`` for the box head (torchvision's defaults).
        bbox_xform_clip: upper clamp of the decoded log-size deltas, ``log(1000 / 16)``.

    Raises:
        ValueError / TypeError: ``weights`` is not four positive numbers, or the clip is not a
            finite number.
    """

    def __init__(self, weights, bbox_xform_clip: float = math.log(1000.0 / 16)):
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) != 4:
            raise TypeError(f"weights must be four numbers (wx, wy, ww, wh), got {weights!r}")
        for name, w in zip(("wx", "wy", "ww", "wh"), weights, strict=True):
            check_scalar(f"weights[{name}]", w)
            if not w > 0 or not math.isfinite(w):
                raise ValueError(f"weights[{name}] must be a positive finite number, got {w!r}")
        check_scalar("bbox_xform_clip", bbox_xform_clip)
        if not math.isfinite(bbox_xform_clip):
            raise ValueError(f"bbox_xform_clip must be finite, got {bbox_xform_clip!r}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, reference_boxes, proposals):
        """Regression targets that move ``proposals`` onto ``reference_boxes``.

        Args:
            reference_boxes: ``(R, 4)`` float ``[x1, y1, x2, y2]``, the targets (e.g. matched
                ground truths), pixels.
            proposals: ``(R, 4)`` float ``[x1, y1, x2, y2]``, the boxes the codes are relative
                to (anchors or proposals), pixels, positive width and height.

        Returns:
            ``(R, 4)`` ``[dx, dy, dw, dh]`` in the dtype of ``reference_boxes``.

        Raises:
            TypeError / ValueError: not float ``(R, 4)`` arrays, NaN/inf, or different ``R``.
        """
        _boxes("reference_boxes", reference_boxes)
        _boxes("proposals", proposals)
        if reference_boxes.shape[0] != proposals.shape[0]:
            raise ValueError(
                "reference_boxes and proposals must have the same number of rows R, got "
                f"{reference_boxes.shape[0]} and {proposals.shape[0]}"
            )
        xp = backend.get_array_module(reference_boxes, proposals)
        dtype = reference_boxes.dtype
        proposals = proposals.astype(dtype, copy=False)
        wx, wy, ww, wh = (dtype.type(w) for w in self.weights)

        ex_widths = proposals[:, 2] - proposals[:, 0]
        ex_heights = proposals[:, 3] - proposals[:, 1]
        ex_ctr_x = proposals[:, 0] + dtype.type(0.5) * ex_widths
        ex_ctr_y = proposals[:, 1] + dtype.type(0.5) * ex_heights

        gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        gt_ctr_x = reference_boxes[:, 0] + dtype.type(0.5) * gt_widths
        gt_ctr_y = reference_boxes[:, 1] + dtype.type(0.5) * gt_heights

        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes -> inf/NaN
            dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
            dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
            dw = ww * xp.log(gt_widths / ex_widths)
            dh = wh * xp.log(gt_heights / ex_heights)
        return xp.stack((dx, dy, dw, dh), axis=1)  # (R, 4)

    def decode(self, rel_codes, boxes):
        """Apply regression codes to boxes (torchvision's ``decode_single``).

        Args:
            rel_codes: ``(R, 4 * K')`` float ``[dx, dy, dw, dh]`` per class (``K' = 1`` for the
                RPN, ``K + 1`` for the class-specific box head).
            boxes: ``(R, 4)`` float ``[x1, y1, x2, y2]``, the boxes the codes are relative to,
                pixels (cast to the dtype of ``rel_codes``).

        Returns:
            ``(R, 4 * K')`` decoded ``[x1, y1, x2, y2]`` per class, dtype of ``rel_codes``.

        Raises:
            TypeError / ValueError: not float arrays of those shapes, NaN/inf, or different
                ``R``.
        """
        check_array("rel_codes", rel_codes, ndim=2, float_only=True, finite=True,
                    expected="(R, 4 * K') float [dx, dy, dw, dh] per class")
        check_float_dtype("rel_codes", rel_codes)
        if rel_codes.shape[1] % 4 != 0:
            raise ValueError(
                f"rel_codes must have a multiple of 4 columns (R, 4 * K'), got shape {rel_codes.shape}"
            )
        _boxes("boxes", boxes)
        if rel_codes.shape[0] != boxes.shape[0]:
            raise ValueError(
                "rel_codes and boxes must have the same number of rows R, got "
                f"{rel_codes.shape[0]} and {boxes.shape[0]}"
            )
        xp = backend.get_array_module(rel_codes, boxes)
        dtype = rel_codes.dtype
        boxes = boxes.astype(dtype, copy=False)
        half = dtype.type(0.5)
        clip = dtype.type(self.bbox_xform_clip)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + half * widths
        ctr_y = boxes[:, 1] + half * heights

        wx, wy, ww, wh = (dtype.type(w) for w in self.weights)
        dx = rel_codes[:, 0::4] / wx  # (R, K')
        dy = rel_codes[:, 1::4] / wy
        dw = xp.minimum(rel_codes[:, 2::4] / ww, clip)
        dh = xp.minimum(rel_codes[:, 3::4] / wh, clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = xp.exp(dw) * widths[:, None]
        pred_h = xp.exp(dh) * heights[:, None]

        c_to_c_w = half * pred_w  # centre-to-corner distances
        c_to_c_h = half * pred_h
        pred = xp.stack(
            (pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h,
             pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h),
            axis=2,
        )  # (R, K', 4)
        return pred.reshape(rel_codes.shape)  # (R, 4 * K')

    # torchvision's names for the single-tensor versions
    encode_single = encode
    decode_single = decode
