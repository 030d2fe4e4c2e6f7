"""CuPy tier of ``box_iou``: a ``RawKernel`` (templated on float/double), one thread per pair.

Only ``box_iou`` has a CuPy kernel: it is the one box op heavy enough to deserve a hand-written
one; area, clipping and the small-box filter are single elementwise CuPy expressions away and
are served by the Numba CUDA tier (which accepts CuPy arrays zero-copy), re-exported here so
that ``tier=None`` on CuPy arrays (the ``"cupy"`` tier) finds them, as the model on a GPU
needs.
"""

from __future__ import annotations

import functools
import math

import cupy
import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.ops.boxes.numba_cuda import (  # noqa: F401  (the "cupy" tier of these ops)
    box_area,
    clip_boxes_to_image,
    remove_small_boxes,
)

BOX_IOU_SOURCE = r"""
template <typename T>
__global__ void box_iou(const T* boxes1, const T* boxes2, long long n, long long m, T* out) {
    // out[i, j] = IoU(boxes1[i], boxes2[j]); grid-stride over the n * m pairs, j fastest.
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n * m;
         e += (long long)blockDim.x * gridDim.x) {
        const long long i = e / m, j = e % m;
        const T* a = boxes1 + 4 * i;
        const T* b = boxes2 + 4 * j;
        const T area1 = (a[2] - a[0]) * (a[3] - a[1]);
        const T area2 = (b[2] - b[0]) * (b[3] - b[1]);
        const T w = max(min(a[2], b[2]) - max(a[0], b[0]), (T)0);
        const T h = max(min(a[3], b[3]) - max(a[1], b[1]), (T)0);
        const T inter = w * h;
        out[e] = inter / (area1 + area2 - inter);
    }
}
"""

_NAMES = {np.dtype(np.float32): "box_iou<float>", np.dtype(np.float64): "box_iou<double>"}
# Everything cupy.RawModule is given, as one module-level constant: the CI compile check
# (minimaskrcnn/testing/cuda_kernels.py) reads it without importing cupy and compiles every
# name expression with NVRTC.
RAW_MODULE = {"code": BOX_IOU_SOURCE, "options": ("-std=c++14",),
              "name_expressions": tuple(_NAMES.values())}


@functools.cache
def _kernel(dtype: np.dtype) -> cupy.RawKernel:
    return cupy.RawModule(**RAW_MODULE).get_function(_NAMES[dtype])


def box_iou(boxes1, boxes2):
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` IoU, in the array type of ``boxes1``."""
    on_host = not backend.is_cupy_array(boxes1)
    boxes1 = cupy.ascontiguousarray(cupy.asarray(boxes1))
    boxes2 = cupy.ascontiguousarray(cupy.asarray(boxes2))
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = cupy.empty((n, m), dtype=boxes1.dtype)
    if n and m:
        threads = 256
        blocks = min(math.ceil(n * m / threads), 65535)
        _kernel(np.dtype(boxes1.dtype))(
            (blocks,), (threads,), (boxes1, boxes2, np.int64(n), np.int64(m), out)
        )
    return out.get() if on_host else out
