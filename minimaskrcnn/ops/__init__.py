"""Detection ops, torchvision.ops-compatible, each with tiers side by side.

Every op lives in its own package (``nms/``, ``roi_align/``, ...) with ``reference.py`` (NumPy),
``numba_cpu.py``, ``numba_cuda.py`` and, where natural, ``cupy.py``; the package's
``__init__`` validates arguments and asks :mod:`minimaskrcnn.backend` for the tier. Importing
this module is cheap: the tier modules (and so Numba compilation, ``numba.cuda``, CuPy) are
imported on the first call that needs them.

Several ops share their package's name (``nms``, ``roi_align``, ...). The imports below bind the
*function* over the subpackage attribute that Python sets while importing it, so
``minimaskrcnn.ops.nms`` is the function; the package stays reachable through ``sys.modules``
and ``import minimaskrcnn.ops.nms.reference``.
"""

from minimaskrcnn.ops.anchors import AnchorGenerator
from minimaskrcnn.ops.boxes import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from minimaskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoint_loss, keypoints_to_heatmap
from minimaskrcnn.ops.mask_ops import (
    mask_loss,
    mask_loss_backward,
    paste_binary_masks,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from minimaskrcnn.ops.nms import batched_nms, nms
from minimaskrcnn.ops.poolers import MultiScaleRoIAlign, MultiScaleRoIPooler
from minimaskrcnn.ops.roi_align import roi_align, roi_align_backward
from minimaskrcnn.ops.roi_pool import roi_pool, roi_pool_backward
from minimaskrcnn.ops.roi_warp import roi_warp, roi_warp_backward

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "MultiScaleRoIAlign",
    "MultiScaleRoIPooler",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "heatmaps_to_keypoints",
    "keypoint_loss",
    "keypoints_to_heatmap",
    "mask_loss",
    "mask_loss_backward",
    "nms",
    "paste_binary_masks",
    "paste_masks_in_image",
    "project_masks_on_boxes",
    "remove_small_boxes",
    "roi_align",
    "roi_align_backward",
    "roi_pool",
    "roi_pool_backward",
    "roi_warp",
    "roi_warp_backward",
]
