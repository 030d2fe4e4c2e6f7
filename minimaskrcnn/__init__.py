"""minimaskrcnn: Mask R-CNN (He et al., ICCV 2017) from scratch in NumPy, with Numba CPU, Numba
CUDA and CuPy kernels checked against the reference, and hand-written backward passes.

Public API:
    minimaskrcnn.ops        detection ops (box_iou, nms, roi_align, ...), torchvision-compatible
    minimaskrcnn.backend    the dispatch point for kernel tiers
    minimaskrcnn.build_model(preset_or_config, rng)   the Mask R-CNN (minimaskrcnn.model)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # minimaskrcnn.build_model(preset_or_config, rng) -> MaskRCNN, imported on first use so that
    # `import minimaskrcnn` stays cheap
    if name == "build_model":
        from minimaskrcnn.model import build_model  # noqa: PLC0415

        return build_model
    raise AttributeError(f"module 'minimaskrcnn' has no attribute {name!r}")
