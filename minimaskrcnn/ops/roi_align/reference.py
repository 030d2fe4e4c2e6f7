"""NumPy reference of RoIAlign (and of RoIWarp, which shares its sampling): the specification.

The loops transcribe torchvision's ``roi_align`` CPU kernel index by index, vectorised only over
channels: for each RoI, bin ``(ph, pw)`` and sample ``(iy, ix)`` the scalar helpers of
:mod:`minimaskrcnn.ops._roi_common` give the sample's coordinates and bilinear weights, and the
``C`` channel values are combined at once. Shapes: input ``(N, C, H, W)``, rois ``(R, 5)``
``[batch_idx, x1, y1, x2, y2]`` in input pixels, output ``(R, C, Ph, Pw)``.

:func:`sample_forward` / :func:`sample_backward` are the one sampling kernel of every tier,
used by RoIAlign and RoIWarp alike, with keyword flags: ``aligned`` (the half-pixel shift),
``quantize`` (round the RoI to the feature grid first: RoIWarp) and ``use_max`` (the largest
sample of each bin instead of the mean: ``mode="max"``, the paper's RoIAlign-max and RoIWarp-max
rows of Table 2c). Each tier module (``numba_cpu``, ``numba_cuda``, ``cupy``) exports the same
two functions with the same signatures; nothing else is looked up by the backend.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.ops._roi_common import interp_axis, quantized_span, sample_point, sampling_axis


def roi_geometry(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize):
    """Sampling grid of one RoI: ``(n, start_h, bin_h, grid_h, start_w, bin_w, grid_w)``.

    ``roi`` is one row ``[batch_idx, x1, y1, x2, y2]`` of the input dtype; ``spatial_scale`` of
    the same dtype. Grids are clamped to >= 0 (torchvision's negative grids sample nothing).
    """
    n = int(roi[0])
    x1, y1, x2, y2 = (roi[k] * spatial_scale for k in (1, 2, 3, 4))
    if quantize:  # RoIWarp: the RoIPool box, then RoIAlign's sampling without the -0.5 shift
        xs, wq = quantized_span(x1, x2)
        ys, hq = quantized_span(y1, y2)
        dt = type(x1)
        x1, x2, y1, y2 = dt(xs), dt(xs + wq), dt(ys), dt(ys + hq)
    start_h, bin_h, grid_h = sampling_axis(y1, y2, pooled_h, sampling_ratio, aligned)
    start_w, bin_w, grid_w = sampling_axis(x1, x2, pooled_w, sampling_ratio, aligned)
    return n, start_h, bin_h, max(grid_h, 0), start_w, bin_w, max(grid_w, 0)


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, *,
                   aligned, quantize, use_max):
    """Bilinear sampling of every RoI bin; mean or max per bin.

    Args:
        input: ``(N, C, H, W)`` float32/float64; rois: ``(R, 5)`` validated
        ``[batch_idx, x1, y1, x2, y2]`` of the input's dtype, input pixels.
        pooled_h, pooled_w: bins; spatial_scale: cells per pixel; sampling_ratio: samples per
        bin per axis (``<= 0`` adaptive).
        aligned, quantize, use_max: the flags of the module docstring.

    Returns:
        ``(out, argmax)``: ``out`` ``(R, C, Ph, Pw)`` of the input dtype; ``argmax`` ``(R, C, Ph,
        Pw)`` int64 index ``iy * grid_w + ix`` of the winning sample (first maximum; -1 for an
        empty grid) when ``use_max``, else ``None``.
    """
    N, C, H, W = input.shape
    R = rois.shape[0]
    dt = input.dtype.type
    scale = dt(spatial_scale)
    out = np.zeros((R, C, pooled_h, pooled_w), dtype=input.dtype)
    argmax = np.full((R, C, pooled_h, pooled_w), -1, dtype=np.int64) if use_max else None
    for r in range(R):
        n, start_h, bin_h, grid_h, start_w, bin_w, grid_w = roi_geometry(
            rois[r], scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize)
        count = dt(max(grid_h * grid_w, 1))
        fmap = input[n]  # (C, H, W)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                acc = np.zeros(C, dtype=input.dtype)
                best = np.zeros(C, dtype=input.dtype)
                best_k = np.full(C, -1, dtype=np.int64)
                for iy in range(grid_h):
                    y = sample_point(start_h, bin_h, ph, iy, grid_h)
                    valid_y, y_lo, y_hi, hy, ly = interp_axis(y, H)
                    for ix in range(grid_w):
                        x = sample_point(start_w, bin_w, pw, ix, grid_w)
                        valid_x, x_lo, x_hi, hx, lx = interp_axis(x, W)
                        if valid_y and valid_x:
                            val = ((hy * hx) * fmap[:, y_lo, x_lo] + (hy * lx) * fmap[:, y_lo, x_hi]
                                   + (ly * hx) * fmap[:, y_hi, x_lo] + (ly * lx) * fmap[:, y_hi, x_hi])
                        else:
                            val = np.zeros(C, dtype=input.dtype)
                        k = iy * grid_w + ix
                        if use_max:  # strict '>' keeps the first maximum
                            better = (val > best) | (k == 0)
                            best = np.where(better, val, best)
                            best_k = np.where(better, k, best_k)
                        else:
                            acc += val
                if use_max:
                    out[r, :, ph, pw] = best
                    argmax[r, :, ph, pw] = best_k
                else:
                    out[r, :, ph, pw] = acc / count
    return out, argmax


def sample_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, *, aligned, quantize, use_max, argmax=None,
                    deterministic=False):
    """Adjoint of :func:`sample_forward` with respect to the input: ``(N, C, H, W)``.

    Each sample scatters ``grad * w / count`` (mean) to its four neighbours, or, for ``use_max``,
    only the winning sample ``argmax`` (``(R, C, Ph, Pw)`` int64 from the forward) scatters
    ``grad * w``. ``deterministic`` is accepted for a common signature and ignored: the CPU tiers
    are always deterministic.
    """
    N, C, H, W = input_shape
    R = rois.shape[0]
    dt = grad_output.dtype.type
    scale = dt(spatial_scale)
    grad_input = np.zeros((N, C, H, W), dtype=grad_output.dtype)
    for r in range(R):
        n, start_h, bin_h, grid_h, start_w, bin_w, grid_w = roi_geometry(
            rois[r], scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize)
        count = dt(max(grid_h * grid_w, 1))
        gin = grad_input[n]  # (C, H, W), a view
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                g = grad_output[r, :, ph, pw]  # (C,)
                for iy in range(grid_h):
                    y = sample_point(start_h, bin_h, ph, iy, grid_h)
                    valid_y, y_lo, y_hi, hy, ly = interp_axis(y, H)
                    for ix in range(grid_w):
                        x = sample_point(start_w, bin_w, pw, ix, grid_w)
                        valid_x, x_lo, x_hi, hx, lx = interp_axis(x, W)
                        if not (valid_y and valid_x):
                            continue
                        if use_max:
                            gk = np.where(argmax[r, :, ph, pw] == iy * grid_w + ix, g, dt(0))
                            gin[:, y_lo, x_lo] += gk * (hy * hx)
                            gin[:, y_lo, x_hi] += gk * (hy * lx)
                            gin[:, y_hi, x_lo] += gk * (ly * hx)
                            gin[:, y_hi, x_hi] += gk * (ly * lx)
                        else:
                            gin[:, y_lo, x_lo] += g * (hy * hx) / count
                            gin[:, y_lo, x_hi] += g * (hy * lx) / count
                            gin[:, y_hi, x_lo] += g * (ly * hx) / count
                            gin[:, y_hi, x_hi] += g * (ly * lx) / count
    return grad_input
