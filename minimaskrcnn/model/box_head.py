"""The box head: proposal matching and sampling, RoI features, the two-layer MLP, the class and
box predictors, their losses, and the inference postprocess (paper section 3 and Fast R-CNN;
torchvision ``RoIHeads`` box branch, ``TwoMLPHead``, ``FastRCNNPredictor``, ``fastrcnn_loss``,
``postprocess_detections``).

Shape shorthand: N images, C FPN channels, R RoIs (sampled proposals, all images together,
image by image), P the pooled size (7), K classes (background not counted, so K + 1 scores),
G ground truths of one image, D detections of one image.

Training forward of :class:`BoxHead`::

    proposals (per image) + ground-truth boxes -> Matcher(0.5, 0.5) -> sampler(256, 0.25)
      -> R sampled RoIs, their labels (0 background) and box targets (BoxCoder 10, 10, 5, 5)
    P2..P5 + RoIs -> MultiScaleRoIAlign 7x7 -> flatten -> fc6, ReLU, fc7, ReLU  (R, 256)
      -> cls_score (R, K+1), bbox_pred (R, 4(K+1))
    loss_classifier = cross-entropy summed over the R RoIs / R
    loss_box_reg    = smooth L1 (beta 1/9) of each foreground RoI's own-class deltas / R

Backward: the two losses' gradients (made here, weighted) -> the two predictor layers (their
input gradients add up) -> fc7, fc6 -> (R, C, 7, 7) -> the pooler's backward -> dP2..dP5.
Nothing flows into the proposals, the matching or the targets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.model.stage import Stage, identity_count, weighted
from minimaskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

# --------------------------------------------------------------------------------------------
# targets (not differentiated)


def select_training_samples(proposals, gt_boxes, gt_labels, matcher: Matcher,
                            sampler: BalancedPositiveNegativeSampler, box_coder: BoxCoder, rng):
    """Add the ground truths to the proposals, match, sample (torchvision
    ``RoIHeads.select_training_samples``).

    Args:
        proposals: list of N ``(P_i, 4)`` boxes (input pixels, no gradient).
        gt_boxes: list of N ``(G_i, 4)`` float32; gt_labels: list of N ``(G_i,)`` int64 in 1..K.
        matcher: ``Matcher(0.5, 0.5, allow_low_quality_matches=False)``.
        sampler: ``BalancedPositiveNegativeSampler(256, 0.25)``; rng (a Generator or one per
            image) drives it.
        box_coder: weights (10, 10, 5, 5).

    Returns:
        rois: list of N ``(R_i, 4)`` sampled boxes (in increasing proposal index, as
        torchvision's ``torch.where(pos | neg)``); matched_idxs: list of N ``(R_i,)`` int64 matched
        ground-truth index (0 for background RoIs); labels: list of N ``(R_i,)`` int64 (0
        background), NumPy arrays (the host sampler's copy: on a GPU, later steps find the
        foreground without another synchronisation); regression_targets: list of N
        ``(R_i, 4)`` float32. Boxes, indices and targets are on the proposals' device.
    """
    all_props, all_matched, all_labels = [], [], []
    for props, gtb, gtl in zip(proposals, gt_boxes, gt_labels, strict=True):
        xp = get_array_module(props)
        props = xp.concatenate([props.astype(np.float32), gtb.astype(np.float32)], axis=0)
        if gtb.shape[0] == 0:
            matched = xp.zeros(props.shape[0], np.int64)
            labels = xp.zeros(props.shape[0], np.int64)
        else:
            m = matcher(box_iou(gtb, props))
            matched = xp.maximum(m, 0)
            labels = gtl[matched].astype(np.int64)
            labels = xp.where(m == Matcher.BELOW_LOW_THRESHOLD, 0, labels)
            labels = xp.where(m == Matcher.BETWEEN_THRESHOLDS, -1, labels)
        all_props.append(props)
        all_matched.append(matched)
        all_labels.append(labels)
    # the sampler draws on the host: one copy of every image's labels (a host sync on a GPU)
    sizes = np.cumsum([lab.shape[0] for lab in all_labels])[:-1]
    host_labels = np.split(to_numpy(xp.concatenate(all_labels)), sizes)
    pos_masks, neg_masks = sampler(host_labels, rng)
    rois, matched_idxs, labels, targets = [], [], [], []
    for props, matched, lab, pos, neg, gtb in zip(all_props, all_matched, host_labels, pos_masks,
                                                  neg_masks, gt_boxes, strict=True):
        keep_host = np.nonzero(np.asarray(pos, bool) | np.asarray(neg, bool))[0]
        keep = xp.asarray(keep_host)  # host -> device copy, no sync
        r = props[keep]
        rois.append(r)
        matched_idxs.append(matched[keep])
        labels.append(lab[keep_host])
        if gtb.shape[0] == 0:
            matched_gt = xp.zeros_like(r)
        else:
            matched_gt = gtb.astype(np.float32)[matched[keep]]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = box_coder.encode(matched_gt, r).astype(np.float32)
        # background targets are unused (and may be inf for gt-free images)
        t = xp.where(xp.asarray(lab[keep_host] <= 0)[:, None], t.dtype.type(0), t)
        targets.append(t)
    return rois, matched_idxs, labels, targets


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets, beta,
                  num_rois=None, *, values=True):
    """Classification and box losses and their gradients (torchvision ``fastrcnn_loss``).

    Args:
        class_logits: ``(R, K+1)``; box_regression: ``(R, 4(K+1))``.
        labels: ``(R,)`` int64 (0 background), NumPy (the box head's host copy: the foreground
            is found without a synchronisation) or of the logits' module;
            regression_targets: ``(R, 4)``.
        beta: smooth L1 beta (1/9).
        num_rois: the normaliser, the sampled RoIs of the whole batch (over every data-parallel
            rank); default R.
        values: ``False`` returns ``None`` for the two losses (the backward needs only the
            gradients; on a GPU a loss value is a host synchronisation).

    Returns:
        ``(loss_classifier, loss_box_reg, d_class_logits, d_box_regression)``: cross-entropy
        summed over the R RoIs / ``num_rois``; smooth L1 of the foreground RoIs' deltas of their
        own class, summed / ``num_rois``. Losses are Python floats, gradients (of weight-1
        losses) have the logits' shapes and dtypes.

    No argument checks: :class:`BoxHead` passes arrays it built (internal helper).
    """
    xp = get_array_module(class_logits)
    host_labels = to_numpy(labels)
    labels = xp.asarray(labels)
    r = labels.shape[0]
    num_rois = r if num_rois is None else num_rois
    d_box = xp.zeros(box_regression.shape, box_regression.dtype)
    if r == 0:
        return (0.0 if values else None, 0.0 if values else None,
                xp.zeros_like(class_logits), d_box)
    share = r / num_rois  # 1 in one process: the mean over the local RoIs
    loss_cls, d_logits = nn.losses.cross_entropy(class_logits, host_labels)  # host checks
    if share != 1:
        loss_cls, d_logits = loss_cls * share, d_logits * d_logits.dtype.type(share)
    pos_host = np.nonzero(host_labels > 0)[0]
    if pos_host.size == 0:
        return (float(loss_cls) if values else None, 0.0 if values else None, d_logits, d_box)
    pos, pos_labels = xp.asarray(pos_host), xp.asarray(host_labels[pos_host])
    reg = box_regression.reshape(r, -1, 4)  # (R, K+1, 4)
    pred = reg[pos, pos_labels]  # (Rf, 4)
    loss_box, g = nn.losses.smooth_l1_loss(pred, regression_targets[pos].astype(pred.dtype),
                                           beta=beta, reduction="sum")
    d_box.reshape(r, -1, 4)[pos, pos_labels] = g / num_rois
    if not values:
        return None, None, d_logits, d_box
    return float(loss_cls), float(loss_box) / num_rois, d_logits, d_box


# --------------------------------------------------------------------------------------------
# inference (not differentiated)


def postprocess_detections(class_logits, box_regression, proposals, image_sizes, box_coder,
                           score_thresh, min_size, nms_thresh, detections_per_img):
    """torchvision ``RoIHeads.postprocess_detections``: softmax, class-specific decode, clip to
    the image, drop the background column, keep ``score > score_thresh``, drop boxes with a side
    under ``min_size`` px, NMS per class at ``nms_thresh``, keep the ``detections_per_img``
    best (sorted by decreasing score).

    Args:
        class_logits: ``(R, K+1)``; box_regression: ``(R, 4(K+1))``; proposals: list of N
        ``(P_i, 4)`` with ``sum P_i = R``; image_sizes: N ``(h, w)``.

    Returns:
        list of N dicts ``boxes (D, 4) float32``, ``scores (D,) float32``, ``labels (D,) int64``.
    """
    xp = get_array_module(class_logits)
    k1 = class_logits.shape[1]
    z = class_logits - class_logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    scores_all = e / e.sum(axis=1, keepdims=True)  # (R, K+1)
    out = []
    start = 0
    for props, size in zip(proposals, image_sizes, strict=True):
        n = props.shape[0]
        if n == 0:
            out.append({"boxes": xp.zeros((0, 4), np.float32), "scores": xp.zeros(0, np.float32),
                        "labels": xp.zeros(0, np.int64)})
            continue
        reg = box_regression[start:start + n]
        scores = scores_all[start:start + n]
        start += n
        boxes = box_coder.decode(reg, props).reshape(n, k1, 4)
        boxes = clip_boxes_to_image(boxes, size)
        labels = xp.broadcast_to(xp.arange(k1), (n, k1))
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = xp.nonzero(scores > score_thresh)[0]  # on a GPU: a host sync (the count)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        out.append({"boxes": boxes[keep].astype(np.float32),
                    "scores": scores[keep].astype(np.float32),
                    "labels": labels[keep].astype(np.int64)})
    return out


# --------------------------------------------------------------------------------------------
# the stage


class SampledRoIs(NamedTuple):
    """The box head's training output, the mask head's input (per image, no gradient):
    ``rois`` ``(R_i, 4)``, ``labels`` ``(R_i,)`` int64 (0 background), ``matched_idxs``
    ``(R_i,)`` int64 (the matched ground truth, 0 for background)."""

    rois: list
    labels: list
    matched_idxs: list


class BoxHeadCache(NamedTuple):
    """What :meth:`BoxHead.backward` reads: the pooler's and each layer's caches, the two
    predictions, the RoIs' labels ``(R,)`` and box targets ``(R, 4)``, the normaliser."""

    pool: object
    fc6: tuple
    relu6: object
    fc7: tuple
    relu7: object
    cls_score: tuple
    bbox_pred: tuple
    pooled_shape: tuple
    class_logits: np.ndarray
    box_regression: np.ndarray
    labels: np.ndarray
    regression_targets: np.ndarray
    num_rois: float


class BoxHead(Stage):
    """The box branch (parameters ``fc6``, ``fc7`` -- torchvision's ``TwoMLPHead`` -- and
    ``cls_score``, ``bbox_pred`` -- its ``FastRCNNPredictor``), with its pooler, matcher,
    sampler and box coder.

    ``forward_train(features, proposals, image_size, targets, rng)`` ->
    ``(SampledRoIs, losses, cache)``; ``predict(features, proposals, image_size, image_sizes)``
    -> detections; ``backward(None, cache, loss_weights)`` -> ``[dP2..dP5]``.

    Args:
        cfg: the :class:`~minimaskrcnn.config.ModelConfig` (``box_*``, ``roi_op``,
            ``roi_aligned``, ``canonical_*``, ``representation_size``, ``num_classes``, ``detections_per_img``).
        rng: initial weights (linear layers: U(+-1/sqrt(fan_in)), torch's default).
    """

    LOSSES = ("loss_classifier", "loss_box_reg")

    def __init__(self, cfg, rng: np.random.Generator):
        c, p, k1 = cfg.fpn_channels, cfg.box_roi_size, cfg.num_classes + 1
        self.roi_pool = ops.MultiScaleRoIPooler(p, cfg.box_sampling_ratio, pooler_type=cfg.roi_op,
                                               aligned=cfg.roi_aligned,
                                               canonical_scale=cfg.canonical_scale,
                                               canonical_level=cfg.canonical_level)
        self.fc6 = nn.Linear(c * p * p, cfg.representation_size, rng=rng)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(cfg.representation_size, cfg.representation_size, rng=rng)
        self.relu7 = nn.ReLU()
        self.cls_score = nn.Linear(cfg.representation_size, k1, rng=rng)
        self.bbox_pred = nn.Linear(cfg.representation_size, 4 * k1, rng=rng)
        self.matcher = Matcher(cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
                               allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(cfg.box_batch_size_per_image,
                                                       cfg.box_positive_fraction)
        self.box_coder = BoxCoder(cfg.box_coder_weights, cfg.bbox_xform_clip)
        self.smooth_l1_beta = cfg.box_smooth_l1_beta
        self.score_thresh = cfg.box_score_thresh
        self.nms_thresh = cfg.box_nms_thresh
        self.min_size = cfg.box_min_size
        self.detections_per_img = cfg.detections_per_img

    def predictions(self, pooled):
        """Pooled RoI features ``(R, C, P, P)`` -> MLP -> ``(class_logits (R, K+1),
        box_regression (R, 4(K+1)), layer caches)``."""
        h, c6 = self.fc6.forward(pooled.reshape(pooled.shape[0], -1))  # (R, C*P*P) -> (R, rep)
        h, r6 = self.relu6.forward(h)
        h, c7 = self.fc7.forward(h)
        h, r7 = self.relu7.forward(h)
        class_logits, cs = self.cls_score.forward(h)  # (R, K+1)
        box_regression, cb = self.bbox_pred.forward(h)  # (R, 4(K+1))
        return class_logits, box_regression, (c6, r6, c7, r7, cs, cb)

    def _predictions(self, features, rois, image_size):
        """RoIs -> pooled features (pooler) -> :meth:`predictions`, and all the caches."""
        pooled, c_pool = self.roi_pool.forward(features, rois, image_size)  # (R, C, P, P)
        class_logits, box_regression, caches = self.predictions(pooled)
        return class_logits, box_regression, (c_pool, *caches, pooled.shape)

    def forward_train(self, features, proposals, image_size, targets, rng, *,
                      sum_counts=identity_count):
        """Sample RoIs among the proposals and compute the two box-head losses.

        Args:
            features: P2..P5, list of ``(N, C, H_l, W_l)``.
            proposals: list of N ``(P_i, 4)`` (no gradient).
            image_size: ``(H, W)`` of the padded batch (the pooler derives the level scales).
            targets: N dicts (``boxes``, ``labels``).
            rng: a Generator, or one per image, for the RoI sampler.
            sum_counts: sums the normaliser R over data-parallel ranks (identity by default).

        Returns:
            ``(SampledRoIs, {"loss_classifier", "loss_box_reg"}, BoxHeadCache)``.
        """
        dtype = features[0].dtype
        rois, matched_idxs, labels, reg_targets = select_training_samples(
            proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets],
            self.matcher, self.sampler, self.box_coder, rng)
        rois = [r.astype(dtype) for r in rois]
        class_logits, box_regression, caches = self._predictions(features, rois, image_size)
        labels_all = np.concatenate(labels)  # host (the sampler's copy)
        targets_all = get_array_module(features[0]).concatenate(reg_targets)
        num_rois = sum_counts(float(labels_all.shape[0]))
        loss_cls, loss_box, _, _ = fastrcnn_loss(class_logits, box_regression, labels_all,
                                                 targets_all, self.smooth_l1_beta, num_rois)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        cache = BoxHeadCache(*caches, class_logits, box_regression, labels_all, targets_all,
                             num_rois)
        return SampledRoIs(rois, labels, matched_idxs), losses, cache

    def predict(self, features, proposals, image_size, image_sizes):
        """Detections per image (torchvision ``RoIHeads`` box branch in eval mode): list of N
        dicts ``boxes (D, 4) float32``, ``scores (D,) float32``, ``labels (D,) int64``."""
        dtype = features[0].dtype
        proposals = [p.astype(dtype) for p in proposals]
        class_logits, box_regression, _ = self._predictions(features, proposals, image_size)
        return postprocess_detections(class_logits, box_regression, proposals, image_sizes,
                                      self.box_coder, self.score_thresh, self.min_size,
                                      self.nms_thresh, self.detections_per_img)

    def backward(self, d_sampled, cache: BoxHeadCache, loss_weights=None):
        """Gradients of the weighted box losses w.r.t. P2..P5 (list of ``(N, C, H_l, W_l)``).

        ``d_sampled`` must be ``None``: the sampled RoIs carry no gradient.
        """
        if d_sampled is not None:
            raise ValueError("the sampled RoIs carry no gradient: pass d_sampled=None")
        _, _, d_logits, d_box = fastrcnn_loss(cache.class_logits, cache.box_regression,
                                              cache.labels, cache.regression_targets,
                                              self.smooth_l1_beta, cache.num_rois, values=False)
        d_logits = weighted(d_logits, loss_weights, "loss_classifier")
        d_box = weighted(d_box, loss_weights, "loss_box_reg")
        dh = self.cls_score.backward(d_logits, cache.cls_score)
        dh = dh + self.bbox_pred.backward(d_box, cache.bbox_pred)
        dh = self.relu7.backward(dh, cache.relu7)
        dh = self.fc7.backward(dh, cache.fc7)
        dh = self.relu6.backward(dh, cache.relu6)
        d_pooled = self.fc6.backward(dh, cache.fc6).reshape(cache.pooled_shape)
        return self.roi_pool.backward(d_pooled, cache.pool)
