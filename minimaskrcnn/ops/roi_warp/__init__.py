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

So RoIWarp differs from RoIAlign only by step 1: the quantisation RoIAlign removes. It runs on
RoIAlign's sampling kernel of each tier (``roi_align/<tier>.py``, ``sample_forward`` /
``sample_backward`` with ``quantize=True, aligned=False``): this package has no tier files.
"""

from __future__ import annotations

from minimaskrcnn.ops.roi_align import MODES, sample, sample_grad

__all__ = ["MODES", "roi_warp", "roi_warp_backward"]


def roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, *, mode="avg",
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
    return sample("roi_warp", input, boxes, output_size, spatial_scale, sampling_ratio,
                  aligned=False, quantize=True, mode=mode, tier=tier, return_argmax=return_argmax)


def roi_warp_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                      sampling_ratio=-1, *, mode="avg", argmax=None, tier=None,
                      deterministic=False):
    """Gradient of :func:`roi_warp` w.r.t. its input.

    ``"avg"``: every sample scatters ``grad * w / count`` to its bilinear neighbours (as
    RoIAlign). ``"max"``: only the winning sample (``argmax``) scatters ``grad * w``.

    Args:
        grad_output: ``(R, C, Ph, Pw)`` float32/float64.
        boxes, output_size, spatial_scale, sampling_ratio, mode: as given to the forward.
        input_shape: ``(N, C, H, W)`` of the forward's input.
        argmax: ``(R, C, Ph, Pw)`` int64 from ``roi_warp(..., mode="max", return_argmax=True)``;
            required for ``"max"``, ignored for ``"avg"``.
        tier: kernel tier.
        deterministic: GPU tiers only (see :func:`minimaskrcnn.ops.roi_align_backward`).

    Returns:
        ``(N, C, H, W)`` array of ``grad_output``'s dtype.

    Raises:
        ValueError: shapes that disagree, unknown mode, ``"max"`` without a valid ``argmax``.
    """
    return sample_grad("roi_warp", grad_output, boxes, input_shape, output_size, spatial_scale,
                       sampling_ratio, aligned=False, quantize=True, mode=mode, argmax=argmax,
                       tier=tier, deterministic=deterministic)
