"""CuPy tier of NMS: the bitmask algorithm (see :mod:`.numba_cuda`) as a ``RawKernel``.

The suppression matrix is computed on the device by :data:`NMS_MASK_SOURCE` (one thread per
(box, 64-box word) pair, templated on float/double); the greedy scan over it runs on the host
(:func:`.numba_cpu.greedy_scan_bitmask`), as in torchvision's CUDA ``nms``.
"""

from __future__ import annotations

import functools
import math

import cupy
import numpy as np

from minimaskrcnn import backend

from .numba_cpu import greedy_scan_bitmask
from .reference import sort_by_score, threshold_in_dtype

NMS_MASK_SOURCE = r"""
template <typename T>
__global__ void nms_mask(const T* boxes, const T* areas, long long n, long long words,
                         T threshold, unsigned long long* mask) {
    // mask[i, w]: bit b set iff j = 64 w + b > i and IoU(i, j) > threshold (boxes score-sorted).
    for (long long task = blockIdx.x * (long long)blockDim.x + threadIdx.x; task < n * words;
         task += (long long)blockDim.x * gridDim.x) {
        const long long w = task / n, i = task % n;  // neighbouring threads: neighbouring rows
        const long long col_start = w * 64;
        const T* a = boxes + 4 * i;
        unsigned long long bits = 0ULL;
        const long long j_end = min(col_start + 64, n);
        for (long long j = max(i + 1, col_start); j < j_end; ++j) {
            const T* b = boxes + 4 * j;
            const T iw = max(min(a[2], b[2]) - max(a[0], b[0]), (T)0);
            const T ih = max(min(a[3], b[3]) - max(a[1], b[1]), (T)0);
            const T inter = iw * ih;
            if (inter / (areas[i] + areas[j] - inter) > threshold) {
                bits |= 1ULL << (unsigned long long)(j - col_start);
            }
        }
        mask[i * words + w] = bits;
    }
}
"""

_NAMES = {np.dtype(np.float32): "nms_mask<float>", np.dtype(np.float64): "nms_mask<double>"}
# Everything cupy.RawModule is given, as one module-level constant: the CI compile check
# (minimaskrcnn/testing/cuda_kernels.py) reads it without importing cupy and compiles every
# name expression with NVRTC.
RAW_MODULE = {"code": NMS_MASK_SOURCE, "options": ("-std=c++14",),
              "name_expressions": tuple(_NAMES.values())}


@functools.cache
def _kernel(dtype: np.dtype) -> cupy.RawKernel:
    return cupy.RawModule(**RAW_MODULE).get_function(_NAMES[dtype])


def nms(boxes, scores, iou_threshold: float):
    """``(N, 4)`` boxes, ``(N,)`` scores -> int64 indices kept, in the array type of ``boxes``."""
    if not backend.is_cupy_array(boxes):
        return nms(cupy.asarray(boxes), cupy.asarray(scores), iou_threshold).get()
    scores = cupy.asarray(scores)
    n = boxes.shape[0]
    if n == 0:
        return cupy.empty(0, dtype=np.int64)
    order = sort_by_score(scores)
    sorted_boxes = cupy.ascontiguousarray(boxes[order])
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    words = math.ceil(n / 64)
    mask = cupy.empty((n, words), dtype=np.uint64)
    threads = 256
    blocks = min(math.ceil(n * words / threads), 65535)
    threshold = threshold_in_dtype(iou_threshold, boxes.dtype)
    _kernel(np.dtype(boxes.dtype))(
        (blocks,), (threads,),
        (sorted_boxes, areas, np.int64(n), np.int64(words), threshold, mask),
    )
    keep = np.empty(n, dtype=np.int64)
    n_keep = greedy_scan_bitmask(mask.get(), keep)
    return order[cupy.asarray(keep[:n_keep])].astype(np.int64)
