"""RoIPool (Fast R-CNN, Girshick 2015, section 2.1), torchvision.ops.roi_pool semantics.

The RoI is quantised to the feature grid: corners ``round(coord * spatial_scale)`` (half away
from zero, C ``round``), width and height ``max(x2 - x1 + 1, 1)`` cells. Bin ``k`` of ``Ph``
covers cells ``[floor(k * b), ceil((k + 1) * b))`` with ``b = height / Ph``, offset by the RoI
start and clipped to the map (neighbouring bins may share a cell). The output is the bin's
maximum (start value ``-FLT_MAX``, strict ``>``: the first maximum in row-major order wins); an
empty bin outputs 0 with argmax -1. The backward routes each output gradient to its argmax cell.

Tiers: ``reference.py`` (NumPy), ``numba_cpu.py`` (parallel; deterministic backward),
``numba_cuda.py`` (one thread per output element; backward with atomics or a deterministic
gather), ``cupy.py`` (RawKernels).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array
from minimaskrcnn.ops._roi_common import (
    check_input,
    check_input_shape,
    check_roi_extent,
    check_spatial_scale,
    convert_boxes_to_rois,
    output_size_pair,
)

__all__ = ["roi_pool", "roi_pool_backward"]


def roi_pool(input, boxes, output_size, spatial_scale=1.0, *, tier=None, return_argmax=False):
    """RoIPool: quantised max pooling of each RoI to ``Ph x Pw`` bins.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 feature map.
        boxes: ``(R, 5)`` float ``[batch_idx, x1, y1, x2, y2]`` or a list of ``(R_i, 4)`` per
            image, input pixels; cast to ``input``'s dtype.
        output_size: ``Ph`` or ``(Ph, Pw)``.
        spatial_scale: feature cells per input pixel.
        tier: kernel tier (``None``: backend default).
        return_argmax: also return the argmax needed by :func:`roi_pool_backward`.

    Returns:
        ``out`` ``(R, C, Ph, Pw)`` of ``input``'s dtype, or ``(out, argmax)`` with ``argmax``
        ``(R, C, Ph, Pw)`` int64: the flat index ``h * W + w`` of the winning cell in its
        ``H x W`` input plane, -1 for an empty bin.

    Raises:
        TypeError / ValueError: as :func:`minimaskrcnn.ops.roi_align` (shapes, dtypes,
            non-finite boxes, batch index out of range, output_size < 1, spatial_scale <= 0).
    """
    input = check_input("input", input)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    rois = convert_boxes_to_rois(boxes, input.shape[0], input.dtype, like=input)
    check_roi_extent("roi_pool", rois, spatial_scale)
    fn = backend.implementation(__name__, "roi_pool", tier, input, rois)
    N, C, H, W = input.shape
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        xp = backend.get_array_module(input)
        out = xp.zeros((rois.shape[0], C, pooled_h, pooled_w), dtype=input.dtype)
        argmax = xp.full(out.shape, -1, dtype=np.int64)
    else:
        out, argmax = fn(input, rois, pooled_h, pooled_w, spatial_scale)
    return (out, argmax) if return_argmax else out


def roi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, *,
                      argmax=None, tier=None, deterministic=False):
    """Gradient of :func:`roi_pool` w.r.t. its input: each output gradient goes to its argmax.

    The RoI ops' common backward signature (``grad_output, boxes, input_shape`` and then the
    forward's arguments); RoIPool's backward needs only the batch indices of ``boxes`` and the
    argmax, ``output_size`` and ``spatial_scale`` are checked against ``grad_output``.

    Args:
        grad_output: ``(R, C, Ph, Pw)`` float32/float64.
        boxes, output_size, spatial_scale: as given to the forward.
        input_shape: ``(N, C, H, W)`` of the forward's input.
        argmax: ``(R, C, Ph, Pw)`` int64 from ``roi_pool(..., return_argmax=True)`` (required).
        tier: kernel tier.
        deterministic: GPU tiers only: ``True`` gathers per input cell in a fixed order instead
            of atomic adds (see :func:`minimaskrcnn.ops.roi_align_backward`).

    Returns:
        ``(N, C, H, W)`` array of ``grad_output``'s dtype.

    Raises:
        ValueError: shapes that disagree, a missing argmax, argmax outside ``[-1, H*W)``.
    """
    check_array("grad_output", grad_output, ndim=4, float_only=True,
                expected="(R, C, Ph, Pw) float32 or float64")
    grad_output = check_input("grad_output", grad_output)
    N, C, H, W = check_input_shape(input_shape)
    pooled_h, pooled_w = output_size_pair(output_size)
    check_spatial_scale(spatial_scale)
    rois = convert_boxes_to_rois(boxes, N, grad_output.dtype, like=grad_output)
    want = (rois.shape[0], C, pooled_h, pooled_w)
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output must have shape (R, C, Ph, Pw) = {want}, "
                         f"got {tuple(grad_output.shape)}")
    if argmax is None:
        raise ValueError("roi_pool_backward needs argmax (from roi_pool(..., return_argmax=True))")
    check_array("argmax", argmax, ndim=4, expected="(R, C, Ph, Pw) int64")
    xp = backend.get_array_module(grad_output)
    if tuple(argmax.shape) != want or not xp.issubdtype(argmax.dtype, xp.integer):
        raise ValueError(f"argmax must be an integer array of shape {want}, "
                         f"got {argmax.dtype} {tuple(argmax.shape)}")
    if argmax.size and (int(argmax.min()) < -1 or int(argmax.max()) >= H * W):
        raise ValueError(f"argmax values must lie in [-1, H*W) = [-1, {H * W})")
    fn = backend.implementation(__name__, "roi_pool_backward", tier, grad_output, rois)
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        return xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    return fn(grad_output, rois, xp.ascontiguousarray(argmax, dtype=np.int64), (N, C, H, W),
              deterministic=bool(deterministic))
