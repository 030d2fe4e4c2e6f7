"""CuPy tier of RoIPool: the kernels of ``numba_cuda.py`` as RawKernels (float and double).

Forward: one thread per output element. Backward: ``atomicAdd`` at the argmax cell
(order-dependent float sums when cells are shared), or with ``deterministic=True`` a gather with
one thread per input cell scanning the RoIs of its image in increasing index.
Arrays may be CuPy or NumPy (copied to the device; results then come back as NumPy).
"""

from __future__ import annotations

import functools

import cupy
import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.ops._roi_common import rois_by_image
from minimaskrcnn.ops.roi_align.cupy import ROI_HELPERS_SOURCE, launch

ROI_POOL_SOURCE = ROI_HELPERS_SOURCE + r"""
template <typename T>
__global__ void roi_pool_forward(const T* input, const T* rois, long long R, int C, int H, int W,
                                 int pooled_h, int pooled_w, T scale, T* out, long long* argmax) {
    const long long total = R * C * pooled_h * pooled_w;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int pw = idx % pooled_w, ph = (idx / pooled_w) % pooled_h;
        const int c = (idx / ((long long)pooled_w * pooled_h)) % C;
        const long long r = idx / ((long long)pooled_w * pooled_h * C);
        const T* roi = rois + 5 * r;
        int start_w, width, start_h, height;
        quantized_span(roi[1] * scale, roi[3] * scale, &start_w, &width);
        quantized_span(roi[2] * scale, roi[4] * scale, &start_h, &height);
        const T bin_h = (T)height / (T)pooled_h, bin_w = (T)width / (T)pooled_w;
        int h0, h1, w0, w1;
        pool_bin(ph, bin_h, start_h, H, &h0, &h1);
        pool_bin(pw, bin_w, start_w, W, &w0, &w1);
        const T* plane = input + ((long long)roi[0] * C + c) * H * W;
        T best = 0;
        long long best_i = -1;
        if (h1 > h0 && w1 > w0) {
            best = (T)-3.402823466e+38f;  // -FLT_MAX: torchvision's start value (also double)
            for (int h = h0; h < h1; ++h)
                for (int w = w0; w < w1; ++w)
                    if (plane[h * W + w] > best) { best = plane[h * W + w]; best_i = h * W + w; }
        }
        out[idx] = best;
        argmax[idx] = best_i;
    }
}

template <typename T>
__global__ void roi_pool_backward_atomic(const T* gout, const T* rois, const long long* argmax,
                                         long long R, int C, int H, int W, int bins, T* gin) {
    const long long total = R * C * bins;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const long long a = argmax[idx];
        if (a < 0) continue;  // empty bin
        const int c = (idx / bins) % C;
        const long long r = idx / ((long long)bins * C);
        atomicAdd(gin + ((long long)rois[5 * r] * C + c) * H * W + a, gout[idx]);
    }
}

template <typename T>
__global__ void roi_pool_backward_gather(const T* gout, const long long* argmax,
                                         const long long* order, const long long* starts,
                                         int N, int C, int H, int W, int bins, T* gin) {
    const long long total = (long long)N * C * H * W;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const long long cell = idx % ((long long)H * W);
        const int c = (idx / ((long long)H * W)) % C;
        const int n = idx / ((long long)H * W * C);
        T acc = 0;
        for (long long j = starts[n]; j < starts[n + 1]; ++j) {
            const long long base = (order[j] * C + c) * bins;
            for (int b = 0; b < bins; ++b)
                if (argmax[base + b] == cell) acc += gout[base + b];
        }
        gin[idx] = acc;
    }
}
"""

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_KERNELS = ("roi_pool_forward", "roi_pool_backward_atomic", "roi_pool_backward_gather")
# Everything cupy.RawModule is given, as one module-level constant: the CI compile check
# (minimaskrcnn/testing/cuda_kernels.py) reads it without importing cupy and compiles every
# name expression with NVRTC.
RAW_MODULE = {"code": ROI_POOL_SOURCE, "options": ("-std=c++14", "--fmad=false"),
              "name_expressions": tuple(f"{k}<{t}>" for k in _KERNELS for t in _CTYPES.values())}


@functools.cache
def _module():
    return cupy.RawModule(**RAW_MODULE)


def _kernel(name, dtype):
    return _module().get_function(f"{name}<{_CTYPES[np.dtype(dtype)]}>")


def _host(result, like):
    return result if backend.is_cupy_array(like) else cupy.asnumpy(result)


def roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    x = cupy.ascontiguousarray(cupy.asarray(input))
    d_rois = cupy.ascontiguousarray(cupy.asarray(rois))
    N, C, H, W = x.shape
    R = d_rois.shape[0]
    out = cupy.empty((R, C, pooled_h, pooled_w), dtype=x.dtype)
    argmax = cupy.empty(out.shape, dtype=np.int64)
    grid, block = launch(out.size)
    _kernel("roi_pool_forward", x.dtype)(
        grid, block,
        (x, d_rois, np.int64(R), np.int32(C), np.int32(H), np.int32(W), np.int32(pooled_h),
         np.int32(pooled_w), x.dtype.type(spatial_scale), out, argmax))
    return _host(out, input), _host(argmax, input)


def roi_pool_backward(grad_output, rois, argmax, input_shape, deterministic=False):
    N, C, H, W = input_shape
    g = cupy.ascontiguousarray(cupy.asarray(grad_output))
    d_rois = cupy.ascontiguousarray(cupy.asarray(rois))
    am = cupy.ascontiguousarray(cupy.asarray(argmax, dtype=np.int64))
    bins = g.shape[2] * g.shape[3]
    if deterministic:
        order, starts = rois_by_image(backend.to_numpy(rois)[:, 0], N)
        gin = cupy.empty((N, C, H, W), dtype=g.dtype)
        grid, block = launch(gin.size)
        _kernel("roi_pool_backward_gather", g.dtype)(
            grid, block,
            (g, am, cupy.asarray(order), cupy.asarray(starts), np.int32(N), np.int32(C),
             np.int32(H), np.int32(W), np.int32(bins), gin))
    else:
        gin = cupy.zeros((N, C, H, W), dtype=g.dtype)
        grid, block = launch(g.size)
        _kernel("roi_pool_backward_atomic", g.dtype)(
            grid, block,
            (g, d_rois, am, np.int64(g.shape[0]), np.int32(C), np.int32(H), np.int32(W),
             np.int32(bins), gin))
    return _host(gin, grad_output)
