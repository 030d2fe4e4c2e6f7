"""The Mask R-CNN network (:class:`MaskRCNN`, :func:`build_model`), torchvision's
``models/detection`` in files read in this order: ``transform`` (GeneralizedRCNNTransform,
ImageList), then four stages of one shape (:mod:`~minimaskrcnn.model.stage`): ``backbone``
(ResNetGN), ``fpn`` (FPN), ``rpn`` (RegionProposalNetwork) and ``roi_heads`` (RoIHeads), which
runs the heads ``box_head`` (TwoMLPHead + FastRCNNPredictor), ``mask_head`` (MaskRCNNHeads or
the MLP head, and their predictor) and, with ``num_keypoints > 0``, ``keypoint_head``
(KeypointRCNNHeads + KeypointRCNNPredictor): five parts after the transform, six with
keypoints. ``mask_rcnn`` chains them. ``matcher`` and ``sampler`` are the target assignment the
RPN and the box head share; ``timing`` the per-stage timer. See ``docs/model.md``."""

from minimaskrcnn.model.mask_rcnn import (
    LOSS_KEYS,
    MaskRCNN,
    MaskRCNNCache,
    build_model,
    upgrade_state_names,
)
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.roi_heads import RoIHeads, RoIHeadsCache
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.model.timing import NullTimer, StageTimer
from minimaskrcnn.model.transform import GeneralizedRCNNTransform, ImageList

__all__ = [
    "LOSS_KEYS",
    "BalancedPositiveNegativeSampler",
    "GeneralizedRCNNTransform",
    "ImageList",
    "MaskRCNN",
    "MaskRCNNCache",
    "Matcher",
    "NullTimer",
    "RoIHeads",
    "RoIHeadsCache",
    "StageTimer",
    "build_model",
    "upgrade_state_names",
]
