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
from minimaskrcnn.data.transforms import resize_bilinear, resize_boxes, scaled_size
from minimaskrcnn.model.backbone import ResNetGN
from minimaskrcnn.model.box_head import BoxHead
from minimaskrcnn.model.fpn import FPN
from minimaskrcnn.model.keypoint_head import KeypointHead
from minimaskrcnn.model.mask_head import MaskHead
from minimaskrcnn.model.rpn import RegionProposalNetwork
from minimaskrcnn.model.stage import Stage, identity_count
from minimaskrcnn.model.timing import NullTimer

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

    def keypoint_targets(self, targets, n: int):
        """The ground-truth keypoints of each image, ``(G_i, K, 3) float32`` ``[x, y, v]``
        (``None`` without a keypoint head). Raises ``ValueError`` naming the image when one has no
        ``keypoints`` or a wrong shape (a wrong number of keypoint types K included)."""
        if self.keypoint_head is None:
            return None
        if not isinstance(targets, (list, tuple)) or len(targets) != n:
            raise ValueError(f"targets must be a list of {n} dicts (one per image)")
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or "keypoints" not in t or "boxes" not in t:
                raise ValueError(f"targets[{i}] needs 'boxes' and 'keypoints' (G, K, 3): the "
                                 "model has a keypoint head (num_keypoints > 0)")
        return self.keypoint_head.check_keypoints([t["keypoints"] for t in targets],
                                                  [len(t["boxes"]) for t in targets])

    # -- parameters ---------------------------------------------------------------------------

    @property
    def xp(self):
        """The array module of the parameters: ``numpy``, or ``cupy`` after ``to(cupy)``."""
        return backend.get_array_module(self.backbone.conv1.weight.data)

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

    # -- input --------------------------------------------------------------------------------

    def transform(self, images):
        """Validate and zero-pad images to ``(N, 3, H, W)``, H and W multiples of
        ``size_divisible``, at the bottom and right (torchvision ``GeneralizedRCNNTransform``,
        without resizing). Returns ``(batch, image_sizes)``: the padded batch in the
        parameters' dtype and array module (NumPy images are padded on the host and copied to
        the parameters' device in one transfer) and the N unpadded ``(h_i, w_i)``.

        Raises:
            TypeError: not a non-empty list of float NumPy (or CuPy) arrays.
            ValueError: an element not of shape ``(3, h, w)``.
        """
        dtype = self.backbone.conv1.weight.data.dtype
        sizes = self.image_sizes(images)
        d = self.config.size_divisible
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        xp_in = backend.get_array_module(*images)  # pad where the images are
        batch = xp_in.zeros((len(images), 3, hp, wp), dtype)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = backend.to_device(im, xp_in)
        return backend.to_device(batch, self.xp), sizes

    @staticmethod
    def image_sizes(images):
        """Validate a list of images; returns their ``(h_i, w_i)``.

        Raises:
            TypeError: not a non-empty list of float NumPy (or CuPy) arrays.
            ValueError: an element not of shape ``(3, h, w)``.
        """
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise TypeError("images must be a non-empty list of (3, H, W) float arrays")
        sizes = []
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray) and not backend.is_cupy_array(im):
                raise TypeError(f"images[{i}] must be a numpy array (3, H, W), got {type(im).__name__}")
            if im.ndim != 3 or im.shape[0] != 3 or im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}] must have shape (3, H, W), got {im.shape}")
            if not np.issubdtype(im.dtype, np.floating):
                raise TypeError(f"images[{i}] must be a float array (standardised), got {im.dtype}")
            sizes.append((int(im.shape[1]), int(im.shape[2])))
        return sizes

    def check_targets(self, targets, sizes):
        """Validate the targets against the images (see :meth:`forward_train`); returns them
        with float32 boxes and int64 labels, on the parameters' device (targets are checked on
        the host: NumPy targets, as the loader makes them, cost no synchronisation; CuPy
        targets are copied to the host for the checks)."""
        if not isinstance(targets, (list, tuple)) or len(targets) != len(sizes):
            raise ValueError(f"targets must be a list of {len(sizes)} dicts (one per image)")
        out = []
        k = self.config.num_classes
        for i, (t, (h, w)) in enumerate(zip(targets, sizes, strict=True)):
            if not isinstance(t, dict) or not {"boxes", "labels", "masks"} <= set(t):
                raise ValueError(f"targets[{i}] must be a dict with boxes, labels and masks")
            boxes = backend.to_numpy(t["boxes"])
            labels = backend.to_numpy(t["labels"])
            masks = backend.to_numpy(t["masks"])
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
        return backend.to_device(out, self.xp)

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
        batch, image_sizes = self.transform(images)  # (N, 3, H, W)
        gt_keypoints = self.keypoint_targets(targets, len(image_sizes))
        targets = self.check_targets(targets, image_sizes)
        image_size = batch.shape[-2:]
        with timer("backbone_fpn"):
            feats, _, c_backbone = self.backbone.forward_train(batch)  # C2..C5
            pyramid, _, c_fpn = self.fpn.forward_train(self._fpn_inputs(feats))  # P2..P6
            roi_maps = self._roi_maps(pyramid)  # P2..P5
        with timer("rpn"):
            proposals, rpn_losses, c_rpn = self.rpn.forward_train(
                pyramid, image_size, image_sizes, targets, rng, proposals=proposals,
                sum_counts=sum_counts)
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
                    roi_maps, sampled, image_size, gt_keypoints, sum_counts=sum_counts)
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
        input_sizes, scale = self.image_sizes(images), self.config.image_scale
        if scale != 1:  # the network sees the images resized; results go back to input pixels
            images = [resize_bilinear(im, scaled_size(h, w, scale))
                      for im, (h, w) in zip(images, input_sizes, strict=True)]
        batch, image_sizes = self.transform(images)
        image_size = batch.shape[-2:]
        with timer("backbone_fpn"):
            pyramid = self.fpn.predict(self._fpn_inputs(self.backbone.predict(batch)))
            roi_maps = self._roi_maps(pyramid)
        with timer("rpn"):
            proposals = self.rpn.predict(pyramid, image_size, image_sizes)
        with timer("roi_heads"):
            detections = self.box_head.predict(roi_maps, proposals, image_size, image_sizes)
        with timer("mask_head"):
            detections = self.mask_head.predict(roi_maps, detections, image_size,
                                                image_sizes, mask_format=mask_format,
                                                out_sizes=input_sizes if scale != 1 else None)
        if self.keypoint_head is not None:
            with timer("keypoint_head"):
                detections = self.keypoint_head.predict(roi_maps, detections, image_size)
        if scale != 1:
            for d, size, net_size in zip(detections, input_sizes, image_sizes, strict=True):
                _to_input_pixels(d, size, net_size)
        return backend.to_device(detections, np)  # host results (a no-op on the CPU)


def _to_input_pixels(det, input_size, net_size):
    """Boxes ``[x1, y1, x2, y2]`` and keypoints ``[x, y, v]`` of one image's detections, from
    the pixels of the scaled image the network saw (``net_size``) to the input image's
    (``input_size``): torchvision's ``resize_boxes`` / ``resize_keypoints``."""
    det["boxes"] = resize_boxes(det["boxes"], net_size, input_size)
    if "keypoints" in det:
        kp = det["keypoints"].copy()
        kp[..., 0] *= input_size[1] / net_size[1]
        kp[..., 1] *= input_size[0] / net_size[0]
        det["keypoints"] = kp


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
