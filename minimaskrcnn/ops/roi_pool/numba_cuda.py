"""Numba CUDA tier of RoIPool: ``@cuda.jit`` kernels with grid-stride loops.

Forward: one thread per output element ``(r, c, ph, pw)`` scans its bin's cells. Backward:
``deterministic=False`` (torchvision's CUDA backward) has one thread per output element
atomically add its gradient at its argmax cell; when several RoIs (or overlapping bins) share an
argmax cell the additions land in scheduling order, and float addition is not associative, so
the result's last bits vary between runs. ``deterministic=True`` gathers instead: one thread per
input cell ``(n, c, h, w)`` scans the RoIs of image ``n`` in increasing index and their bins,
adding the gradients whose argmax is this cell: one writer per cell, fixed
order, bitwise reproducible (but every thread visits every RoI of its image).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from minimaskrcnn import backend
from minimaskrcnn.ops._cuda_common import (
    ROI_MAX_BLOCKS,
    device_in,
    device_out,
    finish,
    launch_1d,
    launch_stream,
    pool_bin,
    quantized_span,
)
from minimaskrcnn.ops._roi_common import rois_by_image

LOWEST = np.float32(-np.finfo(np.float32).max)


@cuda.jit(device=True)
def _pool_geometry(rois, r, scale, pooled_h, pooled_w):
    """``(n, start_h, bin_h, start_w, bin_w)``; bin sizes in the rois' dtype."""
    x1 = rois[r, 1] * scale
    start_w, width = quantized_span(x1, rois[r, 3] * scale)
    start_h, height = quantized_span(rois[r, 2] * scale, rois[r, 4] * scale)
    bin_h = (x1 * np.float32(0.0) + np.float32(height)) / np.float32(pooled_h)
    bin_w = (x1 * np.float32(0.0) + np.float32(width)) / np.float32(pooled_w)
    return int(rois[r, 0]), start_h, bin_h, start_w, bin_w


@cuda.jit
def _forward_kernel(inp, rois, scale, pooled_h, pooled_w, out, argmax):
    C = inp.shape[1]
    H = inp.shape[2]
    W = inp.shape[3]
    total = rois.shape[0] * C * pooled_h * pooled_w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        pw = idx % pooled_w
        ph = (idx // pooled_w) % pooled_h
        c = (idx // (pooled_w * pooled_h)) % C
        r = idx // (pooled_w * pooled_h * C)
        n, start_h, bin_h, start_w, bin_w = _pool_geometry(rois, r, scale, pooled_h, pooled_w)
        h0, h1 = pool_bin(ph, bin_h, start_h, H)
        w0, w1 = pool_bin(pw, bin_w, start_w, W)
        best = scale * np.float32(0.0)
        best_i = -1
        if h1 > h0 and w1 > w0:
            best = best + LOWEST
            for h in range(h0, h1):
                for w in range(w0, w1):
                    v = inp[n, c, h, w]
                    if v > best:
                        best = v
                        best_i = h * W + w
        out[r, c, ph, pw] = best
        argmax[r, c, ph, pw] = best_i


@cuda.jit
def _backward_atomic_kernel(gout, rois, argmax, gin):
    C = gin.shape[1]
    W = gin.shape[3]
    pooled_h = gout.shape[2]
    pooled_w = gout.shape[3]
    total = rois.shape[0] * C * pooled_h * pooled_w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        pw = idx % pooled_w
        ph = (idx // pooled_w) % pooled_h
        c = (idx // (pooled_w * pooled_h)) % C
        r = idx // (pooled_w * pooled_h * C)
        a = argmax[r, c, ph, pw]
        if a >= 0:  # -1: empty bin (guard: -1 would wrap around)
            cuda.atomic.add(gin, (int(rois[r, 0]), c, a // W, a % W), gout[r, c, ph, pw])


@cuda.jit
def _backward_gather_kernel(gout, rois, argmax, order, starts, zero, gin):
    """One thread per input cell; ``zero`` is 0 in the gradient's dtype."""
    C = gin.shape[1]
    H = gin.shape[2]
    W = gin.shape[3]
    pooled_h = gout.shape[2]
    pooled_w = gout.shape[3]
    total = gin.shape[0] * C * H * W
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = idx % W
        h = (idx // W) % H
        c = (idx // (W * H)) % C
        n = idx // (W * H * C)
        cell = h * W + w
        acc = zero
        for j in range(starts[n], starts[n + 1]):
            r = order[j]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    if argmax[r, c, ph, pw] == cell:
                        acc += gout[r, c, ph, pw]
        gin[n, c, h, w] = acc


def roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    N, C, H, W = input.shape
    R = rois.shape[0]
    out = device_out((R, C, pooled_h, pooled_w), input.dtype, input)
    argmax = device_out((R, C, pooled_h, pooled_w), np.int64, input)
    blocks, threads = launch_1d(R * C * pooled_h * pooled_w, ROI_MAX_BLOCKS)
    _forward_kernel[blocks, threads, launch_stream(input)](
        device_in(input), device_in(rois), input.dtype.type(spatial_scale), pooled_h, pooled_w,
        out[0], argmax[0])
    return finish(*out), finish(*argmax)


def roi_pool_backward(grad_output, rois, argmax, input_shape, deterministic=False):
    N, C, H, W = input_shape
    R = rois.shape[0]
    gout = device_in(grad_output)
    if deterministic:
        order, starts = rois_by_image(backend.to_numpy(rois)[:, 0], N)
        gin = device_out((N, C, H, W), grad_output.dtype, grad_output)
        blocks, threads = launch_1d(N * C * H * W, ROI_MAX_BLOCKS)
        _backward_gather_kernel[blocks, threads, launch_stream(grad_output)](
            gout, device_in(rois), device_in(argmax), cuda.to_device(order),
            cuda.to_device(starts), grad_output.dtype.type(0.0), gin[0])
    else:
        gin = device_out((N, C, H, W), grad_output.dtype, grad_output, zero=True)
        blocks, threads = launch_1d(R * C * grad_output.shape[2] * grad_output.shape[3],
                                    ROI_MAX_BLOCKS)
        _backward_atomic_kernel[blocks, threads, launch_stream(grad_output)](
            gout, device_in(rois), device_in(argmax), gin[0])
    return finish(*gin)
