"""The Mask R-CNN network as five stages of one shape (:mod:`~minimaskrcnn.model.stage`), one file
each, read in this order: ``backbone`` (ResNetGN), ``fpn`` (FPN), ``rpn``
(RegionProposalNetwork), ``box_head`` (BoxHead), ``mask_head`` (MaskHead); ``mask_rcnn`` chains
them (:class:`MaskRCNN`, :func:`build_model`). ``matcher`` and ``sampler`` are the target
assignment the RPN and the box head share. See ``docs/model.md``."""

from minimaskrcnn.model.mask_rcnn import (
    LOSS_KEYS,
    MaskRCNN,
    MaskRCNNCache,
    build_model,
    upgrade_state_names,
)
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.model.timing import NullTimer, StageTimer

__all__ = [
    "LOSS_KEYS",
    "BalancedPositiveNegativeSampler",
    "MaskRCNN",
    "MaskRCNNCache",
    "Matcher",
    "NullTimer",
    "StageTimer",
    "build_model",
    "upgrade_state_names",
]
