"""The Mask R-CNN network: backbone, FPN, RPN, RoI heads (box and mask), and the model that
composes them (:class:`MaskRCNN`, :func:`build_model`). See ``docs/model.md``."""

from minimaskrcnn.model.mask_rcnn import LOSS_KEYS, MaskRCNN, build_model
from minimaskrcnn.model.timing import NullTimer, StageTimer

__all__ = ["LOSS_KEYS", "MaskRCNN", "NullTimer", "StageTimer", "build_model"]
