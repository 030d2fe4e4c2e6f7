"""CuPy tier of the mask-head ops: the Numba CUDA kernels, run on CuPy arrays.

``backend.default_tier`` picks ``"cupy"`` for CuPy inputs, so this tier exists so that a model
running on CuPy arrays can call the mask ops with ``tier=None``. It does not carry RawKernel
copies of the kernels: :mod:`.numba_cuda` already takes CuPy arrays zero-copy (through
``__cuda_array_interface__``) and returns CuPy arrays, and these ops are a small share of a
training step, so a second CUDA source would only be a second thing to keep in sync.
"""

from __future__ import annotations

from minimaskrcnn.ops.mask_ops.numba_cuda import (
    mask_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)

__all__ = ["project_masks_on_boxes", "mask_loss", "paste_masks_in_image"]
