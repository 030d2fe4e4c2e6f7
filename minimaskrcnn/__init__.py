"""minimaskrcnn: Mask R-CNN (He et al., ICCV 2017) from scratch in NumPy, with Numba CPU, Numba
CUDA and CuPy kernels checked against the reference, and hand-written backward passes.

Public API:
    minimaskrcnn.ops        detection ops (box_iou, nms, roi_align, ...), torchvision-compatible
    minimaskrcnn.backend    the dispatch point for kernel tiers
"""

__version__ = "0.1.0"
