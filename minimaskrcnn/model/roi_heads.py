"""The RoI heads: the box head, the optional mask head and the optional keypoint head on the
pyramid's RoIs, with one foreground selection for the mask and keypoint heads (paper section 3;
torchvision ``models/detection/roi_heads.py``, ``RoIHeads``).

Which heads there are is the config's choice (``ModelConfig.mask_on``, ``num_keypoints``): box
only is Faster R-CNN (with RoIAlign), box + mask Mask R-CNN, box + keypoint Keypoint R-CNN, and
all three the paper's Table 5 "keypoint & mask" model. A missing branch has its three parts
``None`` (:meth:`RoIHeads.has_mask`, :meth:`RoIHeads.has_keypoint`, torchvision's names), no
parameters, no loss, no cache and no predictions.

Shape shorthand: N images, C FPN channels, R sampled RoIs, Rf foreground RoIs, K classes, D
detections of one image.

Each head is a branch of three injected parts, run the same way (:func:`branch_forward`, and
:func:`branch_backward` in reverse)::

    P2..P5 + RoIs -> roi_pool (MultiScaleRoIPooler) -> head -> predictor -> outputs

    branch    roi_pool    head                 predictor              file (model/)
    box       7x7         TwoMLPHead           FastRCNNPredictor      box_head.py
    mask      14x14       MaskRCNNHeads / MLP  MaskRCNNPredictor / MLP mask_head.py
    keypoint  14x14       KeypointRCNNHeads    KeypointRCNNPredictor  keypoint_head.py

Training (:meth:`RoIHeads.forward_train`)::

    proposals + gt -> select_training_samples -> SampledRoIs (R)
      box:      branch -> fastrcnn_loss                     -> loss_classifier, loss_box_reg
    SampledRoIs -> select_foreground -> ForegroundRoIs (Rf, labels > 0): one selection for both
      mask:     branch -> mask_targets, maskrcnn_loss       -> loss_mask (mask_on)
      keypoint: branch -> keypoint_targets, keypointrcnn_loss -> loss_keypoint (num_keypoints > 0)

:meth:`RoIHeads.backward` is its mirror: keypoint, mask, box, each turning its weighted losses
into gradients of P2..P5, which add up (box + mask + keypoint, per level). Inference
(:meth:`RoIHeads.predict`): the box branch and ``postprocess_detections`` on the proposals, then
the mask and keypoint branches on the detection boxes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn.backend import get_array_module, host_threads, map_chunks, to_numpy
from minimaskrcnn.model.box_head import (
    SampledRoIs,
    build_box_branch,
    fastrcnn_loss,
    postprocess_detections,
    select_training_samples,
)
from minimaskrcnn.model.keypoint_head import (
    build_keypoint_branch,
    keypoint_targets,
    keypointrcnn_inference,
    keypointrcnn_loss,
)
from minimaskrcnn.model.mask_head import (
    build_mask_branch,
    mask_targets,
    maskrcnn_inference,
    maskrcnn_loss,
)
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.model.stage import Stage, identity_count, sum_levels, weighted
from minimaskrcnn.model.timing import NullTimer
from minimaskrcnn.ops import BoxCoder
from minimaskrcnn.ops.poolers import PoolerCache

BOX_LOSSES = ("loss_classifier", "loss_box_reg")
MASK_LOSSES = ("loss_mask",)
KEYPOINT_LOSSES = ("loss_keypoint",)


# --------------------------------------------------------------------------------------------
# one branch: pooler -> head -> predictor


class BranchCache(NamedTuple):
    """The caches of one branch's three parts (what :func:`branch_backward` reads)."""

    pool: PoolerCache
    head: object
    predictor: object


def branch_forward(pool, head, predictor, features, rois, image_shape):
    """RoIs -> pooled features -> head -> predictor (torchvision ``RoIHeads.forward``'s three
    calls of each branch).

    Args:
        pool: a :class:`~minimaskrcnn.ops.MultiScaleRoIPooler`; head, predictor: modules.
        features: P2..P5, list of ``(N, C, H_l, W_l)``.
        rois: list of N ``(R_i, 4)`` boxes, input pixels (``R_i = 0`` allowed).
        image_shape: ``(H, W)`` of the padded batch.

    Returns:
        ``(predictor outputs, BranchCache)``.
    """
    pooled, c_pool = pool.forward(features, rois, image_shape)  # (R, C, P, P)
    x, c_head = head.forward(pooled)
    out, c_predictor = predictor.forward(x)
    return out, BranchCache(c_pool, c_head, c_predictor)


MIN_ROIS_PER_THREAD = 8
""":func:`branch_predict` gives a thread at least this many RoIs (fewer: not worth a thread)."""


def branch_predict(pool, head, predictor, features, rois, image_shape):
    """Inference of one branch (no cache): the outputs of :func:`branch_forward`, with the head
    and predictor run on slices of the pooled RoIs side by side on :func:`host_threads` threads
    (:func:`~minimaskrcnn.backend.map_chunks`, one BLAS thread each). The pooler runs once, on
    all RoIs (its kernel has its own threads). Each RoI's result is the serial one up to float
    summation order (a slice's matrix products are blocked differently); with the NumPy
    reference tier it is one serial call, exactly :func:`branch_forward`.

    ``predict`` runs the mask and keypoint branches through it; the box branch stays one call.

    Returns:
        the predictor's outputs (an array, or a tuple of arrays), RoIs along axis 0.
    """
    pooled, _ = pool.forward(features, rois, image_shape)  # (R, C, P, P)

    def run(start, stop):
        x, _ = head.forward(pooled[start:stop])
        return predictor.forward(x)[0]

    parts = map_chunks(run, pooled.shape[0], host_threads(pooled), MIN_ROIS_PER_THREAD)
    if len(parts) == 1:
        return parts[0]
    xp = get_array_module(pooled)
    if isinstance(parts[0], tuple):
        return tuple(xp.concatenate(p, axis=0) for p in zip(*parts, strict=True))
    return xp.concatenate(parts, axis=0)


def branch_backward(pool, head, predictor, d_out, cache: BranchCache):
    """Mirror of :func:`branch_forward`: d predictor outputs -> d P2..P5 (list of
    ``(N, C, H_l, W_l)``), accumulating the parts' parameter gradients."""
    dx = predictor.backward(d_out, cache.predictor)
    return pool.backward(head.backward(dx, cache.head), cache.pool)


# --------------------------------------------------------------------------------------------
# the foreground RoIs, once for the mask and keypoint heads


class ForegroundRoIs(NamedTuple):
    """The sampled RoIs with a foreground label, per image, no gradient: ``rois`` ``(Rf_i, 4)``,
    ``matched_idxs`` ``(Rf_i,)`` int64, ``labels`` ``(Rf_i,)`` int64 host arrays in 1..K."""

    rois: list
    matched_idxs: list
    labels: list


def select_foreground(sampled: SampledRoIs) -> ForegroundRoIs:
    """The foreground of the sampled RoIs (torchvision ``RoIHeads.forward``: "during training,
    only focus on positive boxes"), found from the host labels: no synchronisation."""
    xp = get_array_module(*sampled.rois)
    rois, matched, labels = [], [], []
    for r, m, lab in zip(sampled.rois, sampled.matched_idxs, sampled.labels, strict=True):
        lab = to_numpy(lab)  # the sampler's host labels: no copy
        pos_host = np.nonzero(lab > 0)[0]
        pos = xp.asarray(pos_host)  # host -> device copy, no sync
        rois.append(r[pos])
        matched.append(m[pos])
        labels.append(lab[pos_host])
    return ForegroundRoIs(rois, matched, labels)


# --------------------------------------------------------------------------------------------
# the stage


class BoxCache(NamedTuple):
    """What the box branch's backward reads: the branch's caches, the two predictions, the RoIs'
    labels ``(R,)`` (host) and box targets ``(R, 4)``, the normaliser (RoIs of the batch)."""

    branch: BranchCache
    class_logits: object
    box_regression: object
    labels: np.ndarray
    regression_targets: object
    num_rois: float


class MaskCache(NamedTuple):
    """What the mask branch's backward reads: the branch's caches and the gradient of the
    (weight-1) mask loss w.r.t. the logits ``(Rf, K+1, M, M)``, from the forward's fused loss."""

    branch: BranchCache
    d_mask_logits: object
    exchange: tuple | None = None  # (RoIExchange, its plan): the RoIs moved between ranks


class KeypointCache(NamedTuple):
    """What the keypoint branch's backward reads: the branch's caches and the gradient of the
    (weight-1) keypoint loss w.r.t. the logits ``(Rf, K, m, m)``."""

    branch: BranchCache
    d_keypoint_logits: object


class RoIHeadsCache(NamedTuple):
    """One cache per head, in forward order (``mask`` / ``keypoint`` is ``None`` without that
    head)."""

    box: BoxCache
    mask: MaskCache | None
    keypoint: KeypointCache | None = None


class RoIHeads(Stage):
    """The box head and the optional mask and keypoint heads (torchvision ``RoIHeads``): each
    head is a pooler, a head and a predictor, injected. Parameters ``box_head``, ``box_predictor``,
    ``mask_head``, ``mask_predictor``, ``keypoint_head``, ``keypoint_predictor``. Build it from
    a config with :func:`build_roi_heads`.

    ``forward_train(features, proposals, images, targets, rng)`` ->
    ``(SampledRoIs, losses, RoIHeadsCache)``; ``predict(features, proposals, images)`` ->
    detections; ``backward(None, cache, loss_weights)`` -> ``[dP2..dP5]``.

    Args:
        box_roi_pool, box_head, box_predictor: the box branch (:func:`build_box_branch`).
        mask_roi_pool, mask_head, mask_predictor: the mask branch, or ``None`` (no mask head:
            Faster R-CNN, or Keypoint R-CNN without masks); the predictor's channel 0 is the
            background, channel 1 the one mask of ``mask_class_agnostic``.
        fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction: RoI matching and
            sampling; bbox_reg_weights, bbox_xform_clip: the box coder; box_smooth_l1_beta:
            ``loss_box_reg``'s beta.
        score_thresh, nms_thresh, min_size, detections_per_img: ``postprocess_detections``.
        mask_loss: ``"sigmoid"`` or ``"softmax"``; mask_class_agnostic: every class reads
            channel 1.
        keypoint_roi_pool, keypoint_head, keypoint_predictor: the keypoint branch, or ``None``.
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, mask_roi_pool, mask_head,
                 mask_predictor, *, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                 positive_fraction, bbox_reg_weights, bbox_xform_clip, box_smooth_l1_beta,
                 score_thresh, nms_thresh, min_size, detections_per_img, mask_loss="sigmoid",
                 mask_class_agnostic=False, keypoint_roi_pool=None, keypoint_head=None,
                 keypoint_predictor=None):
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.keypoint_roi_pool = keypoint_roi_pool
        self.keypoint_head = keypoint_head
        self.keypoint_predictor = keypoint_predictor
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh,
                                        allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image,
                                                             positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights, bbox_xform_clip)
        self.box_smooth_l1_beta = box_smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.detections_per_img = detections_per_img
        self.mask_loss = mask_loss
        self.mask_class_agnostic = mask_class_agnostic

    def has_mask(self) -> bool:
        """Whether the mask branch is there (torchvision ``RoIHeads.has_mask``)."""
        return self.mask_predictor is not None

    def has_keypoint(self) -> bool:
        """Whether the keypoint branch is there (torchvision ``RoIHeads.has_keypoint``)."""
        return self.keypoint_predictor is not None

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The heads' loss names: box, ``loss_mask`` with a mask head, ``loss_keypoint`` with a
        keypoint head."""
        return (BOX_LOSSES + (MASK_LOSSES if self.has_mask() else ())
                + (KEYPOINT_LOSSES if self.has_keypoint() else ()))

    def mask_channels(self, labels):
        """The mask predictor's channel of each RoI: its class, or 1 for class-agnostic masks."""
        if self.mask_class_agnostic:
            return get_array_module(labels).ones_like(labels)
        return labels

    # -- training -----------------------------------------------------------------------------

    def forward_train(self, features, proposals, images, targets, rng, *,
                      sum_counts=identity_count, timer=None, roi_exchange=None):
        """Sample RoIs among the proposals; the box, mask (and keypoint) losses.

        Args:
            features: P2..P5, list of ``(N, C, H_l, W_l)``.
            proposals: list of N ``(P_i, 4)`` (no gradient).
            images: the :class:`~minimaskrcnn.model.transform.ImageList` (the poolers derive
                the level scales from its padded size).
            targets: N checked dicts (``boxes``, ``labels``; ``masks`` with a mask head,
                ``keypoints`` with a keypoint head).
            rng: a Generator, or one per image, for the RoI sampler.
            sum_counts: sums each normaliser (R, Rf, valid keypoints) over data-parallel ranks.
            timer: optional :class:`~minimaskrcnn.model.timing.StageTimer` (``box_head``,
                ``mask_head``, ``keypoint_head``).
            roi_exchange: data-parallel only, a
                :class:`~minimaskrcnn.distributed.collectives.RoIExchange`: the mask head's
                foreground RoIs evened out over the ranks after pooling (``None``: every rank
                runs the mask head on its own RoIs).

        Returns:
            ``(SampledRoIs, losses, RoIHeadsCache)``: losses ``loss_classifier``,
            ``loss_box_reg`` (``loss_mask``, ``loss_keypoint``: the heads there are), Python
            floats.
        """
        timer = timer or NullTimer()
        image_shape = images.tensors.shape[-2:]
        with timer("box_head"):
            sampled, losses, c_box = self._box_forward_train(features, proposals, image_shape,
                                                             targets, rng, sum_counts)
        foreground = select_foreground(sampled)  # the mask and keypoint heads' RoIs
        c_mask = c_keypoint = None
        if self.has_mask():
            with timer("mask_head"):
                mask_losses, c_mask = self._mask_forward_train(
                    features, foreground, image_shape, [t["masks"] for t in targets],
                    sum_counts, roi_exchange)
            losses.update(mask_losses)
        if self.has_keypoint():
            with timer("keypoint_head"):
                keypoint_losses, c_keypoint = self._keypoint_forward_train(
                    features, foreground, image_shape, [t["keypoints"] for t in targets],
                    sum_counts)
            losses.update(keypoint_losses)
        return sampled, losses, RoIHeadsCache(c_box, c_mask, c_keypoint)

    def backward(self, d_sampled, cache: RoIHeadsCache, loss_weights=None):
        """Gradients of the weighted losses w.r.t. P2..P5 (list of ``(N, C, H_l, W_l)``): the
        heads there are in reverse order, their level gradients added (box + mask + keypoint).

        ``d_sampled`` must be ``None``: the sampled RoIs carry no gradient.
        """
        if d_sampled is not None:
            raise ValueError("the sampled RoIs carry no gradient: pass d_sampled=None")
        d_keypoint = ([self._keypoint_backward(cache.keypoint, loss_weights)]
                      if self.has_keypoint() else [])
        d_mask = [self._mask_backward(cache.mask, loss_weights)] if self.has_mask() else []
        d_box = self._box_backward(cache.box, loss_weights)
        return sum_levels(d_box, *d_mask, *d_keypoint)

    def _box_forward_train(self, features, proposals, image_shape, targets, rng, sum_counts):
        dtype = features[0].dtype
        sampled = select_training_samples(
            proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets],
            self.proposal_matcher, self.fg_bg_sampler, self.box_coder, rng)
        sampled = sampled._replace(rois=[r.astype(dtype) for r in sampled.rois])
        (class_logits, box_regression), c_branch = branch_forward(
            self.box_roi_pool, self.box_head, self.box_predictor, features, sampled.rois,
            image_shape)
        labels = np.concatenate(sampled.labels)  # host (the sampler's copy)
        regression_targets = get_array_module(features[0]).concatenate(sampled.regression_targets)
        num_rois = sum_counts(float(labels.shape[0]))
        loss_cls, loss_box, _, _ = fastrcnn_loss(class_logits, box_regression, labels,
                                                 regression_targets, self.box_smooth_l1_beta,
                                                 num_rois)
        cache = BoxCache(c_branch, class_logits, box_regression, labels, regression_targets,
                         num_rois)
        return sampled, {"loss_classifier": loss_cls, "loss_box_reg": loss_box}, cache

    def _box_backward(self, cache: BoxCache, loss_weights):
        _, _, d_logits, d_box = fastrcnn_loss(cache.class_logits, cache.box_regression,
                                              cache.labels, cache.regression_targets,
                                              self.box_smooth_l1_beta, cache.num_rois,
                                              values=False)
        d_logits = weighted(d_logits, loss_weights, "loss_classifier")
        d_box = weighted(d_box, loss_weights, "loss_box_reg")
        return branch_backward(self.box_roi_pool, self.box_head, self.box_predictor,
                               (d_logits, d_box), cache.branch)

    def _mask_forward_train(self, features, foreground, image_shape, gt_masks, sum_counts,
                            roi_exchange=None):
        labels = np.concatenate(foreground.labels)  # host
        num_fg = sum_counts(float(labels.shape[0]))
        if roi_exchange is None:
            mask_logits, c_branch = branch_forward(self.mask_roi_pool, self.mask_head,
                                                   self.mask_predictor, features, foreground.rois,
                                                   image_shape)  # (Rf, K+1, M, M)
            targets = mask_targets(foreground.rois, foreground.matched_idxs, gt_masks,
                                   mask_logits.shape[-1], mask_logits.dtype)  # (Rf, M, M)
            loss, d_logits = maskrcnn_loss(mask_logits, self.mask_channels(labels), targets,
                                           num_fg, self.mask_loss)
            return {"loss_mask": loss}, MaskCache(c_branch, d_logits)
        # data-parallel: the targets made here (the gt masks are this rank's), then the RoIs
        # evened out over the ranks before the head (RoIExchange)
        pooled, c_pool = self.mask_roi_pool.forward(features, foreground.rois, image_shape)
        targets = mask_targets(foreground.rois, foreground.matched_idxs, gt_masks,
                               self.mask_predictor.output_size(pooled.shape[-1]), pooled.dtype)
        (pooled, targets, channels), plan = roi_exchange.scatter(
            (pooled, targets, self.mask_channels(labels)))
        x, c_head = self.mask_head.forward(pooled)
        mask_logits, c_predictor = self.mask_predictor.forward(x)
        loss, d_logits = maskrcnn_loss(mask_logits, channels, targets, num_fg, self.mask_loss)
        return {"loss_mask": loss}, MaskCache(BranchCache(c_pool, c_head, c_predictor), d_logits,
                                              (roi_exchange, plan))

    def _mask_backward(self, cache: MaskCache, loss_weights):
        d_logits = weighted(cache.d_mask_logits, loss_weights, "loss_mask")
        if cache.exchange is None:
            return branch_backward(self.mask_roi_pool, self.mask_head, self.mask_predictor,
                                   d_logits, cache.branch)
        exchange, plan = cache.exchange
        dx = self.mask_predictor.backward(d_logits, cache.branch.predictor)
        d_pooled = exchange.gather_gradient(self.mask_head.backward(dx, cache.branch.head), plan)
        return self.mask_roi_pool.backward(d_pooled, cache.branch.pool)

    def _keypoint_forward_train(self, features, foreground, image_shape, gt_keypoints,
                                sum_counts):
        logits, c_branch = branch_forward(self.keypoint_roi_pool, self.keypoint_head,
                                          self.keypoint_predictor, features, foreground.rois,
                                          image_shape)  # (Rf, K, m, m)
        targets, valid = keypoint_targets(foreground.rois, foreground.matched_idxs, gt_keypoints,
                                          logits.shape[-1], logits.shape[1])
        num_valid = sum_counts(float(valid.sum()))
        loss, d_logits = keypointrcnn_loss(logits, targets, valid, num_valid)
        return {"loss_keypoint": loss}, KeypointCache(c_branch, d_logits)

    def _keypoint_backward(self, cache: KeypointCache, loss_weights):
        d_logits = weighted(cache.d_keypoint_logits, loss_weights, "loss_keypoint")
        return branch_backward(self.keypoint_roi_pool, self.keypoint_head,
                               self.keypoint_predictor, d_logits, cache.branch)

    # -- inference ----------------------------------------------------------------------------

    def predict(self, features, proposals, images, *, timer=None):
        """Detections per image (torchvision ``RoIHeads`` in eval mode):
        :meth:`predict_boxes`, then :meth:`predict_masks` and :meth:`predict_keypoints` on its
        boxes.

        Returns:
            list of N dicts, pixels of the network's images: ``boxes (D, 4) float32``, ``scores
            (D,) float32``, ``labels (D,) int64`` (``postprocess_detections``), ``masks (D, M,
            M) float32`` probabilities of the detection's class (pasted into the image by the
            transform's postprocess) with a mask head, and with a keypoint head ``keypoints (D,
            K, 3)``, ``keypoint_scores (D, K)`` float32.
        """
        timer = timer or NullTimer()
        with timer("box_head"):
            detections = self.predict_boxes(features, proposals, images)
        if self.has_mask():
            with timer("mask_head"):
                for d, probs in zip(detections, self.predict_masks(features, detections, images),
                                    strict=True):
                    d["masks"] = probs
        if self.has_keypoint():
            with timer("keypoint_head"):
                self.predict_keypoints(features, detections, images)
        return detections

    def predict_boxes(self, features, proposals, images):
        """The box branch alone: N dicts ``boxes (D, 4) float32`` (pixels of the network's
        images), ``scores (D,) float32``, ``labels (D,) int64`` (torchvision's
        ``box_roi_pool`` -> ``box_head`` -> ``box_predictor`` -> ``postprocess_detections``)."""
        image_shape = images.tensors.shape[-2:]
        dtype = features[0].dtype
        proposals = [p.astype(dtype) for p in proposals]
        # one call: its two large products run well on one BLAS thread, and the boxes stay
        # bit-identical to the serial ones (chapter 2 reproduces them by hand)
        (class_logits, box_regression), _ = branch_forward(
            self.box_roi_pool, self.box_head, self.box_predictor, features, proposals,
            image_shape)
        return postprocess_detections(
            class_logits, box_regression, proposals, images.image_sizes, self.box_coder,
            self.score_thresh, self.min_size, self.nms_thresh, self.detections_per_img)

    def predict_masks(self, features, detections, images) -> list:
        """The mask branch on given detections (``boxes`` and ``labels`` of N dicts, pixels of
        the network's images): N ``(D, M, M) float32`` probabilities of each detection's class
        (``maskrcnn_inference``). Test-time augmentation calls it with merged boxes."""
        dtype = features[0].dtype
        boxes = [d["boxes"].astype(dtype) for d in detections]
        mask_logits = branch_predict(self.mask_roi_pool, self.mask_head, self.mask_predictor,
                                     features, boxes, images.tensors.shape[-2:])
        channels = [self.mask_channels(d["labels"]) for d in detections]
        return list(maskrcnn_inference(mask_logits, channels, self.mask_loss))

    def predict_keypoints(self, features, detections, images) -> None:
        """The keypoint branch on given detections: sets ``keypoints (D, K, 3)`` and
        ``keypoint_scores (D, K)`` float32 of each dict (``keypointrcnn_inference``)."""
        dtype = features[0].dtype
        boxes = [d["boxes"].astype(dtype) for d in detections]
        logits = branch_predict(self.keypoint_roi_pool, self.keypoint_head,
                                self.keypoint_predictor, features, boxes,
                                images.tensors.shape[-2:])
        for d, (kp, scores) in zip(detections, keypointrcnn_inference(logits, boxes), strict=True):
            d["keypoints"], d["keypoint_scores"] = kp, scores


def build_roi_heads(cfg, rng: np.random.Generator) -> RoIHeads:
    """The :class:`RoIHeads` of a :class:`~minimaskrcnn.config.ModelConfig`: the box branch,
    with ``mask_on`` the mask branch (FCN or MLP, ``mask_head_type``) and with ``num_keypoints >
    0`` the keypoint branch, built in this order from ``rng`` (a branch left out draws nothing:
    the default config's network is the same bit for bit)."""
    box = build_box_branch(cfg, rng)
    mask = build_mask_branch(cfg, rng) if cfg.mask_on else (None, None, None)
    keypoint = build_keypoint_branch(cfg, rng) if cfg.num_keypoints else (None, None, None)
    return RoIHeads(
        *box, *mask, fg_iou_thresh=cfg.box_fg_iou_thresh, bg_iou_thresh=cfg.box_bg_iou_thresh,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=cfg.box_positive_fraction, bbox_reg_weights=cfg.box_coder_weights,
        bbox_xform_clip=cfg.bbox_xform_clip, box_smooth_l1_beta=cfg.box_smooth_l1_beta,
        score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
        min_size=cfg.box_min_size, detections_per_img=cfg.detections_per_img,
        mask_loss=cfg.mask_loss, mask_class_agnostic=cfg.mask_class_agnostic,
        keypoint_roi_pool=keypoint[0], keypoint_head=keypoint[1], keypoint_predictor=keypoint[2])
