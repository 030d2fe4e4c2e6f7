"""Keypoint-head ops (Mask R-CNN, He et al. 2017, section 5 "Mask R-CNN for Human Pose
Estimation"): targets, loss, decoding, torchvision's Keypoint R-CNN semantics.

The paper models a keypoint's location as a one-hot ``m x m`` mask: for each of the K keypoint
types the head predicts one ``m x m`` map per RoI, and the training target is the single cell the
ground-truth keypoint falls in. The loss is a softmax cross-entropy over the ``m^2`` locations
(one location is the right one), so the K maps do not share a softmax with each other and a map
is not a per-pixel sigmoid: exactly one cell is positive, and a softmax over locations encourages
a single detected point.

- :func:`keypoints_to_heatmap`: each keypoint of each RoI to one cell of the RoI's ``m x m``
  grid (torchvision ``roi_heads.keypoints_to_heatmap``).
- :func:`keypoint_loss`: the spatial softmax cross-entropy of the visible keypoints, value and
  gradient in one pass (torchvision ``roi_heads.keypointrcnn_loss``).
- :func:`heatmaps_to_keypoints`: the arg-max of each map after a bicubic resize to the RoI's
  size, back to image coordinates, with the map's value there as the score (torchvision
  ``roi_heads.heatmaps_to_keypoints``).

Matched against torchvision by reading its source (``torchvision/models/detection/
roi_heads.py``, the functions named above, unchanged from 0.5 to 0.2x) and PyTorch's
``upsample_bicubic2d`` kernels (``UpSample.h``: ``area_pixel_compute_source_index`` with
``cubic=True``, ``guard_index_and_lambda``, ``get_cubic_upsample_coefficients``,
``upsample_get_value_bounded``); torch is not installed here, so no one-off numerical comparison
was run. The bicubic resize is implemented here (no bicubic resize exists elsewhere in the stack)
and evaluates its four taps along x, then along y, in the order of PyTorch's CUDA kernel; its
CPU kernel groups the same products differently, so resized values can differ from PyTorch's in
the last bit, and an arg-max between two cells equal to within an ulp could then differ.

Tiers (see :mod:`minimaskrcnn.backend`): ``reference.py`` (NumPy, the specification),
``numba_cpu.py`` (``@njit(parallel=True)``, bitwise equal to the reference) and
``numba_cuda.py`` (grid-stride kernels, bitwise equal on the simulator; ``cupy.py`` runs those
same kernels on CuPy arrays, so ``tier=None`` works for CuPy inputs). Arrays stay where they are:
NumPy in, NumPy out; CuPy in, CuPy out.

Shape letters: R RoIs, K keypoint types, m heatmap size (56 in the paper).
"""

from __future__ import annotations

import numbers

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array, check_float_array, check_size, shape_str

__all__ = ["heatmaps_to_keypoints", "keypoint_loss", "keypoints_to_heatmap"]





def _check_rois(rois, R: int, what: str):
    check_float_array("rois", rois, "(R, 4) float [x1, y1, x2, y2]", 2)
    if rois.shape[1] != 4 or rois.shape[0] != R:
        raise ValueError(f"rois must have shape ({R}, 4) to match {what}, "
                         f"got {shape_str(rois.shape)}")


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def keypoints_to_heatmap(keypoints, rois, heatmap_size, *, tier=None):
    """Keypoint targets: the cell of each RoI's ``m x m`` grid that each keypoint falls in.

    torchvision's ``keypoints_to_heatmap``, exactly: per axis, with ``scale = m / (x2 - x1)``
    in the RoI's dtype, the cell is ``floor((x - x1) * scale)``; a keypoint lying exactly on the
    RoI's right edge (``x == x2``) goes to cell ``m - 1`` (bottom edge likewise), so a keypoint on
    the edge of a ground-truth box used as RoI is kept. A keypoint is *valid* when both cells lie
    in ``[0, m)`` (inside the RoI, left/top edges included) and its visibility ``v > 0`` (COCO:
    0 not labelled, 1 labelled but occluded, 2 visible; torchvision trains on both 1 and 2).
    Keypoints outside the RoI or not labelled are not errors: they are simply invalid.

    Args:
        keypoints: ``(R, K, 3)`` float ``[x, y, v]`` image pixels of each RoI's matched ground
            truth, finite (COCO writes ``0, 0, 0`` for a keypoint not labelled).
        rois: ``(R, 4)`` float32/float64 ``[x1, y1, x2, y2]`` RoIs, image pixels, with positive
            width and height. ``keypoints`` are converted to this dtype.
        heatmap_size: m (56 in the paper and torchvision).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"``, ``"cupy"`` or ``None`` (backend default).

    Returns:
        ``(targets, valid)``: ``targets (R, K) int64`` flat cell index ``y * m + x`` (0 where not
        valid, as torchvision's ``lin_ind * valid``) and ``valid (R, K) bool``.

    Raises:
        TypeError: non-array arguments, non-float keypoints or RoIs, non-int ``heatmap_size``.
        ValueError: wrong or mismatched shapes, NaN/inf, a RoI of zero or negative width or
            height (torchvision would divide by zero), ``heatmap_size < 1``.
        TierUnavailableError: the tier cannot run here.
    """
    check_array("keypoints", keypoints, ndim=3, last=3, float_only=True, finite=True,
                expected="(R, K, 3) float [x, y, v]")
    R, K = keypoints.shape[:2]
    _check_rois(rois, R, f"keypoints {shape_str(keypoints.shape)}")
    m = check_size("heatmap_size", heatmap_size)
    xp = backend.get_array_module(rois)
    degenerate = (rois[:, 2] <= rois[:, 0]) | (rois[:, 3] <= rois[:, 1])
    if R and bool(degenerate.any()):
        bad = int(xp.flatnonzero(degenerate)[0])
        raise ValueError(f"rois[{bad}] = {rois[bad].tolist()} has zero or negative width or "
                         "height: keypoint targets need positive RoI sizes")
    fn = backend.implementation(__name__, "keypoints_to_heatmap", tier, keypoints, rois)
    if R == 0 or K == 0:
        return xp.zeros((R, K), np.int64), xp.zeros((R, K), bool)
    return fn(xp.ascontiguousarray(keypoints, dtype=rois.dtype), xp.ascontiguousarray(rois), m)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def keypoint_loss(keypoint_logits, targets, valid, normalizer=None, *, tier=None):
    """Spatial softmax cross-entropy of the valid keypoints, and its gradient (paper section 5).

    torchvision's ``keypointrcnn_loss``: ``F.cross_entropy(logits.view(R K, m m)[valid],
    targets[valid])``, i.e. for each valid ``(r, k)`` the cross-entropy of a softmax over the
    ``m * m`` locations with the target cell as the one class, averaged over the valid
    keypoints. Here the sum is divided by ``normalizer`` (default: the number of valid keypoints,
    torchvision's mean); the model passes the number of valid keypoints of the whole batch
    (summed over data-parallel ranks) so each rank's loss is its share. With no valid keypoint
    the loss is 0 and the gradient is zero (torchvision returns ``keypoint_logits.sum() * 0``).

    Gradient: ``(softmax(x_rk) - onehot(target_rk)) / normalizer`` on valid maps, 0 on the
    others. Per-map terms are computed in the logits' dtype (shifted by the map's maximum, so
    no overflow) and summed in float64.

    Args:
        keypoint_logits: ``(R, K, m, m)`` float32/float64 head outputs, finite.
        targets: ``(R, K)`` integer flat cell indices in ``[0, m * m)`` (only valid entries are
            read, and checked).
        valid: ``(R, K)`` bool (any dtype; nonzero is valid).
        normalizer: positive finite number, or ``None`` for the number of valid keypoints.
        tier: ``"numpy"``, ``"numba"``, ``"cuda"``, ``"cupy"`` or ``None`` (backend default).

    Returns:
        ``(loss, grad)``: ``loss`` a Python float, ``grad`` ``(R, K, m, m)`` in the logits' dtype.

    Raises:
        TypeError: non-array arguments, non-float logits, non-integer targets.
        ValueError: non-square maps; ``targets`` / ``valid`` not ``(R, K)`` like the logits (a
            wrong number of keypoint types K names both shapes); a valid target outside
            ``[0, m * m)``; NaN/inf logits; a normaliser that is not positive and finite.
        TierUnavailableError: the tier cannot run here.
    """
    check_float_array("keypoint_logits", keypoint_logits, "(R, K, m, m) float", 4)
    R, K, m, m2 = keypoint_logits.shape
    if m != m2:
        raise ValueError(f"keypoint_logits must be (R, K, m, m) with square maps, got "
                         f"{shape_str(keypoint_logits.shape)}")
    check_array("targets", targets, ndim=2, expected="(R, K) int64")
    check_array("valid", valid, ndim=2, expected="(R, K) bool")
    if not np.issubdtype(np.dtype(targets.dtype), np.integer):
        raise TypeError(f"targets must be an integer array (R, K), got {targets.dtype}")
    for name, a in (("targets", targets), ("valid", valid)):
        if tuple(a.shape) != (R, K):
            raise ValueError(f"{name} must have shape {shape_str((R, K))} like keypoint_logits "
                             f"{shape_str(keypoint_logits.shape)} (R RoIs, K keypoint types), "
                             f"got {shape_str(a.shape)}")
    xp = backend.get_array_module(keypoint_logits)
    valid = xp.asarray(valid).astype(bool)
    n_valid = int(valid.sum())
    if n_valid and (int(targets[valid].min()) < 0 or int(targets[valid].max()) >= m * m):
        raise ValueError(f"valid targets must lie in [0, m * m) = [0, {m * m})")
    if normalizer is None:
        normalizer = float(n_valid)
    elif isinstance(normalizer, bool) or not isinstance(normalizer, numbers.Real) or not (
            np.isfinite(float(normalizer)) and float(normalizer) > 0):
        raise ValueError(f"normalizer must be a positive finite number, got {normalizer!r}")
    fn = backend.implementation(__name__, "keypoint_loss", tier, keypoint_logits)
    if n_valid == 0 or m == 0:
        return 0.0, xp.zeros(keypoint_logits.shape, dtype=keypoint_logits.dtype)
    return fn(xp.ascontiguousarray(keypoint_logits),
              xp.ascontiguousarray(targets, dtype=np.int64), xp.ascontiguousarray(valid),
              float(normalizer))


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def heatmaps_to_keypoints(maps, rois, *, tier=None):
    """Keypoint locations and scores from heatmaps (torchvision's ``heatmaps_to_keypoints``).

    Per RoI: ``w = max(x2 - x1, 1)``, ``h = max(y2 - y1, 1)``; each of the K maps is resized to
    ``ceil(h) x ceil(w)`` cells with ``F.interpolate(mode="bicubic", align_corners=False)``
    (implemented here, see the module docstring); the first maximum in row-major order (torch's
    ``argmax``) at cell ``(y_int, x_int)`` becomes the keypoint
    ``x = (x_int + 0.5) * (w / ceil(w)) + x1``, ``y = (y_int + 0.5) * (h / ceil(h)) + y1`` (the
    cell's centre, Heckbert's ``c = d + 0.5``), and the score is the resized map's value there
    (a logit, not a probability, as torchvision returns it). The bicubic resize is the paper's
    "sub-cell refinement": it places the maximum at the RoI's pixel resolution instead of the
    ``m x m`` grid's.

    Args:
        maps: ``(R, K, m, m)`` float32/float64 heatmap logits, finite.
        rois: ``(R, 4)`` float ``[x1, y1, x2, y2]`` detection boxes, image pixels, finite
            (converted to ``maps``' dtype; degenerate boxes count as 1 pixel wide/high).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"``, ``"cupy"`` or ``None`` (backend default).

    Returns:
        ``(keypoints, scores)``: ``keypoints (R, K, 3)`` ``[x, y, 1]`` image pixels and
        ``scores (R, K)``, both in ``maps``' dtype (torchvision: float32).

    Raises:
        TypeError: non-array arguments, non-float maps or RoIs.
        ValueError: wrong or mismatched shapes, non-square or empty maps, NaN/inf.
        TierUnavailableError: the tier cannot run here.
    """
    check_float_array("maps", maps, "(R, K, m, m) float heatmaps", 4)
    R, K, m, m2 = maps.shape
    if m != m2 or m == 0:
        raise ValueError(f"maps must be (R, K, m, m) with square, non-empty maps, got "
                         f"{shape_str(maps.shape)}")
    _check_rois(rois, R, f"maps {shape_str(maps.shape)}")
    fn = backend.implementation(__name__, "heatmaps_to_keypoints", tier, maps, rois)
    xp = backend.get_array_module(maps)
    if R == 0 or K == 0:
        return xp.zeros((R, K, 3), maps.dtype), xp.zeros((R, K), maps.dtype)
    return fn(xp.ascontiguousarray(maps), xp.ascontiguousarray(rois, dtype=maps.dtype))
