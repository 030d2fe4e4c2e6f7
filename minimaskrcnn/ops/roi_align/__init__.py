"""RoIAlign (Mask R-CNN, He et al. 2017, section 3 "RoIAlign"), torchvision.ops.roi_align semantics.

For each RoI, the box is scaled by ``spatial_scale`` to feature-map cells and never rounded
(``aligned=True`` also subtracts 0.5: pixel-centre model; ``aligned=False`` clamps the RoI's
width and height to at least 1 cell). The RoI is cut into ``Ph x Pw`` bins of size
``roi / pooled``; each bin is sampled on a ``grid_h x grid_w`` grid (``sampling_ratio`` per axis
if > 0, else ``ceil(roi / pooled)``) at ``bin start + (i + 0.5) * bin / grid``; each sample is a
bilinear interpolation of the four nearest cells, and the output is the mean over the grid (an
empty grid gives 0). A sample with ``y < -1`` or ``y > H`` (or ``x`` likewise) contributes 0;
otherwise negative coordinates clamp to 0 and samples at or beyond the last row/column use that
row/column.

``mode="max"`` is the paper's RoIAlign-max (Table 2c): the same samples, but each bin outputs its
largest sample instead of the mean; the backward sends the bin's gradient to the four bilinear
neighbours of that arg-max sample only (first maximum wins ties, as RoIPool's strict ``>``).

Every tier module of this package (``reference.py`` NumPy, ``numba_cpu.py`` parallel with a
deterministic backward, ``numba_cuda.py`` one thread per output element with atomics or a
deterministic gather, ``cupy.py`` the same CUDA kernels as RawKernels) exports one sampling
kernel pair, ``sample_forward`` / ``sample_backward``, with keyword flags ``aligned``,
``quantize`` and ``use_max``. RoIAlign calls it with ``quantize=False``; RoIWarp
(:mod:`minimaskrcnn.ops.roi_warp`) with ``quantize=True``; so RoIWarp has no tier files.

The RoI ops share one signature family (torchvision's, extended)::

    out[, argmax] = op(input, boxes, output_size, spatial_scale, <op's own args>, *,
                       mode=..., tier=None, return_argmax=False)
    grad_input = op_backward(grad_output, boxes, input_shape, output_size, spatial_scale,
                             <op's own args>, *, mode=..., argmax=None, tier=None,
                             deterministic=False)
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import check_array
from minimaskrcnn.ops._roi_common import (
    check_input,
    check_input_shape,
    check_roi_extent,
    check_sampling_ratio,
    check_spatial_scale,
    convert_boxes_to_rois,
    output_size_pair,
)

__all__ = ["MODES", "roi_align", "roi_align_backward"]

MODES = ("avg", "max")
"""Per-bin aggregation of the bilinear RoI ops: the mean of the samples, or their maximum."""


def check_mode(mode) -> bool:
    """``mode`` must be ``"avg"`` or ``"max"``; returns ``use_max``. Raises ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    return mode == "max"


def check_argmax(argmax, want, xp):
    """The argmax of a max-mode backward: an integer array of shape ``want``; returns it int64
    and C-contiguous. Raises ``ValueError`` (missing, wrong shape or dtype)."""
    if argmax is None:
        raise ValueError("mode='max' needs argmax (from the forward with return_argmax=True)")
    check_array("argmax", argmax, ndim=4, expected="(R, C, Ph, Pw) int64")
    if tuple(argmax.shape) != want or not xp.issubdtype(argmax.dtype, xp.integer):
        raise ValueError(f"argmax must be an integer array of shape {want}, "
                         f"got {argmax.dtype} {tuple(argmax.shape)}")
    return xp.ascontiguousarray(argmax, dtype=np.int64)


def sample(op, input, boxes, output_size, spatial_scale, sampling_ratio, *, aligned, quantize,
           mode, tier, return_argmax):
    """Validate, then run the tier's ``sample_forward`` (shared by RoIAlign and RoIWarp).

    ``op`` names the public op in error messages; ``quantize`` is RoIWarp's rounding. The other
    arguments, the result (``(R, C, Ph, Pw)`` of ``input``'s dtype, with the ``(R, C, Ph, Pw)``
    int64 argmax when asked) and the errors are :func:`roi_align`'s.
    """
    input = check_input("input", input)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    use_max = check_mode(mode)
    rois = convert_boxes_to_rois(boxes, input.shape[0], input.dtype, like=input)
    check_roi_extent(op, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, bool(aligned),
                     quantize)
    fn = backend.implementation(__name__, "sample_forward", tier, input, rois)
    N, C, H, W = input.shape
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        xp = backend.get_array_module(input)
        out = xp.zeros((rois.shape[0], C, pooled_h, pooled_w), dtype=input.dtype)
        argmax = xp.full(out.shape, -1, dtype=np.int64) if use_max else None
    else:
        out, argmax = fn(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                         aligned=bool(aligned), quantize=quantize, use_max=use_max)
    return (out, argmax) if return_argmax else out


def sample_grad(op, grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio,
                *, aligned, quantize, mode, argmax, tier, deterministic):
    """Validate, then run the tier's ``sample_backward`` (shared by RoIAlign and RoIWarp).

    Arguments, the result (``(N, C, H, W)`` of ``grad_output``'s dtype) and the errors are
    :func:`roi_align_backward`'s, plus ``op`` and ``quantize`` as in :func:`sample`.
    """
    check_array("grad_output", grad_output, ndim=4, float_only=True,
                expected="(R, C, Ph, Pw) float32 or float64")
    grad_output = check_input("grad_output", grad_output)
    N, C, H, W = check_input_shape(input_shape)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    use_max = check_mode(mode)
    rois = convert_boxes_to_rois(boxes, N, grad_output.dtype, like=grad_output)
    want = (rois.shape[0], C, pooled_h, pooled_w)
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output must have shape (R, C, Ph, Pw) = {want}, "
                         f"got {tuple(grad_output.shape)}")
    check_roi_extent(op, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, bool(aligned),
                     quantize)
    xp = backend.get_array_module(grad_output)
    argmax = check_argmax(argmax, want, xp) if use_max else None
    fn = backend.implementation(__name__, "sample_backward", tier, grad_output, rois)
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        return xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    return fn(grad_output, rois, (N, C, H, W), pooled_h, pooled_w, spatial_scale, sampling_ratio,
              aligned=bool(aligned), quantize=quantize, use_max=use_max, argmax=argmax,
              deterministic=bool(deterministic))


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *,
              mode="avg", tier=None, return_argmax=False):
    """RoIAlign: bilinear, unquantised pooling of each RoI to ``Ph x Pw`` bins.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 feature map.
        boxes: ``(R, 5)`` float ``[batch_idx, x1, y1, x2, y2]`` or a list of ``(R_i, 4)`` float
            ``[x1, y1, x2, y2]`` (one per image), in input pixels; cast to ``input``'s dtype.
        output_size: ``Ph`` (int, square) or ``(Ph, Pw)``.
        spatial_scale: feature cells per input pixel (1/4 for a stride-4 map).
        sampling_ratio: samples per bin per axis; ``<= 0`` means adaptive ``ceil(roi / pooled)``.
        aligned: ``True`` shifts the RoI by -0.5 cell (Detectron2's pixel model).
        mode: ``"avg"`` (RoIAlign, torchvision's op) or ``"max"`` (the paper's RoIAlign-max).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"``, ``"cupy"`` or ``None`` (backend default).
        return_argmax: also return the argmax that :func:`roi_align_backward` needs for
            ``mode="max"`` (``None`` for ``"avg"``).

    Returns:
        ``out`` ``(R, C, Ph, Pw)`` array of ``input``'s dtype (and array module), or
        ``(out, argmax)``: ``argmax`` ``(R, C, Ph, Pw)`` int64 index ``iy * grid_w + ix`` of the
        winning sample in its bin (-1 for an empty grid) for ``"max"``, ``None`` for ``"avg"``.
        Zero RoIs give an empty ``(0, C, Ph, Pw)`` array.

    Raises:
        TypeError: ``input`` or ``boxes`` not floating arrays; bad ``output_size`` type.
        ValueError: wrong shapes, non-finite boxes, batch index not an integer in ``[0, N)``,
            ``output_size`` < 1, ``spatial_scale`` <= 0, unknown ``mode``, coordinates beyond
            +-2**24 cells or more than 2**22 samples for one RoI (``_roi_common.check_roi_extent``).
        TierUnavailableError: the tier cannot run here.
    """
    return sample("roi_align", input, boxes, output_size, spatial_scale, sampling_ratio,
                  aligned=aligned, quantize=False, mode=mode, tier=tier,
                  return_argmax=return_argmax)


def roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, *, mode="avg", argmax=None, tier=None,
                       deterministic=False):
    """Gradient of :func:`roi_align` with respect to its input (torchvision's backward).

    ``"avg"``: each sample scatters ``grad * w / count`` to its four bilinear neighbours.
    ``"max"``: only the bin's arg-max sample scatters ``grad * w``.

    Args:
        grad_output: ``(R, C, Ph, Pw)`` float32/float64 gradient of the output.
        boxes, output_size, spatial_scale, sampling_ratio, aligned, mode: as given to the forward.
        input_shape: ``(N, C, H, W)`` of the forward's input.
        argmax: ``(R, C, Ph, Pw)`` int64 from ``roi_align(..., mode="max", return_argmax=True)``;
            required for ``"max"``, ignored for ``"avg"``.
        tier: as in :func:`roi_align`.
        deterministic: GPU tiers only (``"cuda"``, ``"cupy"``): ``False`` uses atomic adds,
            whose float sums depend on thread scheduling; ``True`` gathers per input cell in a
            fixed order (bitwise reproducible, slower). The CPU tiers are always deterministic.

    Returns:
        ``(N, C, H, W)`` array of ``grad_output``'s dtype.

    Raises:
        TypeError / ValueError: as in :func:`roi_align`, ``grad_output``'s shape does not match
            ``(R, C, Ph, Pw)``, or ``"max"`` without a valid ``argmax``.
    """
    return sample_grad("roi_align", grad_output, boxes, input_shape, output_size, spatial_scale,
                       sampling_ratio, aligned=aligned, quantize=False, mode=mode,
                       argmax=argmax, tier=tier, deterministic=deterministic)
