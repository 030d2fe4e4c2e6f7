"""CuPy tier of the keypoint ops: the Numba CUDA kernels, run on CuPy arrays.

``backend.default_tier`` picks ``"cupy"`` for CuPy inputs, so this tier exists so that a model
running on CuPy arrays can call the keypoint ops with ``tier=None``. Like the mask ops' it
carries no RawKernel copies: :mod:`.numba_cuda` takes CuPy arrays zero-copy and returns CuPy
arrays.
"""

from __future__ import annotations

from minimaskrcnn.ops.keypoints.numba_cuda import (
    heatmaps_to_keypoints,
    keypoint_loss,
    keypoints_to_heatmap,
)

__all__ = ["heatmaps_to_keypoints", "keypoint_loss", "keypoints_to_heatmap"]
