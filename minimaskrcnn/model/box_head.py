"""The box head: proposal matching and sampling, the two-layer MLP and the class and box
predictors, their losses, and the inference postprocess (paper section 3 and Fast R-CNN;
torchvision ``roi_heads.py`` box branch: ``select_training_samples``, ``TwoMLPHead``,
``FastRCNNPredictor``, ``fastrcnn_loss``, ``postprocess_detections``).
:class:`~minimaskrcnn.model.roi_heads.RoIHeads` runs it.

Shape shorthand: N images, C FPN channels, R RoIs (sampled proposals, all images together,
image by image), P the pooled size (7), K classes (background not counted, so K + 1 scores),
G ground truths of one image, D detections of one image.

Training (:meth:`RoIHeads.forward_train <minimaskrcnn.model.roi_heads.RoIHeads.forward_train>`)::

    proposals (per image) + ground-truth boxes -> Matcher(0.5, 0.5) -> sampler(256, 0.25)
      -> R sampled RoIs, their labels (0 background) and box targets (BoxCoder 10, 10, 5, 5)
    P2..P5 + RoIs -> box_roi_pool 7x7 -> TwoMLPHead: flatten, fc6, ReLU, fc7, ReLU  (R, 256)
      -> FastRCNNPredictor: cls_score (R, K+1), bbox_pred (R, 4(K+1))
    loss_classifier = cross-entropy summed over the R RoIs / R
    loss_box_reg    = smooth L1 (beta 1/9) of each foreground RoI's own-class deltas / R

Backward: the two losses' gradients (recomputed from the cached predictions with
``fastrcnn_loss(values=False)``, weighted) -> the predictor (its two layers' input gradients
add up) -> fc7, fc6 -> (R, C, 7, 7) -> the pooler's backward -> dP2..dP5. Nothing flows into
the proposals, the matching or the targets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.nn.module import Module
from minimaskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

# --------------------------------------------------------------------------------------------
# targets (not differentiated)


class SampledRoIs(NamedTuple):
    """The RoIs sampled for training, per image, no gradient (torchvision
    ``select_training_samples``' four lists): ``rois`` ``(R_i, 4)``, ``matched_idxs`` ``(R_i,)``
    int64 (the matched ground truth, 0 for background), ``labels`` ``(R_i,)`` int64 host
    arrays (0 background), ``regression_targets`` ``(R_i, 4)``."""

    rois: list
    matched_idxs: list
    labels: list
    regression_targets: list



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
        :class:`SampledRoIs` ``(rois, matched_idxs, labels, regression_targets)``, torchvision's
        four lists in its order: rois, N ``(R_i, 4)`` sampled boxes (in increasing proposal
        index, as torchvision's ``torch.where(pos | neg)``); matched_idxs, N ``(R_i,)`` int64
        matched ground-truth index (0 for background RoIs); labels, N ``(R_i,)`` int64 (0
        background), NumPy arrays (the host sampler's copy: on a GPU, later steps find the
        foreground without another synchronisation); regression_targets, N ``(R_i, 4)``
        float32. Boxes, indices and targets are on the proposals' device.
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
    return SampledRoIs(rois, matched_idxs, labels, targets)


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

    No argument checks: :class:`~minimaskrcnn.model.roi_heads.RoIHeads` passes arrays it built
    (internal helper).
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
# the layers (differentiated)


class TwoMLPHeadCache(NamedTuple):
    """What :meth:`TwoMLPHead.backward` reads: the input's shape and each layer's cache."""

    input_shape: tuple
    fc6: object
    relu6: object
    fc7: object
    relu7: object


class TwoMLPHead(Module):
    """Flatten, fc6, ReLU, fc7, ReLU (torchvision ``TwoMLPHead``): ``(R, C, P, P)`` pooled
    features -> ``(R, representation_size)``. Parameters ``fc6``, ``fc7``; init: torch's Linear
    default, U(+-1/sqrt(fan_in)).

    Args:
        in_channels: ``C P P``; representation_size: the width of both layers (256).
        rng: initial weights.
    """

    def __init__(self, in_channels: int, representation_size: int, rng: np.random.Generator):
        self.fc6 = nn.Linear(in_channels, representation_size, rng=rng)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(representation_size, representation_size, rng=rng)
        self.relu7 = nn.ReLU()

    def forward(self, x):
        h, c6 = self.fc6.forward(x.reshape(x.shape[0], -1))  # (R, C*P*P) -> (R, rep)
        h, r6 = self.relu6.forward(h)
        h, c7 = self.fc7.forward(h)
        h, r7 = self.relu7.forward(h)
        return h, TwoMLPHeadCache(x.shape, c6, r6, c7, r7)

    def backward(self, dy, cache: TwoMLPHeadCache):
        dh = self.relu7.backward(dy, cache.relu7)
        dh = self.fc7.backward(dh, cache.fc7)
        dh = self.relu6.backward(dh, cache.relu6)
        return self.fc6.backward(dh, cache.fc6).reshape(cache.input_shape)


class FastRCNNPredictorCache(NamedTuple):
    """What :meth:`FastRCNNPredictor.backward` reads: the two layers' caches."""

    cls_score: object
    bbox_pred: object


class FastRCNNPredictor(Module):
    """The class scores and the class-specific box deltas of each RoI (torchvision
    ``FastRCNNPredictor``): ``(R, d)`` -> ``(class_logits (R, K+1), box_regression
    (R, 4(K+1)))``. Parameters ``cls_score``, ``bbox_pred``; torch's Linear default init.

    ``backward((d_class_logits, d_box_regression), cache)`` -> ``(R, d)``: the two layers'
    input gradients added.

    Args:
        in_channels: d (the representation size); num_classes: K + 1 (with the background).
        rng: initial weights.
    """

    def __init__(self, in_channels: int, num_classes: int, rng: np.random.Generator):
        self.cls_score = nn.Linear(in_channels, num_classes, rng=rng)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes, rng=rng)

    def forward(self, x):
        class_logits, cs = self.cls_score.forward(x)  # (R, K+1)
        box_regression, cb = self.bbox_pred.forward(x)  # (R, 4(K+1))
        return (class_logits, box_regression), FastRCNNPredictorCache(cs, cb)

    def backward(self, dy, cache: FastRCNNPredictorCache):
        d_class_logits, d_box_regression = dy
        dx = self.cls_score.backward(d_class_logits, cache.cls_score)
        return dx + self.bbox_pred.backward(d_box_regression, cache.bbox_pred)


def build_box_branch(cfg, rng: np.random.Generator):
    """``(box_roi_pool, box_head, box_predictor)`` of ``cfg``: the ``box_roi_size`` pooler of
    ``roi_op``, :class:`TwoMLPHead` and :class:`FastRCNNPredictor` (torchvision
    ``MaskRCNN.__init__``'s defaults), built in this order from ``rng``."""
    c, p = cfg.fpn_channels, cfg.box_roi_size
    pool = ops.MultiScaleRoIPooler(p, cfg.box_sampling_ratio, pooler_type=cfg.roi_op,
                                   aligned=cfg.roi_aligned, canonical_scale=cfg.canonical_scale,
                                   canonical_level=cfg.canonical_level)
    head = TwoMLPHead(c * p * p, cfg.representation_size, rng)
    predictor = FastRCNNPredictor(cfg.representation_size, cfg.num_classes + 1, rng)
    return pool, head, predictor
