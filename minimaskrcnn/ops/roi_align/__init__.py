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

Tiers: ``reference.py`` (NumPy, the specification), ``numba_cpu.py`` (parallel, deterministic
backward), ``numba_cuda.py`` (one thread per output element; backward with atomics or, with
``deterministic=True``, a gather), ``cupy.py`` (the same CUDA kernels as RawKernels).
"""

from __future__ import annotations

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

__all__ = ["roi_align", "roi_align_backward"]


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *,
              tier=None):
    """RoIAlign: bilinear, unquantised pooling of each RoI to ``Ph x Pw`` bins.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 feature map.
        boxes: ``(R, 5)`` float ``[batch_idx, x1, y1, x2, y2]`` or a list of ``(R_i, 4)`` float
            ``[x1, y1, x2, y2]`` (one per image), in input pixels; cast to ``input``'s dtype.
        output_size: ``Ph`` (int, square) or ``(Ph, Pw)``.
        spatial_scale: feature cells per input pixel (1/4 for a stride-4 map).
        sampling_ratio: samples per bin per axis; ``<= 0`` means adaptive ``ceil(roi / pooled)``.
        aligned: ``True`` shifts the RoI by -0.5 cell (Detectron2's pixel model).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"``, ``"cupy"`` or ``None`` (backend default).

    Returns:
        ``(R, C, Ph, Pw)`` array of ``input``'s dtype (and array module). Zero RoIs give an
        empty ``(0, C, Ph, Pw)`` array.

    Raises:
        TypeError: ``input`` or ``boxes`` not floating arrays; bad ``output_size`` type.
        ValueError: wrong shapes, non-finite boxes, batch index not an integer in ``[0, N)``,
            ``output_size`` < 1, ``spatial_scale`` <= 0.
        TierUnavailableError: the tier cannot run here.
    """
    input = check_input("input", input)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    rois = convert_boxes_to_rois(boxes, input.shape[0], input.dtype, like=input)
    fn = backend.implementation(__name__, "roi_align", tier, input, rois)
    N, C, H, W = input.shape
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        xp = backend.get_array_module(input)
        return xp.zeros((rois.shape[0], C, pooled_h, pooled_w), dtype=input.dtype)
    return fn(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, bool(aligned))


def roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, *, tier=None, deterministic=False):
    """Gradient of :func:`roi_align` with respect to its input (torchvision's backward).

    Each sample scatters ``grad * w / count`` to its four bilinear neighbours.

    Args:
        grad_output: ``(R, C, Ph, Pw)`` float32/float64 gradient of the output.
        boxes, output_size, spatial_scale, sampling_ratio, aligned: as given to the forward.
        input_shape: ``(N, C, H, W)`` of the forward's input.
        tier: as in :func:`roi_align`.
        deterministic: GPU tiers only (``"cuda"``, ``"cupy"``): ``False`` uses atomic adds,
            whose float sums depend on thread scheduling; ``True`` gathers per input cell in a
            fixed order (bitwise reproducible, slower). The CPU tiers are always deterministic.

    Returns:
        ``(N, C, H, W)`` array of ``grad_output``'s dtype.

    Raises:
        TypeError / ValueError: as in :func:`roi_align`, or ``grad_output``'s shape does not match
            ``(R, C, Ph, Pw)``.
    """
    check_array("grad_output", grad_output, ndim=4, float_only=True,
                expected="(R, C, Ph, Pw) float32 or float64")
    N, C, H, W = check_input_shape(input_shape)
    pooled_h, pooled_w = output_size_pair(output_size)
    spatial_scale = check_spatial_scale(spatial_scale)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    grad_output = check_input("grad_output", grad_output)
    rois = convert_boxes_to_rois(boxes, N, grad_output.dtype, like=grad_output)
    want = (rois.shape[0], C, pooled_h, pooled_w)
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output must have shape (R, C, Ph, Pw) = {want}, "
                         f"got {tuple(grad_output.shape)}")
    fn = backend.implementation(__name__, "roi_align_backward", tier, grad_output, rois)
    if rois.shape[0] == 0 or C == 0 or H == 0 or W == 0:
        xp = backend.get_array_module(grad_output)
        return xp.zeros((N, C, H, W), dtype=grad_output.dtype)
    return fn(grad_output, rois, (N, C, H, W), pooled_h, pooled_w, spatial_scale,
              sampling_ratio, bool(aligned), deterministic=bool(deterministic))
