"""Mask R-CNN: the stages chained, forward and backward, and inference (He et al. 2017;
torchvision ``models/detection/mask_rcnn.py`` / ``generalized_rcnn.py`` / ``transform.py``).

Shape shorthand: N images, (h_i, w_i) image i's own size, (H, W) the padded batch size (the
largest h and w rounded up to a multiple of 32), C FPN channels, K classes.

Each stage is one file, read in this order (``docs/model.md``); every one has the protocol of
:mod:`minimaskrcnn.model.stage` (``forward_train`` -> outputs, losses, cache; ``predict``;
``backward(d_outputs, cache, loss_weights)`` -> d_inputs)::

    images -> [predict: resize by image_scale] -> pad to (N, 3, H, W)   (this file, transform)
      -> backbone.py  ResNetGN             -> C2..C5
      -> fpn.py       FPN                  -> P2..P6  (features="c5": C5 -> P5 alone)
      -> rpn.py       RegionProposalNetwork -> proposals           + loss_objectness, loss_rpn_box_reg
      -> box_head.py  BoxHead              -> sampled RoIs         + loss_classifier, loss_box_reg
      -> mask_head.py MaskHead                                     + loss_mask
      -> keypoint_head.py KeypointHead (when num_keypoints > 0)    + loss_keypoint

:meth:`MaskRCNN.backward` is the mirror image: mask head, box head and RPN each turn their
weighted losses into gradients of the pyramid levels, which add up; the FPN turns them into
dC2..dC5, the backbone into every parameter and d images. Every gradient accumulates (``+=``) in
``Param.grad``.

``image_scale`` (1 in the presets): ``predict`` resizes each image by it (bilinear, as
torchvision's transform resizes to ``min_size``), and maps the boxes, masks and keypoints back
to the input image (masks are pasted at the input size from the rescaled boxes, as torchvision's
``postprocess`` does); ``forward_train`` takes crops that the data path already cut from the
scaled images (:mod:`minimaskrcnn.data.transforms`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.config import Config, ModelConfig, get_preset
from minimaskrcnn.model.backbone import ResNetGN
from minimaskrcnn.model.box_head import BoxHead
from minimaskrcnn.model.fpn import FPN
from minimaskrcnn.model.keypoint_head import KeypointHead
from minimaskrcnn.model.mask_head import MaskHead
from minimaskrcnn.model.rpn import RegionProposalNetwork
from minimaskrcnn.model.stage import Stage, identity_count
from minimaskrcnn.model.timing import NullTimer
from minimaskrcnn.model.transform import GeneralizedRCNNTransform

LOSS_KEYS = RegionProposalNetwork.LOSSES + BoxHead.LOSSES + MaskHead.LOSSES
"""torchvision's names of the five Mask R-CNN losses (the total is their weighted sum). A model
with a keypoint head has a sixth, ``loss_keypoint``: a model's own are
:attr:`MaskRCNN.loss_keys`."""

LEGACY_NAMES = (("rpn_head.", "rpn.head."), ("roi_heads.box_head.", "box_head."),
                ("roi_heads.box_predictor.", "box_head."), ("roi_heads.mask_head.", "mask_head."))
"""Parameter-name prefixes of checkpoints written before the stages had one file each
(``old prefix -> new prefix``); :func:`upgrade_state_names` converts them on load."""


def upgrade_state_names(state: dict) -> dict:
    """Rename the parameters of a checkpoint written by minimaskrcnn <= 0.1 (``rpn_head.*``,
    ``roi_heads.box_head.*``, ``roi_heads.box_predictor.*``, ``roi_heads.mask_head.*``) to
    today's names (``rpn.head.*``, ``box_head.*``, ``mask_head.*``); other names pass through."""
    out = {}
    for name, value in state.items():
        for old, new in LEGACY_NAMES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = value
    return out


class MaskRCNNCache(NamedTuple):
    """One cache per stage, in forward order (what :meth:`MaskRCNN.backward` reads)."""

    backbone: object
    fpn: object
    rpn: object
    box_head: object
    mask_head: object
    keypoint_head: object = None


class MaskRCNN(Stage):
    """The network of ``ModelConfig``, five stages (parameters: ``backbone``, ``fpn``, ``rpn``,
    ``box_head``, ``mask_head``). Build it with :func:`build_model`.

    Methods:
        forward_train(images, targets, rng) -> (proposals, losses dict of floats, cache)
        backward(None, cache, loss_weights=None) -> d images; accumulates d(weighted sum of the
            losses)/d(param) into every ``Param.grad``
        predict(images) -> list of per-image detection dicts
        to(xp) -> self: parameters (and gradients) moved to ``numpy`` or ``cupy`` (or
            ``"cpu"`` / ``"cuda"``); ``xp`` / ``device`` tell where they are now

    On a GPU (``model.to(cupy)``) the calls take the same host inputs (NumPy images and
    targets, as the data loader makes them): each batch is copied to the device once
    (:meth:`transform`, :meth:`check_targets`), every activation, gradient and parameter stays
    there, and :meth:`predict` returns host (NumPy) detections. The host synchronisations of an
    iteration are listed in docs/kernels.md ("The network on a GPU: where the host syncs").
    """

    def __init__(self, cfg: ModelConfig, rng: np.random.Generator):
        self.config = cfg
        self.transform = GeneralizedRCNNTransform(cfg.size_divisible, cfg.image_scale,
                                                  cfg.num_classes, cfg.num_keypoints,
                                                  cfg.mask_threshold)
        self.backbone = ResNetGN(cfg.stem_channels, cfg.stage_channels, cfg.blocks_per_stage,
                                 cfg.gn_groups, rng)
        if cfg.features == "c5":  # one stride-32 map (paper Table 2d): FPN's top level only
            self.fpn = FPN(cfg.stage_channels[-1:], cfg.fpn_channels, rng, p6=False)
        else:
            self.fpn = FPN(cfg.stage_channels, cfg.fpn_channels, rng)
        self.rpn = RegionProposalNetwork(cfg, rng)
        self.box_head = BoxHead(cfg, rng)
        self.mask_head = MaskHead(cfg, rng)
        self.keypoint_head = KeypointHead(cfg, rng) if cfg.num_keypoints else None

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """This model's loss names: :data:`LOSS_KEYS`, plus ``loss_keypoint`` with a keypoint
        head (``num_keypoints > 0``)."""
        return LOSS_KEYS + (KeypointHead.LOSSES if self.keypoint_head is not None else ())

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
                      sum_counts=identity_count):
        """One training forward pass, stage by stage.

        Args:
            images: list of N ``(3, h_i, w_i)`` float32 arrays (standardised; sizes may differ).
            targets: list of N dicts: ``boxes (G_i, 4) float32 [x1, y1, x2, y2]`` pixels with
                positive width and height, ``labels (G_i,) int64`` in 1..K, ``masks (G_i, h_i,
                w_i) uint8``. ``G_i = 0`` is allowed (every anchor and RoI is background).
            rng: a ``np.random.Generator`` driving the RPN's and then the box head's sampler
                for the whole batch, or a list of N Generators, one per image (each image then
                samples from its own stream: what data-parallel training needs).
            proposals: optional list of N ``(P_i, 4)`` boxes used instead of the RPN's (the
                gradient check holds them fixed; the RPN losses are computed as usual).
            timer: optional :class:`~minimaskrcnn.model.timing.StageTimer` collecting seconds
                per stage.
            sum_counts: sums each loss normaliser over data-parallel ranks (identity: one
                process holds the whole batch).

        Returns:
            ``(proposals, losses, cache)``: the RPN's proposals (list of N ``(P_i, 4)``),
            ``losses`` mapping the five torchvision loss names (:data:`LOSS_KEYS`) to Python
            floats, and a :class:`MaskRCNNCache` for :meth:`backward`.

        Raises:
            TypeError / ValueError: malformed images or targets (naming the argument and index),
            a mask whose size is not its image's, a label outside 1..K, a box with zero width
            or height, a list of generators whose length is not N.
        """
        timer = timer or NullTimer()
        images, targets = self.transform(images, targets, dtype=self.dtype, xp=self.xp)
        image_size = images.tensors.shape[-2:]
        with timer("backbone_fpn"):
            feats, _, c_backbone = self.backbone.forward_train(images.tensors)  # C2..C5
            pyramid, _, c_fpn = self.fpn.forward_train(self._fpn_inputs(feats))  # P2..P6
            roi_maps = self._roi_maps(pyramid)  # P2..P5
        with timer("rpn"):
            proposals, rpn_losses, c_rpn = self.rpn.forward_train(
                pyramid, images, targets, rng, proposals=proposals, sum_counts=sum_counts)
        with timer("roi_heads"):
            sampled, box_losses, c_box = self.box_head.forward_train(
                roi_maps, proposals, image_size, targets, rng, sum_counts=sum_counts)
        with timer("mask_head"):
            _, mask_losses, c_mask = self.mask_head.forward_train(
                roi_maps, sampled, image_size, [t["masks"] for t in targets],
                sum_counts=sum_counts)
        losses = {**rpn_losses, **box_losses, **mask_losses}
        c_kp = None
        if self.keypoint_head is not None:
            with timer("keypoint_head"):
                _, kp_losses, c_kp = self.keypoint_head.forward_train(
                    roi_maps, sampled, image_size, [t["keypoints"] for t in targets],
                    sum_counts=sum_counts)
            losses.update(kp_losses)
        return proposals, losses, MaskRCNNCache(c_backbone, c_fpn, c_rpn, c_box, c_mask, c_kp)

    def backward(self, dy, cache: MaskRCNNCache, loss_weights=None):
        """Backward through every stage in reverse; returns d images ``(N, 3, H, W)`` (padded).

        Accumulates d(sum of the weighted losses)/d(param) into every ``Param.grad`` (``+=``;
        call ``zero_grad`` between iterations); gradients have the parameters' dtype.

        Args:
            dy: ``None``: the training forward's outputs (proposals) carry no gradient; what
                flows back starts at the losses.
            cache: the :class:`MaskRCNNCache` of :meth:`forward_train`.
            loss_weights: ``{loss name: weight}`` (:data:`LOSS_KEYS`; a missing name weighs 1).

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
        d_mask = self.mask_head.backward(None, cache.mask_head, loss_weights)  # dP2..dP5 or None
        d_box = self.box_head.backward(None, cache.box_head, loss_weights)  # dP2..dP5
        if d_mask is not None:
            d_box = [b + m for b, m in zip(d_box, d_mask, strict=True)]
        if self.keypoint_head is not None:
            d_kp = self.keypoint_head.backward(None, cache.keypoint_head, loss_weights)
            if d_kp is not None:
                d_box = [b + k for b, k in zip(d_box, d_kp, strict=True)]
        d_rpn = self.rpn.backward(None, cache.rpn, loss_weights)  # dP2..dP6
        n_roi = len(d_box)  # the RoI heads' levels (P2..P5) come first, then the RPN's P6
        d_pyramid = [b + r for b, r in zip(d_box, d_rpn[:n_roi], strict=True)] + d_rpn[n_roi:]
        d_feats = self.fpn.backward(d_pyramid, cache.fpn)  # dC2..dC5
        return self.backbone.backward(self._backbone_grads(d_feats), cache.backbone)

    # -- which maps each stage reads (features="fpn": C2..C5 -> P2..P6; "c5": C5 -> P5) -------

    def _fpn_inputs(self, feats):
        """The backbone maps the FPN reads: C2..C5, or C5 alone (``features="c5"``)."""
        return feats[-len(self.fpn.inner_blocks):]

    def _roi_maps(self, pyramid):
        """The maps the RoI heads pool from: P2..P5 (not the RPN's P6), or ``[P5]``."""
        return pyramid[:-1] if self.fpn.p6 else pyramid

    def _backbone_grads(self, d_feats):
        """``[dC2..dC5]`` for the backbone, ``None`` for maps the FPN did not read."""
        return [None] * (len(self.backbone.layers) - len(d_feats)) + list(d_feats)

    # -- inference ----------------------------------------------------------------------------

    def predict(self, images, *, timer=None, mask_format="bool"):
        """Detections for each image (torchvision ``MaskRCNN`` in eval mode).

        Args:
            images: list of N ``(3, h_i, w_i)`` float arrays (standardised). With
                ``config.image_scale != 1`` the network sees each resized by it (bilinear) and
                everything returned is mapped back to these images' pixels.
            mask_format: ``"bool"`` (dense masks) or ``"rle"`` (COCO run-length encodings,
                pasted a few at a time: memory bounded by the image, for very large images).

        Returns:
            list of N dicts: ``boxes (D_i, 4) float32`` ``[x1, y1, x2, y2]`` pixels of the image,
            ``labels (D_i,) int64`` in 1..K, ``scores (D_i,) float32`` (decreasing),
            ``masks``: ``(D_i, h_i, w_i) bool`` (pasted probability >= ``mask_threshold``) or a
            list of D_i RLE dicts.

        Raises:
            TypeError: ``images`` not a non-empty list, an element not a float NumPy array.
            ValueError: an element not of shape ``(3, h, w)``; an unknown ``mask_format``.
        """
        if mask_format not in ("bool", "rle"):
            raise ValueError(f"mask_format must be 'bool' or 'rle', got {mask_format!r}")
        timer = timer or NullTimer()
        original_sizes = self.transform.image_sizes(images)
        images, _ = self.transform(images, dtype=self.dtype, xp=self.xp)
        image_size = images.tensors.shape[-2:]
        with timer("backbone_fpn"):
            pyramid = self.fpn.predict(self._fpn_inputs(self.backbone.predict(images.tensors)))
            roi_maps = self._roi_maps(pyramid)
        with timer("rpn"):
            proposals = self.rpn.predict(pyramid, images)
        with timer("roi_heads"):
            detections = self.box_head.predict(roi_maps, proposals, image_size,
                                               images.image_sizes)
        with timer("mask_head"):
            detections = self.mask_head.predict(roi_maps, detections, image_size)
        if self.keypoint_head is not None:
            with timer("keypoint_head"):
                detections = self.keypoint_head.predict(roi_maps, detections, image_size)
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
