"""Shared pieces of the Numba CUDA tiers (every ``ops/*/numba_cuda.py``): host glue and device helpers.

Host side (used by every Numba CUDA tier; NumPy inputs are copied to the device and results
back, CuPy inputs are used in place through ``__cuda_array_interface__`` and results come back
as CuPy arrays):

- :func:`device_in`, :func:`device_out`, :func:`finish`: kernel inputs and outputs in the
  caller's array type;
- :func:`launch_stream`: the stream a kernel is launched on (CuPy's current one for CuPy arrays);
- :func:`launch_1d`, :func:`launch_2d`: grid shapes for grid-stride loops (tiny on the simulator);
  :data:`ROI_MAX_BLOCKS` caps the RoI kernels' grids.

Device side (``cuda.jit(device=True)``):

- the scalar RoI helpers of :mod:`minimaskrcnn.ops._roi_common` (:data:`sampling_axis`,
  :data:`sample_point`, :data:`interp_axis`, :data:`quantized_span`, :data:`pool_bin`),
  compiled here once for every CUDA tier;
- :func:`bilinear_interpolate` (the four-corner weighted gather of one bilinear sample,
  torchvision's ``bilinear_interpolate``) and :func:`bilinear_accumulate` (the four-corner
  atomic scatter of its gradient, torchvision's ``bilinear_interpolate_gradient`` followed by
  its four ``atomicAdd``), used by the RoIAlign / RoIWarp kernels and the mask-target kernel.

The CuPy tier's CUDA C transcription of the same device helpers is
``roi_align/cupy.py``'s ``ROI_HELPERS_SOURCE`` (shared with ``roi_pool/cupy.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from minimaskrcnn import backend
from minimaskrcnn.ops._roi_common import jit_helpers

# --------------------------------------------------------------------------------------------
# Host side: arrays in and out, streams, launch shapes
# --------------------------------------------------------------------------------------------


def device_in(x):
    """A device view of ``x``: zero-copy for CuPy arrays, a copy for NumPy arrays.

    CuPy arrays are taken without synchronising their stream (``sync=False``): the kernels are
    launched on CuPy's current stream (:func:`launch_stream`), so they are ordered after the
    CuPy work that produced ``x`` without the host waiting for it. A non-contiguous array is
    made C-contiguous first (a copy).
    """
    if backend.is_cupy_array(x):
        return cuda.as_cuda_array(backend.get_array_module(x).ascontiguousarray(x), sync=False)
    return cuda.to_device(np.ascontiguousarray(x))


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
        import cupy  # noqa: PLC0415  (optional dependency; a CuPy array means it is installed)

        ptr = cupy.cuda.get_current_stream().ptr
        return cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return 0


def launch_1d(n: int, max_blocks: int = 65535) -> tuple[int, int]:
    """``(blocks, threads)`` for a grid-stride loop over ``n`` elements: 256 threads a block,
    at most ``max_blocks`` blocks; ``(2, 32)`` under the simulator (the loops stride, so the
    results do not depend on the launch shape, atomic-add order aside)."""
    if backend.cuda_simulator_enabled():
        return 2, 32
    threads = 256
    return max(1, min(math.ceil(n / threads), max_blocks)), threads


ROI_MAX_BLOCKS = 4096
"""Most blocks a RoI kernel (RoIAlign, RoIWarp, RoIPool) is launched with,
``launch_1d(n, ROI_MAX_BLOCKS)``; their grid-stride loops cover the rest."""


def launch_2d(n: int, m: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(blocks, threads)`` of a 2-D launch over ``(n, m)``, x along ``m``."""
    if backend.cuda_simulator_enabled():
        return (2, 2), (8, 4)
    tx, ty = 32, 8
    return (max(1, min(math.ceil(m / tx), 65535)), max(1, min(math.ceil(n / ty), 65535))), (tx, ty)


# --------------------------------------------------------------------------------------------
# Device side: the RoI helpers, and one bilinear sample's gather and scatter
# --------------------------------------------------------------------------------------------

_roi = jit_helpers(cuda.jit(device=True))
sampling_axis = _roi["sampling_axis"]
sample_point = _roi["sample_point"]
interp_axis = _roi["interp_axis"]
quantized_span = _roi["quantized_span"]
pool_bin = _roi["pool_bin"]


@cuda.jit(device=True)
def bilinear_interpolate(plane, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx):
    """One bilinear sample of a 2-D ``plane``: the four corners weighted by the axis weights.

    Args:
        plane: ``(H, W)`` array (float32/float64, or uint8 masks; a view such as
            ``input[n, c]``).
        y_lo, y_hi, hy, ly: rows and their weights, as :data:`interp_axis` returns them
            (``valid`` checked by the caller); ``x_lo, x_hi, hx, lx`` the same for columns.

    Returns:
        ``(hy*hx)*v00 + (hy*lx)*v01 + (ly*hx)*v10 + (ly*lx)*v11`` in the weights' dtype, summed
        in this order (torchvision's ``bilinear_interpolate``).
    """
    return ((hy * hx) * plane[y_lo, x_lo] + (hy * lx) * plane[y_lo, x_hi]
            + (ly * hx) * plane[y_hi, x_lo] + (ly * lx) * plane[y_hi, x_hi])


@cuda.jit(device=True)
def bilinear_accumulate(plane, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx, g, count):
    """Scatter the gradient ``g`` of one bilinear sample (averaged over ``count`` samples) to
    its four corners of ``plane`` with ``cuda.atomic.add``: corner ``(y_lo, x_lo)`` gets
    ``g * (hy * hx) / count``, and so on (torchvision's RoIAlign backward).

    Args:
        plane: ``(H, W)`` float32/float64 gradient array (a view such as ``grad_input[n, c]``).
        y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx: as :func:`bilinear_interpolate`.
        g: the sample's output gradient; count: the divisor (samples per bin, or 1), both in
            the plane's dtype.

    Atomic adds from many threads land in scheduling order, so the float sums' last bits vary
    between runs (see ``roi_align/numba_cuda.py`` for the deterministic gather).
    """
    cuda.atomic.add(plane, (y_lo, x_lo), g * (hy * hx) / count)
    cuda.atomic.add(plane, (y_lo, x_hi), g * (hy * lx) / count)
    cuda.atomic.add(plane, (y_hi, x_lo), g * (ly * hx) / count)
    cuda.atomic.add(plane, (y_hi, x_hi), g * (ly * lx) / count)
