"""RoIWarp (Dai et al., "Instance-aware Semantic Segmentation via Multi-task Network Cascades"
(MNC), 2016; compared with RoIAlign in Mask R-CNN's Table 2c).

Definition used here (the Mask R-CNN paper's description of MNC's layer: "quantizing RoI just
like RoIPool", then bilinear resampling):

1. Quantise the RoI as RoIPool does: ``x1q = round(x1 * spatial_scale)`` (half away from zero),
   ``x2q = round(x2 * spatial_scale)``, width ``wq = max(x2q - x1q + 1, 1)`` cells (same for y),
   so the RoI becomes the whole cells ``[x1q, x1q + wq) x [y1q, y1q + hq)``.
2. Resample that box exactly as RoIAlign with ``aligned=False`` does: ``Ph x Pw`` bins of size
   ``hq / Ph`` by ``wq / Pw``, a ``grid_h x grid_w`` sampling grid per bin (``sampling_ratio``
   per axis, or ``ceil(hq / Ph)`` when ``<= 0``) at ``bin start + (i + 0.5) * bin / grid``,
   bilinear interpolation with RoIAlign's border rules (a sample beyond -1 or H contributes 0).
3. Aggregate per bin: ``mode="avg"``: mean of the samples (identical to
   ``roi_align(..., aligned=False)`` on the quantised box at ``spatial_scale=1``);
   ``mode="max"``: the largest sample (first one wins ties), whose index ``iy * grid_w + ix``
   within the bin is the argmax the backward needs.

So RoIWarp differs from RoIAlign only by step 1: the quantisation RoIAlign removes.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array
from minimaskrcnn.ops._roi_common import (
    check_input,
    check_input_shape,
    check_sampling_ratio,
    check_spatial_scale,
    convert_boxes_to_rois,
    output_size_pair,
)

__all__ = ["roi_warp", "roi_warp_backward"]

MODES = ("avg", "max")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    return mode == "max"


def roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, mode="avg", *,
             tier=None, return_argmax=False):
    """RoIWarp: quantised RoI, bilinear resampling, mean or max per bin (see module docstring).

    Args:
        input: ``(N, C, H, W)`` float32 or float64 feature map.
        boxes: ``(R, 5)`` float ``[batch_idx, x1, y1, x2, y2]`` or a list of ``(R_i, 4)`` per
            image, input pixels; cast to ``input``'s dtype.
        output_size: ``Ph`` or ``(Ph, Pw)``.
        spatial_scale: feature cells per input pixel.
        sampling_ratio: samples per bin per axis; ``<= 0``: adaptive ``ceil(hq / Ph)``.
        mode: ``"avg"`` or ``"max"``.
        tier: kernel tier (``None``: backend default).
        return_argmax: also return the argmax (``None`` for ``"avg"``), which
            :func:`roi_warp_backward` needs in ``"max"`` mode.

    Returns:
        ``out`` ``(R, C, Ph, Pw)`` of ``input``'s dtype, or ``(out, argmax)``: ``argmax``
        ``(R, C, Ph, Pw)`` int64 index ``iy * grid_w + ix`` of the winning sample in its bin
        (-1 for an empty grid) in ``"max"`` mode, ``None`` in ``"avg"`` mode.

    Raises:
        TypeError / ValueError: as :func:`minimaskrcnn.ops.roi_align`, or an unknown ``mode``.
    """
    input = check_input("input", input)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    use_max = _check_mode(mode)
    rois = convert_boxes_to_rois(boxes, input.shape[0], input.dtype, like=input)
    fn = backend.implementation(__name__, "roi_warp", tier, input, rois)
    N, C, H, W = input.shape
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        xp = backend.get_array_module(input)
        out = xp.zeros((rois.shape[0], C, pooled_h, pooled_w), dtype=input.dtype)
        argmax = xp.full(out.shape, -1, dtype=np.int64) if use_max else None
    else:
        out, argmax = fn(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, use_max)
    return (out, argmax) if return_argmax else out


def roi_warp_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                      sampling_ratio=-1, mode="avg", *, tier=None, argmax=None,
                      deterministic=False):
    """Gradient of :func:`roi_warp` w.r.t. its input.

    ``"avg"``: every sample scatters ``grad * w / count`` to its bilinear neighbours (as
    RoIAlign). ``"max"``: only the winning sample (``argmax``) scatters ``grad * w``.

    Args:
        grad_output: ``(R, C, Ph, Pw)`` float32/float64.
        boxes, output_size, spatial_scale, sampling_ratio, mode: as given to the forward.
        input_shape: ``(N, C, H, W)`` of the forward's input.
        tier: kernel tier.
        argmax: ``(R, C, Ph, Pw)`` int64 from ``roi_warp(..., mode="max", return_argmax=True)``;
            required for ``"max"``, ignored for ``"avg"``.
        deterministic: GPU tiers only (see :func:`minimaskrcnn.ops.roi_align_backward`).

    Returns:
        ``(N, C, H, W)`` array of ``grad_output``'s dtype.

    Raises:
        ValueError: shapes that disagree, unknown mode, ``"max"`` without a valid ``argmax``.
    """
    check_array("grad_output", grad_output, ndim=4, float_only=True,
                expected="(R, C, Ph, Pw) float32 or float64")
    grad_output = check_input("grad_output", grad_output)
    N, C, H, W = check_input_shape(input_shape)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    use_max = _check_mode(mode)
    rois = convert_boxes_to_rois(boxes, N, grad_output.dtype, like=grad_output)
    want = (rois.shape[0], C, pooled_h, pooled_w)
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output must have shape (R, C, Ph, Pw) = {want}, "
                         f"got {tuple(grad_output.shape)}")
    xp = backend.get_array_module(grad_output)
    if use_max:
        if argmax is None:
            raise ValueError("mode='max' needs argmax (from roi_warp(..., return_argmax=True))")
        check_array("argmax", argmax, ndim=4, expected="(R, C, Ph, Pw) int64")
        if tuple(argmax.shape) != want or not xp.issubdtype(argmax.dtype, xp.integer):
            raise ValueError(f"argmax must be an integer array of shape {want}, "
                             f"got {argmax.dtype} {tuple(argmax.shape)}")
        argmax = xp.ascontiguousarray(argmax, dtype=np.int64)
    fn = backend.implementation(__name__, "roi_warp_backward", tier, grad_output, rois)
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        return xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    return fn(grad_output, rois, argmax if use_max else None, (N, C, H, W), pooled_h, pooled_w,
              spatial_scale, sampling_ratio, use_max, deterministic=bool(deterministic))
