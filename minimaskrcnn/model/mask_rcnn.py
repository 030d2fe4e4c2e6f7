"""Mask R-CNN: the whole network, its training step and its inference (He et al. 2017;
torchvision ``models/detection/mask_rcnn.py`` / ``generalized_rcnn.py`` / ``transform.py``).

Shape shorthand: N images, (h_i, w_i) image i's own size, (H, W) the padded batch size (the
largest h and w rounded up to a multiple of 32), C FPN channels, T anchors per image, G_i
ground truths of image i, D_i detections of image i, K classes.

Forward (training)::

    images -> zero-pad to (N, 3, H, W) -> ResNetGN -> C2..C5 -> FPN -> P2..P6
    P2..P6 -> RPN head -> objectness (N, T), deltas (N, T, 4)
        -> anchor targets (Matcher 0.7/0.3, sampler 256/0.5) -> loss_objectness, loss_rpn_box_reg
        -> proposals (top-k per level, decode, clip, NMS per level, top 1000)  [no gradient]
    P2..P5 + proposals -> RoI heads -> loss_classifier, loss_box_reg, loss_mask

Backward (``model.backward(cache)``), the reverse: the RoI heads return dP2..dP5 (through the
poolers' backward), the RPN head returns dP2..dP6, the two are summed per level, the FPN turns
them (P6's gradient goes into P5's even pixels) into dC2..dC5, the backbone into every
parameter. Every gradient accumulates (``+=``) in ``Param.grad``.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.config import Config, ModelConfig, get_preset
from minimaskrcnn.model.backbone import ResNetGN
from minimaskrcnn.model.fpn import FPN
from minimaskrcnn.model.roi_heads import RoIHeads
from minimaskrcnn.model.rpn import (
    RPNHead,
    assign_anchor_targets,
    filter_proposals,
    flatten_head_outputs,
    rpn_losses,
    unflatten_head_grads,
)
from minimaskrcnn.model.timing import NullTimer
from minimaskrcnn.nn.module import Module
from minimaskrcnn.ops import AnchorGenerator, BoxCoder
from minimaskrcnn.training.matcher import Matcher
from minimaskrcnn.training.sampler import BalancedPositiveNegativeSampler

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class MaskRCNN(Module):
    """The network of ``ModelConfig`` (parameters: ``backbone``, ``fpn``, ``rpn_head``,
    ``roi_heads``). Build it with :func:`build_model`.

    Methods:
        forward_train(images, targets, rng) -> (losses dict of floats, cache)
        backward(cache): accumulate d(total loss)/d(param) into every ``Param.grad``
        predict(images) -> list of per-image detection dicts
    """

    def __init__(self, cfg: ModelConfig, rng: np.random.Generator):
        self.config = cfg
        self.backbone = ResNetGN(cfg.stem_channels, cfg.stage_channels, cfg.blocks_per_stage,
                                 cfg.gn_groups, rng)
        self.fpn = FPN(cfg.stage_channels, cfg.fpn_channels, rng)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                                (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        num_anchors = len(cfg.aspect_ratios)
        self.rpn_head = RPNHead(cfg.fpn_channels, num_anchors, rng)
        self.rpn_box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0), cfg.bbox_xform_clip)
        self.rpn_matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh,
                                   allow_low_quality_matches=True)
        self.rpn_sampler = BalancedPositiveNegativeSampler(cfg.rpn_batch_size_per_image,
                                                           cfg.rpn_positive_fraction)
        self.roi_heads = RoIHeads(cfg, rng)

    # -- parameters ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{dotted name: copy of the array}``."""
        return {name: np.array(p.data, copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays in (:meth:`Module.load_state_dict`; ``strict=False`` skips names absent
        from ``state``). Raises ``ValueError`` naming the missing/unexpected names (``strict``)
        or the parameter whose shape differs."""
        try:
            super().load_state_dict(state, strict=strict)
        except KeyError as e:  # Module raises KeyError for missing/unexpected names
            raise ValueError(e.args[0]) from None

    # -- input --------------------------------------------------------------------------------

    def _batch(self, images):
        """Validate and zero-pad images to ``(N, 3, H, W)``, H and W multiples of
        ``size_divisible``, at the bottom and right (torchvision ``GeneralizedRCNNTransform``)."""
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise TypeError("images must be a non-empty list of (3, H, W) float arrays")
        dtype = self.backbone.conv1.weight.data.dtype
        sizes = []
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray):
                raise TypeError(f"images[{i}] must be a numpy array (3, H, W), got {type(im).__name__}")
            if im.ndim != 3 or im.shape[0] != 3 or im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}] must have shape (3, H, W), got {im.shape}")
            if not np.issubdtype(im.dtype, np.floating):
                raise TypeError(f"images[{i}] must be a float array (standardised), got {im.dtype}")
            sizes.append((int(im.shape[1]), int(im.shape[2])))
        d = self.config.size_divisible
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        batch = np.zeros((len(images), 3, hp, wp), dtype)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = im
        return batch, sizes

    def _check_targets(self, targets, sizes):
        if not isinstance(targets, (list, tuple)) or len(targets) != len(sizes):
            raise ValueError(f"targets must be a list of {len(sizes)} dicts (one per image)")
        out = []
        k = self.config.num_classes
        for i, (t, (h, w)) in enumerate(zip(targets, sizes, strict=True)):
            if not isinstance(t, dict) or not {"boxes", "labels", "masks"} <= set(t):
                raise ValueError(f"targets[{i}] must be a dict with boxes, labels and masks")
            boxes = np.asarray(t["boxes"])
            labels = np.asarray(t["labels"])
            masks = np.asarray(t["masks"])
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"targets[{i}]['boxes'] must have shape (G, 4), got {boxes.shape}")
            g = boxes.shape[0]
            if labels.shape != (g,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"targets[{i}]['labels'] must be ({g},) integers, got "
                                 f"{labels.shape} {labels.dtype}")
            if g and (labels.min() < 1 or labels.max() > k):
                raise ValueError(f"targets[{i}]['labels'] must lie in 1..{k}, got "
                                 f"{labels.min()}..{labels.max()}")
            if masks.shape != (g, h, w):
                raise ValueError(f"targets[{i}]['masks'] must have shape (G, H, W) = {(g, h, w)} "
                                 f"to match boxes and images[{i}], got {masks.shape}")
            if not np.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")
            bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
            if bad.size:  # torchvision raises too ("All bounding boxes should have positive ...")
                raise ValueError(f"targets[{i}]['boxes'][{bad[0]}] = {boxes[bad[0]].tolist()} has "
                                 "zero or negative width or height: remove degenerate boxes first")
            out.append({"boxes": boxes.astype(np.float32), "labels": labels.astype(np.int64),
                        "masks": masks})
        return out

    # -- shared pieces --------------------------------------------------------------------------

    def _features(self, batch, timer):
        with timer("backbone_fpn"):
            cs, bb_cache = self.backbone.forward(batch)
            ps, fpn_cache = self.fpn.forward(cs)
        return ps, (bb_cache, fpn_cache)

    def _rpn_outputs(self, ps, batch_shape):
        (obj_levels, delta_levels), head_cache = self.rpn_head.forward(ps)
        objectness, deltas = flatten_head_outputs(obj_levels, delta_levels)  # (N, T), (N, T, 4)
        anchors = np.concatenate(self.anchor_generator(batch_shape, [p.shape[-2:] for p in ps]))
        level_sizes = [o.shape[1] * o.shape[2] * o.shape[3] for o in obj_levels]
        return objectness, deltas, anchors, level_sizes, head_cache, [o.shape for o in obj_levels]

    def _proposals(self, objectness, deltas, anchors, level_sizes, sizes, training):
        cfg = self.config
        pre = cfg.rpn_pre_nms_top_n_train if training else cfg.rpn_pre_nms_top_n_test
        post = cfg.rpn_post_nms_top_n_train if training else cfg.rpn_post_nms_top_n_test
        boxes, _ = filter_proposals(anchors, deltas, objectness, self.rpn_box_coder, sizes,
                                    level_sizes, pre, post, cfg.rpn_nms_thresh, cfg.rpn_min_size)
        return boxes

    # -- training -----------------------------------------------------------------------------

    def forward_train(self, images, targets, rng: np.random.Generator, *, proposals=None,
                      timer=None):
        """One training forward pass.

        Args:
            images: list of N ``(3, h_i, w_i)`` float32 arrays (standardised; sizes may differ).
            targets: list of N dicts: ``boxes (G_i, 4) float32 [x1, y1, x2, y2]`` pixels with
                positive width and height, ``labels (G_i,) int64`` in 1..K, ``masks (G_i, h_i,
                w_i) uint8``. ``G_i = 0`` is allowed (every anchor and RoI is background).
            rng: ``np.random.Generator`` driving the RPN and RoI samplers.
            proposals: optional list of N ``(P_i, 4)`` boxes used instead of the RPN's (the
                gradient check holds them fixed; the RPN losses are computed as usual).
            timer: optional :class:`~minimaskrcnn.model.timing.StageTimer` collecting seconds
                per stage.

        Returns:
            ``(losses, cache)``: ``losses`` maps the five torchvision loss names to Python
            floats (total = their sum); ``cache`` is everything :meth:`backward` needs.

        Raises:
            TypeError / ValueError: malformed images or targets (naming the argument and index),
            a mask whose size is not its image's, a label outside 1..K, a box with zero width
            or height.
        """
        timer = timer or NullTimer()
        cfg = self.config
        batch, sizes = self._batch(images)
        targets = self._check_targets(targets, sizes)
        ps, feat_cache = self._features(batch, timer)

        with timer("rpn"):
            objectness, deltas, anchors, level_sizes, head_cache, obj_shapes = self._rpn_outputs(
                ps, batch.shape[-2:])
            labels, reg_targets = [], []
            for t in targets:
                lab, reg = assign_anchor_targets(anchors, t["boxes"], self.rpn_matcher,
                                                 self.rpn_box_coder)
                labels.append(lab)
                reg_targets.append(reg)
            loss_obj, loss_rpn_box, d_obj, d_deltas = rpn_losses(
                objectness, deltas, labels, reg_targets, self.rpn_sampler, rng,
                cfg.rpn_smooth_l1_beta)
            if proposals is None:
                proposals = self._proposals(objectness, deltas, anchors, level_sizes, sizes, True)

        roi_losses, roi_cache = self.roi_heads.forward_train(
            ps[:-1], proposals, sizes, batch.shape[-2:], targets, rng, timer=timer)
        losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box, **roi_losses}
        cache = {"features": feat_cache, "rpn_head": head_cache, "obj_shapes": obj_shapes,
                 "d_obj": d_obj, "d_deltas": d_deltas, "roi_heads": roi_cache, "timer": timer,
                 "proposals": proposals}
        return losses, cache

    def backward(self, cache) -> None:
        """Accumulate d(sum of the five losses)/d(param) into every ``Param.grad`` (``+=``;
        call ``zero_grad`` between iterations). ``cache`` is the one :meth:`forward_train`
        returned; the gradients have the parameters' dtype. No argument checks (a foreign
        ``cache`` fails with a ``KeyError``/``TypeError`` from the unpacking)."""
        timer = cache["timer"]
        with timer("backward"):
            d_ps = self.roi_heads.backward(cache["roi_heads"])  # P2..P5
            d_obj, d_del = unflatten_head_grads(cache["d_obj"], cache["d_deltas"], cache["obj_shapes"])
            d_rpn = self.rpn_head.backward((d_obj, d_del), cache["rpn_head"])  # P2..P6
            d_ps = [a + b for a, b in zip(d_ps, d_rpn[:-1], strict=True)] + [d_rpn[-1]]
            bb_cache, fpn_cache = cache["features"]
            d_cs = self.fpn.backward(d_ps, fpn_cache)
            self.backbone.backward(d_cs, bb_cache)

    # -- inference ----------------------------------------------------------------------------

    def predict(self, images, *, timer=None):
        """Detections for each image (torchvision ``MaskRCNN`` in eval mode).

        Args:
            images: list of N ``(3, h_i, w_i)`` float arrays (standardised).

        Returns:
            list of N dicts: ``boxes (D_i, 4) float32`` ``[x1, y1, x2, y2]`` pixels of the image,
            ``labels (D_i,) int64`` in 1..K, ``scores (D_i,) float32`` (decreasing),
            ``masks (D_i, h_i, w_i) bool`` (pasted probability >= 0.5).

        Raises:
            TypeError: ``images`` not a non-empty list, an element not a float NumPy array.
            ValueError: an element not of shape ``(3, h, w)``.
        """
        timer = timer or NullTimer()
        batch, sizes = self._batch(images)
        ps, _ = self._features(batch, timer)
        with timer("rpn"):
            objectness, deltas, anchors, level_sizes, _, _ = self._rpn_outputs(ps, batch.shape[-2:])
            proposals = self._proposals(objectness, deltas, anchors, level_sizes, sizes, False)
        with timer("roi_heads"):
            return self.roi_heads.predict(ps[:-1], proposals, sizes, batch.shape[-2:])


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
