"""Detection ops, torchvision.ops-compatible, each with tiers side by side.

Every op lives in its own package (``nms/``, ``roi_align/``, ...) with ``reference.py`` (NumPy),
``numba_cpu.py``, ``numba_cuda.py`` and, where natural, ``cupy.py``; the package's
``__init__`` validates arguments and asks :mod:`minimaskrcnn.backend` for the tier.

The public names below are imported on first use (so ``import minimaskrcnn.ops`` stays cheap and
never compiles a kernel).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    # boxes and box coding (issue: foundation)
    "box_area": "minimaskrcnn.ops.boxes",
    "box_iou": "minimaskrcnn.ops.boxes",
    "clip_boxes_to_image": "minimaskrcnn.ops.boxes",
    "remove_small_boxes": "minimaskrcnn.ops.boxes",
    "BoxCoder": "minimaskrcnn.ops.boxes",
    "AnchorGenerator": "minimaskrcnn.ops.anchors",
    "nms": "minimaskrcnn.ops.nms",
    "batched_nms": "minimaskrcnn.ops.nms",
    # RoI feature extraction
    "roi_align": "minimaskrcnn.ops.roi_align",
    "roi_align_backward": "minimaskrcnn.ops.roi_align",
    "roi_pool": "minimaskrcnn.ops.roi_pool",
    "roi_pool_backward": "minimaskrcnn.ops.roi_pool",
    "roi_warp": "minimaskrcnn.ops.roi_warp",
    "roi_warp_backward": "minimaskrcnn.ops.roi_warp",
    "MultiScaleRoIAlign": "minimaskrcnn.ops.poolers",
    # mask head ops
    "project_masks_on_boxes": "minimaskrcnn.ops.mask_ops",
    "mask_loss": "minimaskrcnn.ops.mask_ops",
    "mask_loss_backward": "minimaskrcnn.ops.mask_ops",
    "paste_masks_in_image": "minimaskrcnn.ops.mask_ops",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'minimaskrcnn.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
