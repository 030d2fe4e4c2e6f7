"""CuPy tier of RoIAlign (and RoIWarp): the Numba CUDA kernels of ``numba_cuda.py`` as RawKernels.

Same structure: forward with one thread per output element; backward with ``atomicAdd``
(order-dependent float sums, see ``numba_cuda.py``) or, with ``deterministic=True``, a gather
with one thread per input cell scanning the RoIs of its image in a fixed order. The device
helpers in :data:`ROI_HELPERS_SOURCE` (shared with ``roi_pool/cupy.py``) transcribe
:mod:`minimaskrcnn.ops._roi_common` and the bilinear gather / scatter of
:mod:`minimaskrcnn.ops._cuda_common` line by line, templated on ``T`` (float or double).
Compiled with ``--fmad=false`` so that, like the CPU tiers, products and sums are rounded
separately (no fused multiply-add).

Arrays may be CuPy or NumPy (copied to the device; results then come back as NumPy).
"""

from __future__ import annotations

import functools
import math

import cupy
import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.ops._roi_common import rois_by_image

ROI_HELPERS_SOURCE = r"""
// One axis of the RoIAlign/RoIWarp sampling grid (_roi_common.sampling_axis).
template <typename T>
__device__ void sampling_axis(T lo, T hi, int pooled, int sampling_ratio, bool aligned,
                              T* start, T* bin, int* grid) {
    if (aligned) { lo -= (T)0.5; hi -= (T)0.5; }
    T length = hi - lo;
    if (!aligned && length < (T)1) length = (T)1;
    *start = lo;
    *bin = length / (T)pooled;
    *grid = sampling_ratio > 0 ? sampling_ratio : (int)ceil(length / (T)pooled);
}

// Sample i of bin p (_roi_common.sample_point).
template <typename T>
__device__ T sample_point(T start, T bin, int p, int i, int grid) {
    return start + (T)p * bin + ((T)i + (T)0.5) * bin / (T)grid;  // all in T: no double
}

// Linear interpolation along one axis with torchvision's border rules (_roi_common.interp_axis).
template <typename T>
__device__ bool interp_axis(T y, int size, int* lo, int* hi, T* w_lo, T* w_hi) {
    *lo = 0; *hi = 0; *w_lo = (T)0; *w_hi = (T)0;
    if (y < (T)-1 || y > (T)size) return false;
    if (y <= (T)0) y = (T)0;
    int low = (int)y;
    if (low >= size - 1) { *lo = size - 1; *hi = size - 1; *w_lo = (T)1; return true; }
    T frac = y - (T)low;
    *lo = low; *hi = low + 1; *w_lo = (T)1 - frac; *w_hi = frac;
    return true;
}

// RoIPool's quantisation of one axis: C round (half away from zero), inclusive length >= 1.
template <typename T>
__device__ void quantized_span(T lo, T hi, int* start, int* length) {
    int qlo = (int)round(lo), qhi = (int)round(hi);
    *start = qlo;
    *length = max(qhi - qlo + 1, 1);
}

// Cells [lo, hi) of RoIPool bin p, clipped to [0, size] (_roi_common.pool_bin).
template <typename T>
__device__ void pool_bin(int p, T bin, int start, int size, int* lo, int* hi) {
    *lo = min(max((int)floor((T)p * bin) + start, 0), size);
    *hi = min(max((int)ceil((T)(p + 1) * bin) + start, 0), size);
}

// One bilinear sample of a row-major plane of width W, four corners weighted in this order
// (_cuda_common.bilinear_interpolate; torchvision's bilinear_interpolate).
template <typename T>
__device__ T bilinear_interpolate(const T* plane, int W, int y_lo, int y_hi, T hy, T ly,
                                  int x_lo, int x_hi, T hx, T lx) {
    return (hy * hx) * plane[y_lo * W + x_lo] + (hy * lx) * plane[y_lo * W + x_hi]
         + (ly * hx) * plane[y_hi * W + x_lo] + (ly * lx) * plane[y_hi * W + x_hi];
}

// Atomic scatter of a bilinear sample's gradient g / count to its four corners
// (_cuda_common.bilinear_accumulate; order-dependent float sums).
template <typename T>
__device__ void bilinear_accumulate(T* plane, int W, int y_lo, int y_hi, T hy, T ly, int x_lo,
                                    int x_hi, T hx, T lx, T g, T count) {
    atomicAdd(plane + y_lo * W + x_lo, g * (hy * hx) / count);
    atomicAdd(plane + y_lo * W + x_hi, g * (hy * lx) / count);
    atomicAdd(plane + y_hi * W + x_lo, g * (ly * hx) / count);
    atomicAdd(plane + y_hi * W + x_hi, g * (ly * lx) / count);
}
"""

ROI_SAMPLING_SOURCE = ROI_HELPERS_SOURCE + r"""
template <typename T>
__device__ int roi_geometry(const T* rois, long long r, T scale, int pooled_h, int pooled_w,
                            int sampling_ratio, bool aligned, bool quantize,
                            T* start_h, T* bin_h, int* grid_h, T* start_w, T* bin_w, int* grid_w) {
    const T* roi = rois + 5 * r;
    T x1 = roi[1] * scale, y1 = roi[2] * scale, x2 = roi[3] * scale, y2 = roi[4] * scale;
    if (quantize) {
        int xs, wq, ys, hq;
        quantized_span(x1, x2, &xs, &wq);
        quantized_span(y1, y2, &ys, &hq);
        x1 = (T)xs; x2 = (T)(xs + wq); y1 = (T)ys; y2 = (T)(ys + hq);
    }
    sampling_axis(y1, y2, pooled_h, sampling_ratio, aligned, start_h, bin_h, grid_h);
    sampling_axis(x1, x2, pooled_w, sampling_ratio, aligned, start_w, bin_w, grid_w);
    *grid_h = max(*grid_h, 0);
    *grid_w = max(*grid_w, 0);
    return (int)roi[0];
}

// Weight that a sample at coordinate y gives to row (or column) cell.
template <typename T>
__device__ T axis_weight(int cell, T y, int size) {
    int lo, hi; T w_lo, w_hi;
    T wt = (T)0;
    if (interp_axis(y, size, &lo, &hi, &w_lo, &w_hi)) {
        if (lo == cell) wt += w_lo;
        if (hi == cell) wt += w_hi;
    }
    return wt;
}

template <typename T>
__global__ void roi_sample_forward(const T* input, const T* rois, long long R, int C, int H, int W,
                                   int pooled_h, int pooled_w, T scale, int sampling_ratio,
                                   int aligned, int quantize, int use_max, T* out,
                                   long long* argmax) {
    const long long total = R * C * pooled_h * pooled_w;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int pw = idx % pooled_w, ph = (idx / pooled_w) % pooled_h;
        const int c = (idx / ((long long)pooled_w * pooled_h)) % C;
        const long long r = idx / ((long long)pooled_w * pooled_h * C);
        T start_h, bin_h, start_w, bin_w; int grid_h, grid_w;
        const int n = roi_geometry(rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned,
                                   quantize, &start_h, &bin_h, &grid_h, &start_w, &bin_w, &grid_w);
        const T* plane = input + ((long long)n * C + c) * H * W;
        T acc = 0, best = 0;
        long long best_k = -1;
        for (int iy = 0; iy < grid_h; ++iy) {
            int y_lo, y_hi; T hy, ly;
            bool vy = interp_axis(sample_point(start_h, bin_h, ph, iy, grid_h), H,
                                  &y_lo, &y_hi, &hy, &ly);
            for (int ix = 0; ix < grid_w; ++ix) {
                int x_lo, x_hi; T hx, lx;
                bool vx = interp_axis(sample_point(start_w, bin_w, pw, ix, grid_w), W,
                                      &x_lo, &x_hi, &hx, &lx);
                T val = 0;
                if (vy && vx)
                    val = bilinear_interpolate(plane, W, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx);
                const int k = iy * grid_w + ix;
                if (use_max) {
                    if (k == 0 || val > best) { best = val; best_k = k; }
                } else {
                    acc += val;
                }
            }
        }
        if (use_max) {
            out[idx] = best;
            argmax[idx] = best_k;
        } else {
            out[idx] = acc / (T)max(grid_h * grid_w, 1);
        }
    }
}

template <typename T>
__global__ void roi_sample_backward_atomic(const T* gout, const T* rois, const long long* argmax,
                                           long long R, int C, int H, int W, int pooled_h,
                                           int pooled_w, T scale, int sampling_ratio, int aligned,
                                           int quantize, int use_max, T* gin) {
    const long long total = R * C * pooled_h * pooled_w;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int pw = idx % pooled_w, ph = (idx / pooled_w) % pooled_h;
        const int c = (idx / ((long long)pooled_w * pooled_h)) % C;
        const long long r = idx / ((long long)pooled_w * pooled_h * C);
        T start_h, bin_h, start_w, bin_w; int grid_h, grid_w;
        const int n = roi_geometry(rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned,
                                   quantize, &start_h, &bin_h, &grid_h, &start_w, &bin_w, &grid_w);
        T* plane = gin + ((long long)n * C + c) * H * W;
        const T g = gout[idx];
        T count = (T)max(grid_h * grid_w, 1);
        long long k_only = -1;
        if (use_max) {
            k_only = argmax[idx];
            if (k_only < 0) continue;  // empty grid (guard: -1 is not an index)
            count = (T)1;
        }
        for (int iy = 0; iy < grid_h; ++iy) {
            int y_lo, y_hi; T hy, ly;
            bool vy = interp_axis(sample_point(start_h, bin_h, ph, iy, grid_h), H,
                                  &y_lo, &y_hi, &hy, &ly);
            for (int ix = 0; ix < grid_w; ++ix) {
                if (use_max && iy * grid_w + ix != k_only) continue;
                int x_lo, x_hi; T hx, lx;
                bool vx = interp_axis(sample_point(start_w, bin_w, pw, ix, grid_w), W,
                                      &x_lo, &x_hi, &hx, &lx);
                if (vy && vx)
                    bilinear_accumulate(plane, W, y_lo, y_hi, hy, ly, x_lo, x_hi, hx, lx, g,
                                        count);
            }
        }
    }
}

template <typename T>
__global__ void roi_sample_backward_gather(const T* gout, const T* rois, const long long* argmax,
                                           const long long* order, const long long* starts,
                                           int N, int C, int H, int W, int pooled_h, int pooled_w,
                                           T scale, int sampling_ratio, int aligned, int quantize,
                                           int use_max, T* gin) {
    const long long total = (long long)N * C * H * W;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int w = idx % W, h = (idx / W) % H;
        const int c = (idx / ((long long)W * H)) % C;
        const int n = idx / ((long long)W * H * C);
        T acc = 0;
        for (long long j = starts[n]; j < starts[n + 1]; ++j) {
            const long long r = order[j];
            T start_h, bin_h, start_w, bin_w; int grid_h, grid_w;
            roi_geometry(rois, r, scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize,
                         &start_h, &bin_h, &grid_h, &start_w, &bin_w, &grid_w);
            if (grid_h == 0 || grid_w == 0) continue;
            const T end_h = start_h + (T)pooled_h * bin_h, end_w = start_w + (T)pooled_w * bin_w;
            if (min(start_h, end_h) > h + 1 || max(start_h, end_h) < h - 1 ||
                min(start_w, end_w) > w + 1 || max(start_w, end_w) < w - 1) continue;
            const T count = (T)max(grid_h * grid_w, 1);
            const long long base = (r * C + c) * pooled_h * pooled_w;
            for (int ph = 0; ph < pooled_h; ++ph) {
                for (int pw = 0; pw < pooled_w; ++pw) {
                    const T g = gout[base + ph * pooled_w + pw];
                    if (use_max) {
                        const long long k = argmax[base + ph * pooled_w + pw];
                        if (k >= 0) {
                            T y = sample_point(start_h, bin_h, ph, (int)(k / grid_w), grid_h);
                            T x = sample_point(start_w, bin_w, pw, (int)(k % grid_w), grid_w);
                            acc += g * (axis_weight(h, y, H) * axis_weight(w, x, W));
                        }
                        continue;
                    }
                    T wy = 0;
                    for (int iy = 0; iy < grid_h; ++iy)
                        wy += axis_weight(h, sample_point(start_h, bin_h, ph, iy, grid_h), H);
                    if (wy == (T)0) continue;
                    T wx = 0;
                    for (int ix = 0; ix < grid_w; ++ix)
                        wx += axis_weight(w, sample_point(start_w, bin_w, pw, ix, grid_w), W);
                    acc += g * (wy * wx) / count;
                }
            }
        }
        gin[idx] = acc;
    }
}
"""

_KERNELS = ("roi_sample_forward", "roi_sample_backward_atomic", "roi_sample_backward_gather")
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Everything cupy.RawModule is given, as one module-level constant: the CI compile check
# (minimaskrcnn/testing/cuda_kernels.py) reads it without importing cupy and compiles every
# name expression with NVRTC.
RAW_MODULE = {"code": ROI_SAMPLING_SOURCE, "options": ("-std=c++14", "--fmad=false"),
              "name_expressions": tuple(f"{k}<{t}>" for k in _KERNELS for t in _CTYPES.values())}


@functools.cache
def _module():
    return cupy.RawModule(**RAW_MODULE)


def kernel(name: str, dtype) -> cupy.RawKernel:
    """The compiled kernel ``name`` for ``dtype`` (float32 or float64), compiled on first use."""
    return _module().get_function(f"{name}<{_CTYPES[np.dtype(dtype)]}>")


def launch(total: int):
    threads = 256
    return (max(1, min(math.ceil(total / threads), 65535)),), (threads,)


def _host(result, like):
    return result if backend.is_cupy_array(like) else cupy.asnumpy(result)


def sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, *,
                   aligned, quantize, use_max):
    """Same contract as ``reference.sample_forward``: ``(out, argmax or None)``."""
    x = cupy.ascontiguousarray(cupy.asarray(input))
    d_rois = cupy.ascontiguousarray(cupy.asarray(rois))
    N, C, H, W = x.shape
    R = d_rois.shape[0]
    out = cupy.empty((R, C, pooled_h, pooled_w), dtype=x.dtype)
    argmax = cupy.full(out.shape if use_max else (1,), -1, dtype=np.int64)
    grid, block = launch(out.size)
    kernel("roi_sample_forward", x.dtype)(
        grid, block,
        (x, d_rois, np.int64(R), np.int32(C), np.int32(H), np.int32(W), np.int32(pooled_h),
         np.int32(pooled_w), x.dtype.type(spatial_scale), np.int32(sampling_ratio),
         np.int32(aligned), np.int32(quantize), np.int32(use_max), out, argmax))
    return _host(out, input), (_host(argmax, input) if use_max else None)


def sample_backward(grad_output, rois, input_shape, pooled_h, pooled_w, spatial_scale,
                    sampling_ratio, *, aligned, quantize, use_max, argmax=None,
                    deterministic=False):
    """Same contract as ``reference.sample_backward``; atomics or the deterministic gather."""
    N, C, H, W = input_shape
    g = cupy.ascontiguousarray(cupy.asarray(grad_output))
    d_rois = cupy.ascontiguousarray(cupy.asarray(rois))
    R = d_rois.shape[0]
    am = (cupy.ascontiguousarray(cupy.asarray(argmax, dtype=np.int64)) if use_max
          else cupy.zeros(1, dtype=np.int64))
    scale = g.dtype.type(spatial_scale)
    flags = (np.int32(sampling_ratio), np.int32(aligned), np.int32(quantize), np.int32(use_max))
    if deterministic:
        order, starts = rois_by_image(backend.to_numpy(rois)[:, 0], N)
        gin = cupy.empty((N, C, H, W), dtype=g.dtype)
        grid, block = launch(gin.size)
        kernel("roi_sample_backward_gather", g.dtype)(
            grid, block,
            (g, d_rois, am, cupy.asarray(order), cupy.asarray(starts), np.int32(N), np.int32(C),
             np.int32(H), np.int32(W), np.int32(pooled_h), np.int32(pooled_w), scale, *flags,
             gin))
    else:
        gin = cupy.zeros((N, C, H, W), dtype=g.dtype)
        grid, block = launch(g.size)
        kernel("roi_sample_backward_atomic", g.dtype)(
            grid, block,
            (g, d_rois, am, np.int64(R), np.int32(C), np.int32(H), np.int32(W),
             np.int32(pooled_h), np.int32(pooled_w), scale, *flags, gin))
    return _host(gin, grad_output)
