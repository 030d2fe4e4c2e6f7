"""Numba CUDA tier of RoIAlign (and RoIWarp): ``@cuda.jit`` kernels with grid-stride loops.

Forward: one thread per output element ``(r, c, ph, pw)``; the thread recomputes its RoI's
geometry with the shared helpers of :mod:`minimaskrcnn.ops._roi_common` (compiled as device
functions in :mod:`minimaskrcnn.ops._cuda_common`) and averages (or maxes) its bin's bilinear
samples (``bilinear_interpolate``).

Backward, two variants:

* ``deterministic=False`` (default, torchvision's CUDA backward): one thread per
  ``grad_output`` element scatters ``grad * w / count`` into ``grad_input`` with
  ``cuda.atomic.add`` (``bilinear_accumulate``). Many threads add into the same cell
  (neighbouring samples, overlapping RoIs), and the hardware serialises those atomics in
  whatever order the threads arrive.
  Floating-point addition is not associative, so the last bits of the result depend on that
  order, which changes from run to run: the result is correct but not bitwise reproducible.
* ``deterministic=True``: a gather. One thread per ``grad_input`` cell ``(n, c, h, w)`` scans
  the RoIs of image ``n`` in increasing index (skipping RoIs whose samples cannot reach row
  ``h`` or column ``w``) and sums, for each bin, ``grad * (sum of the samples' row weights for
  h) * (sum of their column weights for w) / count`` (bilinear weights factor per axis). Each
  cell has one writer and a fixed order: bitwise reproducible, at the price of every thread
  visiting every RoI of its image.

Arithmetic stays in the input's dtype (``np.float32`` literals; ``v * np.float32(0) + c``
converts an integer ``c`` to ``v``'s dtype). Arrays may be NumPy (copied to and from the
device) or CuPy/device arrays (used in place; the result is then a CuPy array).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from minimaskrcnn import backend
from minimaskrcnn.ops._cuda_common import (
    ROI_MAX_BLOCKS,
    bilinear_accumulate,
    bilinear_interpolate,
    device_in,
    device_out,
    finish,
    interp_axis,
    launch_1d,
    launch_stream,
    quantized_span,
    sample_point,
    sampling_axis,
)
from minimaskrcnn.ops._roi_common import rois_by_image


@cuda.jit(device=True)
def _geometry(rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize):
    """``(n, start_h, bin_h, grid_h, start_w, bin_w, grid_w)`` of RoI ``r`` (grids >= 0)."""
    x1 = rois[r, 1] * scale
    y1 = rois[r, 2] * scale
    x2 = rois[r, 3] * scale
    y2 = rois[r, 4] * scale
    if quantize:
        xs, wq = quantized_span(x1, x2)
        ys, hq = quantized_span(y1, y2)
        x2 = x1 * np.float32(0.0) + np.float32(xs + wq)
        x1 = x1 * np.float32(0.0) + np.float32(xs)
        y2 = y1 * np.float32(0.0) + np.float32(ys + hq)
        y1 = y1 * np.float32(0.0) + np.float32(ys)
    start_h, bin_h, grid_h = sampling_axis(y1, y2, pooled_h, sampling_ratio, aligned)
    start_w, bin_w, grid_w = sampling_axis(x1, x2, pooled_w, sampling_ratio, aligned)
    return int(rois[r, 0]), start_h, bin_h, max(grid_h, 0), start_w, bin_w, max(grid_w, 0)


@cuda.jit(device=True)
def _axis_weight(cell, y, size):
    """Total weight that a sample at coordinate ``y`` gives to row (or column) ``cell``."""
    valid, lo, hi, w_lo, w_hi = interp_axis(y, size)
    wt = w_lo * np.float32(0.0)
    if valid:
        if lo == cell:
            wt += w_lo
        if hi == cell:
            wt += w_hi
    return wt


@cuda.jit
def _forward_kernel(inp, rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize,
                    use_max, out, argmax):
    C = inp.shape[1]
    H = inp.shape[2]
    W = inp.shape[3]
    total = rois.shape[0] * C * pooled_h * pooled_w
    zero = scale * np.float32(0.0)
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        pw = idx % pooled_w
        ph = (idx // pooled_w) % pooled_h
        c = (idx // (pooled_w * pooled_h)) % C
        r = idx // (pooled_w * pooled_h * C)
        n, start_h, bin_h, grid_h, start_w, bin_w, grid_w = _geometry(
            rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize)
        plane = inp[n, c]
        acc = zero
        best = zero
        best_k = -1
        for iy in range(grid_h):
            y = sample_point(start_h, bin_h, ph, iy, grid_h)
            vy, y_lo, y_hi, hy, ly = interp_axis(y, H)
            for ix in range(grid_w):
                x = sample_point(start_w, bin_w, pw, ix, grid_w)
                vx, x_lo, x_hi, hx, lx = interp_axis(x, W)
                val = zero
                if vy and vx:
                    val = bilinear_interpolate(plane, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx)
                k = iy * grid_w + ix
                if use_max:
                    if k == 0 or val > best:
                        best = val
                        best_k = k
                else:
                    acc += val
        if use_max:
            out[r, c, ph, pw] = best
            argmax[r, c, ph, pw] = best_k
        else:
            out[r, c, ph, pw] = acc / np.float32(max(grid_h * grid_w, 1))


@cuda.jit
def _backward_atomic_kernel(gout, rois, argmax, scale, pooled_h, pooled_w, sampling_ratio,
                            aligned, quantize, use_max, gin):
    C = gin.shape[1]
    H = gin.shape[2]
    W = gin.shape[3]
    total = rois.shape[0] * C * pooled_h * pooled_w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        pw = idx % pooled_w
        ph = (idx // pooled_w) % pooled_h
        c = (idx // (pooled_w * pooled_h)) % C
        r = idx // (pooled_w * pooled_h * C)
        n, start_h, bin_h, grid_h, start_w, bin_w, grid_w = _geometry(
            rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize)
        plane = gin[n, c]
        g = gout[r, c, ph, pw]
        count = np.float32(max(grid_h * grid_w, 1))
        k_only = -1
        if use_max:
            k_only = argmax[r, c, ph, pw]
            if k_only < 0:
                continue
            count = np.float32(1.0)
        for iy in range(grid_h):
            y = sample_point(start_h, bin_h, ph, iy, grid_h)
            vy, y_lo, y_hi, hy, ly = interp_axis(y, H)
            for ix in range(grid_w):
                if use_max and iy * grid_w + ix != k_only:
                    continue
                x = sample_point(start_w, bin_w, pw, ix, grid_w)
                vx, x_lo, x_hi, hx, lx = interp_axis(x, W)
                if vy and vx:
                    bilinear_accumulate(plane, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx, g, count)


@cuda.jit
def _backward_gather_kernel(gout, rois, argmax, order, starts, scale, pooled_h, pooled_w,
                            sampling_ratio, aligned, quantize, use_max, gin):
    C = gin.shape[1]
    H = gin.shape[2]
    W = gin.shape[3]
    total = gin.shape[0] * C * H * W
    zero = scale * np.float32(0.0)
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = idx % W
        h = (idx // W) % H
        c = (idx // (W * H)) % C
        n = idx // (W * H * C)
        acc = zero
        for j in range(starts[n], starts[n + 1]):
            r = order[j]
            _, start_h, bin_h, grid_h, start_w, bin_w, grid_w = _geometry(
                rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize)
            if grid_h == 0 or grid_w == 0:
                continue
            # Samples lie between start and end = start + pooled * bin (bin < 0 for an
            # inverted box with aligned=True); a sample reaches only the rows (columns) within
            # 1 of it, so farther RoIs contribute nothing.
            end_h = start_h + np.float32(pooled_h) * bin_h
            end_w = start_w + np.float32(pooled_w) * bin_w
            hf = np.float32(h)  # compared in the float dtype (int vs float32 would be f64)
            wf = np.float32(w)
            one = np.float32(1.0)
            if (min(start_h, end_h) > hf + one or max(start_h, end_h) < hf - one
                    or min(start_w, end_w) > wf + one or max(start_w, end_w) < wf - one):
                continue
            count = np.float32(max(grid_h * grid_w, 1))
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    g = gout[r, c, ph, pw]
                    if use_max:
                        k = argmax[r, c, ph, pw]
                        if k >= 0:
                            y = sample_point(start_h, bin_h, ph, k // grid_w, grid_h)
                            x = sample_point(start_w, bin_w, pw, k % grid_w, grid_w)
                            acc += g * (_axis_weight(h, y, H) * _axis_weight(w, x, W))
                        continue
                    wy = zero
                    for iy in range(grid_h):
                        wy += _axis_weight(h, sample_point(start_h, bin_h, ph, iy, grid_h), H)
                    if wy == 0:
                        continue
                    wx = zero
                    for ix in range(grid_w):
                        wx += _axis_weight(w, sample_point(start_w, bin_w, pw, ix, grid_w), W)
                    acc += g * (wy * wx) / count
        gin[n, c, h, w] = acc


# --------------------------------------------------------------------------------------------
# Host wrappers
# --------------------------------------------------------------------------------------------


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, *,
                   aligned, quantize, use_max):
    """Same contract as ``reference.sample_forward``: ``(out, argmax or None)``."""
    N, C, H, W = input.shape
    R = rois.shape[0]
    out = device_out((R, C, pooled_h, pooled_w), input.dtype, input)
    argmax = device_out((R, C, pooled_h, pooled_w) if use_max else (1, 1, 1, 1), np.int64, input)
    blocks, threads = launch_1d(R * C * pooled_h * pooled_w, ROI_MAX_BLOCKS)
    _forward_kernel[blocks, threads, launch_stream(input)](
        device_in(input), device_in(rois), input.dtype.type(spatial_scale), pooled_h, pooled_w,
        sampling_ratio, aligned, quantize, use_max, out[0], argmax[0])
    return finish(*out), (finish(*argmax) if use_max else None)


def sample_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, *, aligned, quantize, use_max, argmax=None,
                    deterministic=False):
    """Same contract as ``reference.sample_backward``; atomics or gather (module docstring)."""
    N, C, H, W = input_shape
    R = rois.shape[0]
    dt = grad_output.dtype.type
    gout = device_in(grad_output)
    d_rois = device_in(rois)
    am = device_in(argmax) if use_max else device_out((1, 1, 1, 1), np.int64, grad_output,
                                                      zero=True)[0]
    stream = launch_stream(grad_output)
    if deterministic:
        order, starts = rois_by_image(backend.to_numpy(rois)[:, 0], N)
        gin = device_out((N, C, H, W), grad_output.dtype, grad_output)
        blocks, threads = launch_1d(N * C * H * W, ROI_MAX_BLOCKS)
        _backward_gather_kernel[blocks, threads, stream](
            gout, d_rois, am, cuda.to_device(order), cuda.to_device(starts), dt(spatial_scale),
            pooled_h, pooled_w, sampling_ratio, aligned, quantize, use_max, gin[0])
    else:
        gin = device_out((N, C, H, W), grad_output.dtype, grad_output, zero=True)
        blocks, threads = launch_1d(R * C * pooled_h * pooled_w, ROI_MAX_BLOCKS)
        _backward_atomic_kernel[blocks, threads, stream](
            gout, d_rois, am, dt(spatial_scale), pooled_h, pooled_w, sampling_ratio, aligned,
            quantize, use_max, gin[0])
    return finish(*gin)
