"""The Mask R-CNN network: backbone, FPN, RPN, RoI heads (box and mask), and the model that
composes them (:class:`MaskRCNN`, :func:`build_model`). See ``docs/model.md``."""

from minimaskrcnn.model.mask_rcnn import LOSS_KEYS, MaskRCNN, StageTimer, build_model

__all__ = ["LOSS_KEYS", "MaskRCNN", "StageTimer", "build_model"]
