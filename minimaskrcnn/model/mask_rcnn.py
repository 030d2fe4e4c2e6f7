"""Mask R-CNN: the stages chained, forward and backward, and inference (He et al. 2017;
torchvision ``models/detection/mask_rcnn.py`` / ``generalized_rcnn.py``).

Shape shorthand: N images, (h_i, w_i) image i's own size, (H, W) the padded batch size (the
largest h and w rounded up to a multiple of 32), C FPN channels, K classes.

The network is four stages with the protocol of :mod:`minimaskrcnn.model.stage`
(``forward_train`` -> outputs, losses, cache; ``predict``; ``backward(d_outputs, cache,
loss_weights)`` -> d_inputs): backbone, FPN, RPN and the RoI heads, which run the box head,
with ``mask_on`` (the default) the mask head and with ``num_keypoints > 0`` the keypoint head:
Faster R-CNN, Mask R-CNN and Keypoint R-CNN are configs of this one network. Five parts (six with keypoints) after
the transform, one file each, read in this order (``docs/model.md``)::

    images -> transform.py   GeneralizedRCNNTransform -> ImageList (N, 3, H, W) + image_sizes
      -> backbone.py  ResNetGN              -> C2..C5
      -> fpn.py       FPN                   -> P2..P6  (features="c5": C5 -> P5 alone)
      -> rpn.py       RegionProposalNetwork -> proposals         + loss_objectness, loss_rpn_box_reg
      -> roi_heads.py RoIHeads on P2..P5:
           box_head.py      TwoMLPHead + FastRCNNPredictor   -> sampled RoIs
                                                             + loss_classifier, loss_box_reg
           mask_head.py     MaskRCNNHeads + MaskRCNNPredictor (foreground RoIs) + loss_mask
                                                             (mask_on)
           keypoint_head.py KeypointRCNNHeads + KeypointRCNNPredictor (num_keypoints > 0)
                                                             + loss_keypoint
    predict: -> transform.postprocess: boxes (masks, keypoints) in the input images' pixels

:meth:`MaskRCNN.backward` is the mirror image: the RoI heads and the RPN each turn their
weighted losses into gradients of the pyramid levels, which add up; the FPN turns them into
dC2..dC5, the backbone into every parameter and d images. Every gradient accumulates (``+=``) in
``Param.grad``.

``image_scale`` (1 in the presets): ``predict`` resizes each image by it (bilinear, as
torchvision's transform resizes to ``min_size``), and maps the boxes, masks and keypoints back
to the input image (:mod:`minimaskrcnn.model.transform`); ``forward_train`` takes crops that the
data path already cut from the scaled images (:mod:`minimaskrcnn.data.transforms`).

Parameter names (torchvision's): ``backbone.*``, ``fpn.*``, ``rpn.head.*``,
``roi_heads.box_head.fc6``/``fc7``, ``roi_heads.box_predictor.cls_score``/``bbox_pred``,
``roi_heads.mask_head.mask_fcn1..``, ``roi_heads.mask_predictor.conv5_mask``/``mask_fcn_logits``,
``roi_heads.keypoint_head.0..``, ``roi_heads.keypoint_predictor.kps_score_lowres``. Checkpoints
of the two earlier namings load (:func:`upgrade_state_names`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.config import Config, ModelConfig, get_preset
from minimaskrcnn.model.backbone import ResNetGN
from minimaskrcnn.model.fpn import FPN
from minimaskrcnn.model.roi_heads import BOX_LOSSES, MASK_LOSSES, build_roi_heads
from minimaskrcnn.model.rpn import RegionProposalNetwork
from minimaskrcnn.model.stage import Stage, identity_count, sum_levels
from minimaskrcnn.model.timing import NullTimer
from minimaskrcnn.model.transform import MASK_FORMATS, GeneralizedRCNNTransform
from minimaskrcnn.model.tta import predict_hflip_tta

LOSS_KEYS = RegionProposalNetwork.LOSSES + BOX_LOSSES + MASK_LOSSES
"""torchvision's names of the five Mask R-CNN losses (the total is their weighted sum). A model
without a mask head has no ``loss_mask``, one with a keypoint head has ``loss_keypoint``: a
model's own are :attr:`MaskRCNN.loss_keys`."""


def _sequential_to_numbered(name: str):
    """``mask_fcn.2.`` (a Sequential's conv, ReLUs between) -> ``mask_fcn2.``: the i-th layer."""
    return lambda m: f"{name}{int(m.group(1)) // 2 + 1}."


STATE_NAME_RULES = (
    # minimaskrcnn <= 0.1 (torchvision-like, the mask predictor inside the mask head)
    (r"rpn_head\.", "rpn.head."),
    (r"roi_heads\.mask_head\.mask_fcn\.(\d+)\.",
     _sequential_to_numbered("roi_heads.mask_head.mask_fcn")),
    (r"roi_heads\.mask_head\.mask_fc\.(\d+)\.",
     _sequential_to_numbered("roi_heads.mask_head.mask_fc")),
    (r"roi_heads\.mask_head\.(conv5_mask|mask_fcn_logits|mask_fc_logits)\.",
     r"roi_heads.mask_predictor.\1."),
    # one file per stage (BoxHead, MaskHead, KeypointHead stages beside the RPN)
    (r"box_head\.(fc6|fc7)\.", r"roi_heads.box_head.\1."),
    (r"box_head\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1."),
    (r"mask_head\.mask_fcn\.(\d+)\.", _sequential_to_numbered("roi_heads.mask_head.mask_fcn")),
    (r"mask_head\.mask_fc\.(\d+)\.", _sequential_to_numbered("roi_heads.mask_head.mask_fc")),
    (r"mask_head\.(conv5_mask|mask_fcn_logits|mask_fc_logits)\.", r"roi_heads.mask_predictor.\1."),
    (r"keypoint_head\.keypoint_fcn\.(\d+)\.", r"roi_heads.keypoint_head.\1."),
    (r"keypoint_head\.kps_score_lowres\.", "roi_heads.keypoint_predictor.kps_score_lowres."),
)
"""``(pattern, replacement)`` for the parameter names of older checkpoints, matched at the
start of a name (first match wins; today's names match none). minimaskrcnn <= 0.1 wrote
``rpn_head.*``, ``roi_heads.box_head.*``, ``roi_heads.box_predictor.*`` and
``roi_heads.mask_head.{mask_fcn.i, conv5_mask, mask_fcn_logits}``; the one-file-per-stage layout
wrote ``box_head.{fc6, fc7, cls_score, bbox_pred}``, ``mask_head.{mask_fcn.i, conv5_mask,
mask_fcn_logits}`` (``mask_fc.i``, ``mask_fc_logits`` for the MLP head) and
``keypoint_head.{keypoint_fcn.i, kps_score_lowres}``."""


def upgrade_state_names(state: dict) -> dict:
    """Rename the parameters (or momentum buffers) of a checkpoint written with an older naming
    (:data:`STATE_NAME_RULES`) to today's; other names pass through. Returns a new dict, in the
    same order, with the same values."""
    out = {}
    for name, value in state.items():
        for pattern, replacement in STATE_NAME_RULES:
            new, n = re.subn("^" + pattern, replacement, name, count=1)
            if n:
                name = new
                break
        out[name] = value
    return out


class MaskRCNNCache(NamedTuple):
    """One cache per stage, in forward order (what :meth:`MaskRCNN.backward` reads)."""

    backbone: object
    fpn: object
    rpn: object
    roi_heads: object


class MaskRCNN(Stage):
    """The network of ``ModelConfig``: ``transform``, then the stages ``backbone``, ``fpn``,
    ``rpn``, ``roi_heads`` (torchvision ``MaskRCNN``'s attributes). Build it with
    :func:`build_model`.

    Methods:
        forward_train(images, targets, rng) -> (proposals, losses dict of floats, cache)
        backward(None, cache, loss_weights=None) -> d images; accumulates d(weighted sum of the
            losses)/d(param) into every ``Param.grad``
        predict(images) -> list of per-image detection dicts
        to(xp) -> self: parameters (and gradients) moved to ``numpy`` or ``cupy`` (or
            ``"cpu"`` / ``"cuda"``); ``xp`` / ``device`` tell where they are now

    On a GPU (``model.to(cupy)``) the calls take the same host inputs (NumPy images and
    targets, as the data loader makes them): each batch is copied to the device once (by the
    :attr:`transform`), every activation, gradient and parameter stays there, and
    :meth:`predict` returns host (NumPy) detections. The host synchronisations of an iteration
    are listed in docs/kernels.md ("The network on a GPU: where the host syncs").
    """

    def __init__(self, cfg: ModelConfig, rng: np.random.Generator):
        self.config = cfg
        self.transform = GeneralizedRCNNTransform(cfg.size_divisible, cfg.image_scale,
                                                  cfg.num_classes, cfg.num_keypoints,
                                                  cfg.mask_threshold, cfg.mask_on)
        self.backbone = ResNetGN(cfg.stem_channels, cfg.stage_channels, cfg.blocks_per_stage,
                                 cfg.gn_groups, rng)
        if cfg.features == "c5":  # one stride-32 map (paper Table 2d): FPN's top level only
            self.fpn = FPN(cfg.stage_channels[-1:], cfg.fpn_channels, rng, p6=False)
        else:
            self.fpn = FPN(cfg.stage_channels, cfg.fpn_channels, rng)
        self.rpn = RegionProposalNetwork(cfg, rng)
        self.roi_heads = build_roi_heads(cfg, rng)

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """This model's loss names: the RPN's two, the box head's two, ``loss_mask`` with a mask
        head (``mask_on``) and ``loss_keypoint`` with a keypoint head (``num_keypoints > 0``):
        :data:`LOSS_KEYS` for the default config."""
        return RegionProposalNetwork.LOSSES + self.roi_heads.loss_keys

    # -- parameters ---------------------------------------------------------------------------

    @property
    def xp(self):
        """The array module of the parameters: ``numpy``, or ``cupy`` after ``to(cupy)``."""
        return backend.get_array_module(self.backbone.conv1.weight.data)

    @property
    def dtype(self):
        """The parameters' dtype (float32; float64 after ``astype`` for gradient checks)."""
        return self.backbone.conv1.weight.data.dtype

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the parameters are (:func:`backend.device_name`)."""
        return backend.device_name(self.xp)

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{dotted name: NumPy copy of the array}`` (host copies on either device)."""
        return {name: np.array(backend.to_numpy(p.data), copy=True)
                for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays in (:meth:`Module.load_state_dict`; ``strict=False`` skips names absent
        from ``state``). Names of older checkpoints are converted (:func:`upgrade_state_names`).
        Raises ``ValueError`` naming the missing/unexpected names (``strict``) or the parameter
        whose shape differs."""
        try:
            super().load_state_dict(upgrade_state_names(state), strict=strict)
        except KeyError as e:  # Module raises KeyError for missing/unexpected names
            raise ValueError(e.args[0]) from None

    # -- training -----------------------------------------------------------------------------

    def forward_train(self, images, targets, rng, *, proposals=None, timer=None,
                      sum_counts=identity_count, roi_exchange=None):
        """One training forward pass, stage by stage.

        Args:
            images: list of N ``(3, h_i, w_i)`` float32 arrays (standardised; sizes may differ).
            targets: list of N dicts: ``boxes (G_i, 4) float32 [x1, y1, x2, y2]`` pixels with
                positive width and height, ``labels (G_i,) int64`` in 1..K, ``masks (G_i, h_i,
                w_i) uint8`` with a mask head (ignored without one), ``keypoints (G_i, K, 3)``
                with a keypoint head. ``G_i = 0`` is
                allowed (every anchor and RoI is background).
            rng: a ``np.random.Generator`` driving the RPN's and then the RoI heads' sampler
                for the whole batch, or a list of N Generators, one per image (each image then
                samples from its own stream: what data-parallel training needs).
            proposals: optional list of N ``(P_i, 4)`` boxes used instead of the RPN's (the
                gradient check holds them fixed; the RPN losses are computed as usual).
            timer: optional :class:`~minimaskrcnn.model.timing.StageTimer` collecting seconds
                per stage (``backbone_fpn``, ``rpn``, ``box_head``, ``mask_head``,
                ``keypoint_head``).
            sum_counts: sums each loss normaliser over data-parallel ranks (identity: one
                process holds the whole batch).
            roi_exchange: data-parallel only: a
                :class:`~minimaskrcnn.distributed.collectives.RoIExchange` that evens the mask
                head's RoIs out over the ranks (:meth:`RoIHeads.forward_train`).

        Returns:
            ``(proposals, losses, cache)``: the RPN's proposals (list of N ``(P_i, 4)``),
            ``losses`` mapping the loss names (:attr:`loss_keys`) to Python floats, and a
            :class:`MaskRCNNCache` for :meth:`backward`.

        Raises:
            TypeError / ValueError: malformed images or targets (naming the argument and index),
            a mask whose size is not its image's, a label outside 1..K, a box with zero width
            or height, a list of generators whose length is not N.
        """
        timer = timer or NullTimer()
        images, targets = self.transform(images, targets, dtype=self.dtype, xp=self.xp)
        with timer("backbone_fpn"):
            feats, _, c_backbone = self.backbone.forward_train(images.tensors)  # C2..C5
            pyramid, _, c_fpn = self.fpn.forward_train(self._fpn_inputs(feats))  # P2..P6
        with timer("rpn"):
            proposals, rpn_losses, c_rpn = self.rpn.forward_train(
                pyramid, images, targets, rng, proposals=proposals, sum_counts=sum_counts)
        _, roi_losses, c_roi_heads = self.roi_heads.forward_train(
            self._roi_maps(pyramid), proposals, images, targets, rng, sum_counts=sum_counts,
            timer=timer, roi_exchange=roi_exchange)
        losses = {**rpn_losses, **roi_losses}
        return proposals, losses, MaskRCNNCache(c_backbone, c_fpn, c_rpn, c_roi_heads)

    def backward(self, dy, cache: MaskRCNNCache, loss_weights=None):
        """Backward through every stage in reverse; returns d images ``(N, 3, H, W)`` (padded).

        Accumulates d(sum of the weighted losses)/d(param) into every ``Param.grad`` (``+=``;
        call ``zero_grad`` between iterations); gradients have the parameters' dtype.

        Args:
            dy: ``None``: the training forward's outputs (proposals) carry no gradient; what
                flows back starts at the losses.
            cache: the :class:`MaskRCNNCache` of :meth:`forward_train`.
            loss_weights: ``{loss name: weight}`` (:attr:`loss_keys`; a missing name weighs 1).

        Raises:
            ValueError: ``dy`` is not ``None``, or a loss name in ``loss_weights`` is unknown.
            TypeError: ``cache`` is not a :class:`MaskRCNNCache`.
        """
        if dy is not None:
            raise ValueError("MaskRCNN.backward: the proposals carry no gradient, pass dy=None "
                             "(the losses' weights go in loss_weights)")
        if not isinstance(cache, MaskRCNNCache):
            raise TypeError("MaskRCNN.backward needs the MaskRCNNCache of forward_train, got "
                            f"{type(cache).__name__}")
        unknown = sorted(set(loss_weights or {}) - set(self.loss_keys))
        if unknown:
            raise ValueError(f"loss_weights: unknown loss names {unknown}; "
                             f"losses: {self.loss_keys}")
        d_roi_maps = self.roi_heads.backward(None, cache.roi_heads, loss_weights)  # dP2..dP5
        d_pyramid = self.rpn.backward(None, cache.rpn, loss_weights)  # dP2..dP6
        d_pyramid = self._roi_maps_backward(d_roi_maps, d_pyramid)
        d_feats = self.fpn.backward(d_pyramid, cache.fpn)  # dC2..dC5
        return self.backbone.backward(self._fpn_inputs_backward(d_feats), cache.backbone)

    # -- which maps each stage reads (features="fpn": C2..C5 -> P2..P6; "c5": C5 -> P5) -------

    def _fpn_inputs(self, feats):
        """The backbone maps the FPN reads: C2..C5, or C5 alone (``features="c5"``)."""
        return feats[-len(self.fpn.inner_blocks):]

    def _fpn_inputs_backward(self, d_feats):
        """Mirror of :meth:`_fpn_inputs`: ``[dC2..dC5]`` for the backbone, ``None`` for the maps
        the FPN did not read."""
        return [None] * (len(self.backbone.layers) - len(d_feats)) + list(d_feats)

    def _roi_maps(self, pyramid):
        """The maps the RoI heads pool from: P2..P5 (not the RPN's P6), or ``[P5]``."""
        return pyramid[:-1] if self.fpn.p6 else pyramid

    def _roi_maps_backward(self, d_roi_maps, d_pyramid):
        """Mirror of :meth:`_roi_maps`: the RoI heads' gradients added to the pyramid's on the
        maps they read (P6, the RPN's alone, passes through)."""
        n = len(d_roi_maps)
        return sum_levels(d_roi_maps, d_pyramid[:n]) + d_pyramid[n:]

    # -- inference ----------------------------------------------------------------------------

    def predict(self, images, *, timer=None, mask_format="bool", hflip_tta: bool = False):
        """Detections for each image (torchvision ``MaskRCNN`` in eval mode).

        Args:
            images: list of N ``(3, h_i, w_i)`` float arrays (standardised). With
                ``config.image_scale != 1`` the network sees each resized by it (bilinear) and
                everything returned is mapped back to these images' pixels.
            timer: optional :class:`~minimaskrcnn.model.timing.StageTimer` (``backbone_fpn``,
                ``rpn``, ``box_head``, ``mask_head``, ``keypoint_head``, ``postprocess``).
            mask_format: ``"bool"`` (dense masks), ``"rle"`` (COCO run-length encodings,
                pasted a few at a time: memory bounded by the image, for very large images) or
                ``"roi"`` (not pasted: each detection's ``(M, M) float32`` probabilities in its
                box, to paste at any threshold with
                :func:`minimaskrcnn.ops.paste_masks_in_image`).
            hflip_tta: horizontal-flip test-time augmentation
                (:func:`minimaskrcnn.model.tta.predict_hflip_tta`: boxes of both passes merged
                by NMS, mask probabilities averaged); twice the cost.

        Returns:
            list of N dicts: ``boxes (D_i, 4) float32`` ``[x1, y1, x2, y2]`` pixels of the image,
            ``labels (D_i,) int64`` in 1..K, ``scores (D_i,) float32`` (decreasing); with a
            mask head ``masks``: ``(D_i, h_i, w_i) bool`` (pasted probability >=
            ``mask_threshold``), a list of D_i RLE dicts or ``(D_i, M, M) float32``
            (``"roi"``); with a keypoint head ``keypoints (D_i, K, 3) float32``
            ``[x, y, 1]`` and ``keypoint_scores (D_i, K) float32``.

        Raises:
            TypeError: ``images`` not a non-empty list, an element not a float NumPy array.
            ValueError: an element not of shape ``(3, h, w)``; an unknown ``mask_format``.
        """
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        timer = timer or NullTimer()
        original_sizes = self.transform.image_sizes(images)
        images, _ = self.transform(images, dtype=self.dtype, xp=self.xp)
        if hflip_tta:
            with timer("tta"):
                detections = predict_hflip_tta(self, images)
            with timer("postprocess"):
                detections = self.transform.postprocess(detections, images.image_sizes,
                                                        original_sizes, mask_format=mask_format)
            return backend.to_device(detections, np)
        with timer("backbone_fpn"):
            pyramid = self.fpn.predict(self._fpn_inputs(self.backbone.predict(images.tensors)))
        with timer("rpn"):
            proposals = self.rpn.predict(pyramid, images)
        detections = self.roi_heads.predict(self._roi_maps(pyramid), proposals, images,
                                            timer=timer)
        with timer("postprocess"):
            detections = self.transform.postprocess(detections, images.image_sizes,
                                                    original_sizes, mask_format=mask_format)
        return backend.to_device(detections, np)  # host results (a no-op on the CPU)


def build_model(preset_or_config, rng: np.random.Generator) -> MaskRCNN:
    """Build a :class:`MaskRCNN`.

    Args:
        preset_or_config: a preset name (``"nuclei-mini"``, ``"shapes-mini"``), a ``Config`` or
            a ``ModelConfig``.
        rng: ``np.random.Generator`` for the initial weights.

    Raises:
        TypeError: ``rng`` is not a Generator or the config is of another type.
        ValueError: unknown preset name.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(preset_or_config, str):
        cfg = get_preset(preset_or_config).model
    elif isinstance(preset_or_config, Config):
        cfg = preset_or_config.model
    elif isinstance(preset_or_config, ModelConfig):
        cfg = preset_or_config
    else:
        raise TypeError("preset_or_config must be a preset name, a Config or a ModelConfig, got "
                        f"{type(preset_or_config).__name__}")
    return MaskRCNN(cfg, rng)
