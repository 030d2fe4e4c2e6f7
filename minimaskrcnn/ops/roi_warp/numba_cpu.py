"""Numba CPU tier of RoIWarp: the RoIAlign kernels of ``roi_align/numba_cpu.py``, quantised box.

Parallel forward over RoIs and the deterministic plane-parallel backward of that module, with
``quantize=True`` (RoIPool's rounding first), ``aligned=False`` and ``use_max`` for "max".
"""

from __future__ import annotations

from minimaskrcnn.ops.roi_align.numba_cpu import sample_backward, sample_forward


def roi_warp(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, use_max):
    """``(out (R, C, Ph, Pw), argmax (R, C, Ph, Pw) int64 or None)``."""
    return sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          False, True, use_max)


def roi_warp_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w, spatial_scale,
                      sampling_ratio, use_max, deterministic=True):
    """``(N, C, H, W)`` gradient of the input."""
    return sample_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w,
                           spatial_scale, sampling_ratio, False, True, use_max)
