"""CuPy tier of RoIWarp: the RawKernels of ``roi_align/cupy.py`` with ``quantize=True``.

Forward: one thread per output element. Backward: atomic scatter (order-dependent float sums)
or, with ``deterministic=True``, the per-cell gather; see ``roi_align/numba_cuda.py``.
"""

from __future__ import annotations

from minimaskrcnn.ops.roi_align.cupy import sample_backward, sample_forward


def roi_warp(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, use_max):
    return sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          False, True, use_max)


def roi_warp_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w, spatial_scale,
                      sampling_ratio, use_max, deterministic=False):
    return sample_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w,
                           spatial_scale, sampling_ratio, False, True, use_max,
                           deterministic=deterministic)
