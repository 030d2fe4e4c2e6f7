"""NumPy reference of RoIWarp: RoIAlign's sampling (``roi_align/reference.py``) on the RoIPool box.

``quantize=True`` rounds the RoI to the feature grid first; ``aligned=False``; ``use_max``
selects the max aggregation. See the package docstring for the definition.
"""

from __future__ import annotations

from minimaskrcnn.ops.roi_align.reference import sample_backward, sample_forward


def roi_warp(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, use_max):
    """``(out (R, C, Ph, Pw), argmax (R, C, Ph, Pw) int64 or None)``."""
    return sample_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          False, True, use_max)


def roi_warp_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w, spatial_scale,
                      sampling_ratio, use_max, deterministic=True):
    """``(N, C, H, W)`` gradient of the input."""
    return sample_backward(grad_output, rois, argmax, input_shape, pooled_h, pooled_w,
                           spatial_scale, sampling_ratio, False, True, use_max)
