"""Numba CUDA tier of the box ops: one thread per output element, grid-stride loops.

NumPy inputs are copied to the device and results back; CuPy inputs are used in place (through
``__cuda_array_interface__``) and results come back as CuPy arrays. Scalars that must be in the
boxes' dtype (``zero``, the clip bounds, ``min_size``) are passed as typed arguments so float32
kernels never promote to float64. Runs on the Numba simulator with ``NUMBA_ENABLE_CUDASIM=1``.

:func:`device_in`, :func:`device_out`, :func:`finish`, :func:`launch_stream`, :func:`launch_1d`
and :func:`launch_2d` are shared with the NMS and mask tiers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from minimaskrcnn import backend


def device_in(x):
    """A device view of ``x``: zero-copy for CuPy arrays, a copy for NumPy arrays.

    CuPy arrays are taken without synchronising their stream (``sync=False``): the kernels are
    launched on CuPy's current stream (:func:`launch_stream`), so they are ordered after the
    CuPy work that produced ``x`` without the host waiting for it.
    """
    if backend.is_cupy_array(x):
        return cuda.as_cuda_array(backend.get_array_module(x).ascontiguousarray(x), sync=False)
    return cuda.to_device(np.ascontiguousarray(x))


def host_out(dev, like):
    """``dev`` returned in the array type of ``like`` (CuPy view, or NumPy copy).

    Prefer :func:`device_out` / :func:`finish` for outputs: a CuPy view of a Numba array goes
    through the CUDA array interface, which makes CuPy synchronise the array's stream.
    """
    if backend.is_cupy_array(like):
        return backend.get_array_module(like).asarray(dev)
    return dev.copy_to_host()


def device_out(shape, dtype, like, *, zero: bool = False):
    """``(view, result)``: an output for a kernel. For a CuPy ``like``, a CuPy array from CuPy's
    memory pool (``result``, returned as it is by :func:`finish`: no copy, no synchronisation)
    and its Numba view; else a Numba device array (``result`` is ``None``: :func:`finish`
    copies it to the host). ``zero`` fills it with zeros."""
    if backend.is_cupy_array(like):
        xp = backend.get_array_module(like)
        arr = xp.zeros(shape, dtype=dtype) if zero else xp.empty(shape, dtype=dtype)
        return cuda.as_cuda_array(arr, sync=False), arr
    if zero:
        return cuda.to_device(np.zeros(shape, dtype=dtype)), None
    return cuda.device_array(shape, dtype=dtype), None


def finish(view, result):
    """The output of :func:`device_out`: the CuPy array, or the Numba array copied to the host."""
    return result if result is not None else view.copy_to_host()


def launch_stream(like):
    """The stream a kernel working on ``like`` is launched on: CuPy's current stream for CuPy
    arrays (Numba wraps it, ``cuda.external_stream``; the legacy default stream when CuPy is
    on it), else Numba's default stream (``0``)."""
    if backend.is_cupy_array(like):
        import cupy  # noqa: PLC0415

        ptr = cupy.cuda.get_current_stream().ptr
        return cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return 0


def launch_1d(n: int) -> tuple[int, int]:
    """``(blocks, threads)`` for ``n`` elements; tiny under the simulator (the loops stride)."""
    if backend.cuda_simulator_enabled():
        return 2, 32
    threads = 256
    return max(1, min(math.ceil(n / threads), 65535)), threads


def launch_2d(n: int, m: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(blocks, threads)`` of a 2-D launch over ``(n, m)``, x along ``m``."""
    if backend.cuda_simulator_enabled():
        return (2, 2), (8, 4)
    tx, ty = 32, 8
    return (max(1, min(math.ceil(m / tx), 65535)), max(1, min(math.ceil(n / ty), 65535))), (tx, ty)


@cuda.jit
def _box_area_kernel(boxes, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, boxes.shape[0], stride):
        out[i] = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])


def box_area(boxes):
    """``(N, 4)`` -> ``(N,)`` areas."""
    n = boxes.shape[0]
    d_boxes = device_in(boxes)
    d_out, out = device_out(n, d_boxes.dtype, boxes)
    if n:
        blocks, threads = launch_1d(n)
        _box_area_kernel[blocks, threads, launch_stream(boxes)](d_boxes, d_out)
    return finish(d_out, out)


@cuda.jit
def _box_iou_kernel(boxes1, boxes2, zero, out):
    """``out[i, j]`` = IoU of ``boxes1[i]`` and ``boxes2[j]``; x of the grid runs along j."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, boxes1.shape[0], si):
        x1, y1, x2, y2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area1 = (x2 - x1) * (y2 - y1)
        for j in range(j0, boxes2.shape[0], sj):
            area2 = (boxes2[j, 2] - boxes2[j, 0]) * (boxes2[j, 3] - boxes2[j, 1])
            w = max(min(x2, boxes2[j, 2]) - max(x1, boxes2[j, 0]), zero)
            h = max(min(y2, boxes2[j, 3]) - max(y1, boxes2[j, 1]), zero)
            inter = w * h
            out[i, j] = inter / (area1 + area2 - inter)


def box_iou(boxes1, boxes2):
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` IoU."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    d1, d2 = device_in(boxes1), device_in(boxes2)
    d_out, out = device_out((n, m), d1.dtype, boxes1)
    if n and m:
        blocks, threads = launch_2d(n, m)
        with np.errstate(divide="ignore", invalid="ignore"):  # simulator: 0 / 0 -> NaN
            _box_iou_kernel[blocks, threads, launch_stream(boxes1)](d1, d2, d1.dtype.type(0),
                                                                    d_out)
    return finish(d_out, out)


@cuda.jit
def _clip_kernel(boxes, height, width, zero, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, boxes.shape[0] * 4, stride):
        i, k = e // 4, e % 4
        hi = width if k % 2 == 0 else height  # x at columns 0 and 2, y at 1 and 3
        out[i, k] = min(max(boxes[i, k], zero), hi)


def clip_boxes_to_image(boxes, height, width):
    """``(N, 4)`` -> ``(N, 4)`` clamped to ``[0, width] x [0, height]``."""
    n = boxes.shape[0]
    d_boxes = device_in(boxes)
    d_out, out = device_out((n, 4), d_boxes.dtype, boxes)
    if n:
        dt = d_boxes.dtype.type
        blocks, threads = launch_1d(4 * n)
        _clip_kernel[blocks, threads, launch_stream(boxes)](d_boxes, dt(height), dt(width), dt(0),
                                                           d_out)
    return finish(d_out, out)


@cuda.jit
def _small_mask_kernel(boxes, min_size, keep):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, boxes.shape[0], stride):
        wide = boxes[i, 2] - boxes[i, 0] >= min_size
        tall = boxes[i, 3] - boxes[i, 1] >= min_size
        keep[i] = 1 if wide and tall else 0


def remove_small_boxes(boxes, min_size):
    """``(N, 4)`` -> int64 indices of boxes with width and height ``>= min_size``."""
    n = boxes.shape[0]
    xp = backend.get_array_module(boxes)
    d_boxes = device_in(boxes)
    d_keep, keep = device_out(n, np.uint8, boxes)
    if n:
        blocks, threads = launch_1d(n)
        _small_mask_kernel[blocks, threads, launch_stream(boxes)](
            d_boxes, d_boxes.dtype.type(min_size), d_keep)
    return xp.flatnonzero(finish(d_keep, keep)).astype(np.int64)  # CuPy: a host sync (count)
