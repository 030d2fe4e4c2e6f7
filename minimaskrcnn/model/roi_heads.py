"""RoI heads: proposal matching and sampling, the box branch, the mask branch, their losses and
the inference postprocess (paper sections 3 and 3.1; torchvision ``models/detection/roi_heads.py``).

Shape shorthand: N images, C FPN channels, R RoIs (sampled proposals, all images together,
image by image), Rf foreground RoIs, K classes (background not counted, so K + 1 scores),
G ground truths of one image, D detections of one image, M mask size (28).

Training path::

    proposals (per image) + ground-truth boxes -> Matcher(0.5, 0.5) -> sampler(256, 0.25)
      -> box RoIAlign 7x7 on P2..P5 -> flatten -> FC 256, ReLU, FC 256, ReLU
      -> class logits (R, K+1), class-specific deltas (R, 4(K+1))      -> loss_classifier, loss_box_reg
      foreground RoIs -> mask RoIAlign 14x14 -> 4 x (conv3x3, ReLU) -> deconv 2x2 s2, ReLU
      -> conv1x1 -> mask logits (Rf, K+1, M, M)                         -> loss_mask

The mask predictor has K + 1 output channels like torchvision's ``MaskRCNNPredictor`` (its
``num_classes`` counts the background): channel 0 is never trained with the sigmoid loss and
channels 1..K are the K class masks. Keeping the background channel makes the parameter count
equal torchvision's (2,479,803 for ``nuclei-mini``) and gives the softmax-loss ablation its
background class.

Gradients flow from the three losses into the heads and, through the poolers' backward, into
P2..P5; never into the proposals, the matching or the targets.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.model.timing import NullTimer
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Sequential
from minimaskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.training.matcher import Matcher
from minimaskrcnn.training.sampler import BalancedPositiveNegativeSampler


class BoxHead(Module):
    """torchvision ``TwoMLPHead``: flatten ``(R, C, P, P)`` -> FC -> ReLU -> FC -> ReLU,
    ``(R, representation_size)``. Linear init: U(+-1/sqrt(fan_in)) (torch's default).
    Features and outputs in the parameters' dtype (float32); the layers raise on a wrong shape
    (``ValueError``) or dtype (``TypeError``)."""

    def __init__(self, in_features: int, representation_size: int, rng: np.random.Generator):
        self.fc6 = nn.Linear(in_features, representation_size, rng=rng)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(representation_size, representation_size, rng=rng)
        self.relu7 = nn.ReLU()

    def forward(self, x):
        shape = x.shape
        h, c6 = self.fc6.forward(x.reshape(shape[0], -1))  # (R, C*P*P) -> (R, rep)
        h, r6 = self.relu6.forward(h)
        h, c7 = self.fc7.forward(h)
        h, r7 = self.relu7.forward(h)
        return h, (shape, c6, r6, c7, r7)

    def backward(self, dy, cache):
        shape, c6, r6, c7, r7 = cache
        dy = self.relu7.backward(dy, r7)
        dy = self.fc7.backward(dy, c7)
        dy = self.relu6.backward(dy, r6)
        return self.fc6.backward(dy, c6).reshape(shape)


class BoxPredictor(Module):
    """torchvision ``FastRCNNPredictor``: class logits ``(R, K+1)`` and class-specific deltas
    ``(R, 4(K+1))`` from the box head's ``(R, representation_size)`` features, all in the
    parameters' dtype (float32). Errors: as :class:`~minimaskrcnn.nn.Linear`."""

    def __init__(self, in_features: int, num_classes_with_bg: int, rng: np.random.Generator):
        self.cls_score = nn.Linear(in_features, num_classes_with_bg, rng=rng)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes_with_bg, rng=rng)

    def forward(self, x):
        scores, cs = self.cls_score.forward(x)
        deltas, cb = self.bbox_pred.forward(x)
        return (scores, deltas), (cs, cb)

    def backward(self, grads, cache):
        d_scores, d_deltas = grads
        cs, cb = cache
        return self.cls_score.backward(d_scores, cs) + self.bbox_pred.backward(d_deltas, cb)


class MaskHead(Module):
    """torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor``: ``convs`` x (conv3x3 C -> ch, ReLU),
    ConvTranspose 2x2 stride 2 + ReLU, conv 1x1 -> K+1 logits. ``(Rf, C, 14, 14)`` ->
    ``(Rf, K+1, 28, 28)``. Init: Kaiming normal (fan_out, ReLU), zero bias. Arrays in the
    parameters' dtype (float32); errors: as :class:`~minimaskrcnn.nn.Conv2d`."""

    def __init__(self, in_channels: int, channels: int, convs: int, num_classes_with_bg: int,
                 rng: np.random.Generator):
        layers = []
        c = in_channels
        for _ in range(convs):
            layers += [nn.Conv2d(c, channels, 3, padding=1, rng=rng), nn.ReLU()]
            c = channels
        self.mask_fcn = Sequential(*layers)
        self.conv5_mask = nn.ConvTranspose2d(c, channels, 2, stride=2, rng=rng)
        self.relu5 = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes_with_bg, 1, rng=rng)
        convs_ = [m for m in layers if isinstance(m, nn.Conv2d)]
        for layer in convs_ + [self.conv5_mask, self.mask_fcn_logits]:
            init.kaiming_normal_(layer.weight, rng, mode="fan_out", nonlinearity="relu")
            init.zeros_(layer.bias)

    def forward(self, x):
        h, c1 = self.mask_fcn.forward(x)
        h, c2 = self.conv5_mask.forward(h)
        h, c3 = self.relu5.forward(h)
        y, c4 = self.mask_fcn_logits.forward(h)
        return y, (c1, c2, c3, c4)

    def backward(self, dy, cache):
        c1, c2, c3, c4 = cache
        dy = self.mask_fcn_logits.backward(dy, c4)
        dy = self.relu5.backward(dy, c3)
        dy = self.conv5_mask.backward(dy, c2)
        return self.mask_fcn.backward(dy, c1)


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
        sampler: ``BalancedPositiveNegativeSampler(256, 0.25)``; rng drives it.
        box_coder: weights (10, 10, 5, 5).

    Returns:
        rois: list of N ``(R_i, 4)`` sampled boxes (in increasing proposal index, as
        torchvision's ``torch.where(pos | neg)``); matched_idxs: list of N ``(R_i,)`` int64 matched
        ground-truth index (0 for background RoIs); labels: list of N ``(R_i,)`` int64 (0
        background); regression_targets: list of N ``(R_i, 4)`` float32.
    """
    all_props, all_matched, all_labels = [], [], []
    for props, gtb, gtl in zip(proposals, gt_boxes, gt_labels, strict=True):
        props = np.concatenate([props.astype(np.float32), gtb.astype(np.float32)], axis=0)
        if gtb.shape[0] == 0:
            matched = np.zeros(props.shape[0], np.int64)
            labels = np.zeros(props.shape[0], np.int64)
        else:
            m = matcher(box_iou(gtb, props))
            matched = np.clip(m, 0, None)
            labels = gtl[matched].astype(np.int64)
            labels[m == Matcher.BELOW_LOW_THRESHOLD] = 0
            labels[m == Matcher.BETWEEN_THRESHOLDS] = -1
        all_props.append(props)
        all_matched.append(matched)
        all_labels.append(labels)
    pos_masks, neg_masks = sampler(all_labels, rng)
    rois, matched_idxs, labels, targets = [], [], [], []
    for props, matched, lab, pos, neg, gtb in zip(all_props, all_matched, all_labels, pos_masks,
                                                  neg_masks, gt_boxes, strict=True):
        keep = np.nonzero(np.asarray(pos, bool) | np.asarray(neg, bool))[0]
        r = props[keep]
        rois.append(r)
        matched_idxs.append(matched[keep])
        labels.append(lab[keep])
        if gtb.shape[0] == 0:
            matched_gt = np.zeros_like(r)
        else:
            matched_gt = gtb.astype(np.float32)[matched[keep]]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = box_coder.encode(matched_gt, r).astype(np.float32)
        t[lab[keep] <= 0] = 0.0  # background targets are unused (and may be inf for gt-free images)
        targets.append(t)
    return rois, matched_idxs, labels, targets


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets, beta):
    """Classification and box losses and their gradients (torchvision ``fastrcnn_loss``).

    Args:
        class_logits: ``(R, K+1)``; box_regression: ``(R, 4(K+1))``.
        labels: ``(R,)`` int64 (0 background); regression_targets: ``(R, 4)``.
        beta: smooth L1 beta (1/9).

    Returns:
        ``(loss_classifier, loss_box_reg, d_class_logits, d_box_regression)``: cross-entropy
        averaged over the R RoIs; smooth L1 of the foreground RoIs' deltas of their own class,
        summed and divided by R. Losses are Python floats, gradients have the logits' shapes
        and dtypes (float32 in training, float64 in the gradient check).

    No argument checks: :class:`RoIHeads` passes arrays it built (internal helper).
    """
    r = labels.shape[0]
    loss_cls, d_logits = nn.losses.cross_entropy(class_logits, labels)
    d_box = np.zeros_like(box_regression)
    pos = np.nonzero(labels > 0)[0]
    if pos.size == 0:
        return float(loss_cls), 0.0, d_logits, d_box
    reg = box_regression.reshape(r, -1, 4)  # (R, K+1, 4)
    pred = reg[pos, labels[pos]]  # (Rf, 4)
    loss_box, g = nn.losses.smooth_l1_loss(pred, regression_targets[pos].astype(pred.dtype), beta=beta,
                                    reduction="sum")
    d_box.reshape(r, -1, 4)[pos, labels[pos]] = g / r
    return float(loss_cls), float(loss_box) / r, d_logits, d_box


# --------------------------------------------------------------------------------------------


class RoIHeads(Module):
    """Box and mask branches with their poolers (parameters: ``box_head``, ``box_predictor``,
    ``mask_head``). See the module docstring for the flow."""

    def __init__(self, cfg, rng: np.random.Generator):
        c = cfg.fpn_channels
        k1 = cfg.num_classes + 1
        self.cfg = cfg
        self.box_roi_pool = ops.MultiScaleRoIAlign(cfg.box_roi_size, cfg.box_sampling_ratio,
                                               roi_op=cfg.roi_op, aligned=cfg.roi_aligned)
        self.mask_roi_pool = ops.MultiScaleRoIAlign(cfg.mask_roi_size, cfg.mask_sampling_ratio,
                                                roi_op=cfg.roi_op, aligned=cfg.roi_aligned)
        self.box_head = BoxHead(c * cfg.box_roi_size**2, cfg.representation_size, rng)
        self.box_predictor = BoxPredictor(cfg.representation_size, k1, rng)
        self.mask_head = MaskHead(c, cfg.mask_head_channels, cfg.mask_head_convs, k1, rng)
        self.matcher = Matcher(cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
                               allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(cfg.box_batch_size_per_image,
                                                       cfg.box_positive_fraction)
        self.box_coder = BoxCoder(cfg.box_coder_weights, cfg.bbox_xform_clip)

    # -- training -----------------------------------------------------------------------------

    def forward_train(self, features, proposals, image_sizes, batch_size, targets, rng,
                      timer=None):
        """Losses of the box and mask branches.

        Args:
            features: P2..P5, list of ``(N, C, H_l, W_l)``.
            proposals: list of N ``(P_i, 4)`` (no gradient).
            image_sizes: N unpadded ``(h, w)``.
            batch_size: ``(H, W)`` of the padded batch (the poolers derive the level scales
                from it).
            targets: list of N dicts (``boxes``, ``labels``, ``masks``).
            rng: drives the RoI sampler.

        Returns:
            ``(losses dict, cache)``; :meth:`backward` turns the cache into the P2..P5 gradients.
        """
        timer = timer or NullTimer()
        cfg = self.cfg
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        rois, matched_idxs, labels, reg_targets = select_training_samples(
            proposals, gt_boxes, gt_labels, self.matcher, self.sampler, self.box_coder, rng)
        dtype = features[0].dtype
        rois = [r.astype(dtype) for r in rois]
        labels_all = np.concatenate(labels)
        with timer("roi_heads"):
            pooled, pool_cache = self.box_roi_pool.forward(features, rois, batch_size)
            h, head_cache = self.box_head.forward(pooled)
            (class_logits, box_regression), pred_cache = self.box_predictor.forward(h)
            loss_cls, loss_box, d_logits, d_box = fastrcnn_loss(
                class_logits, box_regression, labels_all, np.concatenate(reg_targets),
                cfg.box_smooth_l1_beta)

        with timer("mask_head"):
            # mask branch on the foreground RoIs only
            pos_rois, pos_labels, mask_targets = [], [], []
            for r, lab, m, t in zip(rois, labels, matched_idxs, targets, strict=True):
                pos = np.nonzero(lab > 0)[0]
                pos_rois.append(r[pos])
                pos_labels.append(lab[pos])
                if pos.size:
                    mask_targets.append(ops.project_masks_on_boxes(
                        t["masks"], r[pos], m[pos], cfg.mask_size).astype(dtype))
            pos_labels = np.concatenate(pos_labels)
            mask_cache = None
            if pos_labels.size:
                mask_targets = np.concatenate(mask_targets)
                mpooled, mpool_cache = self.mask_roi_pool.forward(features, pos_rois, batch_size)
                mask_logits, mhead_cache = self.mask_head.forward(mpooled)
                # channel 0 (background) takes no part in the loss; channels 1..K are the K
                # class masks that ops.mask_loss expects
                loss_m, d_fg = ops.mask_loss(mask_logits[:, 1:], pos_labels, mask_targets,
                                             mode=cfg.mask_loss)
                d_mask = np.zeros_like(mask_logits)
                d_mask[:, 1:] = d_fg
                mask_cache = (mpool_cache, mhead_cache, d_mask)
                loss_m = float(loss_m)
            else:
                loss_m = 0.0  # torchvision: mask_logits.sum() * 0
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_m}
        cache = (pool_cache, head_cache, pred_cache, d_logits, d_box, mask_cache,
                 [f.shape for f in features], dtype)
        return losses, cache

    def backward(self, cache):
        """Gradients of the three losses w.r.t. P2..P5 (list of ``(N, C, H_l, W_l)``);
        accumulates every head parameter's gradient."""
        pool_cache, head_cache, pred_cache, d_logits, d_box, mask_cache, shapes, dtype = cache
        dh = self.box_predictor.backward((d_logits, d_box), pred_cache)
        d_pooled = self.box_head.backward(dh, head_cache)
        d_feats = list(self.box_roi_pool.backward(d_pooled, pool_cache))
        if mask_cache is not None:
            mpool_cache, mhead_cache, d_mask = mask_cache
            d_mpooled = self.mask_head.backward(d_mask, mhead_cache)
            for i, g in enumerate(self.mask_roi_pool.backward(d_mpooled, mpool_cache)):
                d_feats[i] = d_feats[i] + g
        return d_feats

    # -- inference ----------------------------------------------------------------------------

    def predict(self, features, proposals, image_sizes, batch_size):
        """Detections per image (torchvision ``RoIHeads.forward`` in eval mode).

        Returns:
            list of N dicts: ``boxes (D, 4) float32``, ``labels (D,) int64``,
            ``scores (D,) float32``, ``masks (D, h, w) bool`` at the image's own size.
        """
        cfg = self.cfg
        dtype = features[0].dtype
        proposals = [p.astype(dtype) for p in proposals]
        pooled, _ = self.box_roi_pool.forward(features, proposals, batch_size)
        h, _ = self.box_head.forward(pooled)
        (class_logits, box_regression), _ = self.box_predictor.forward(h)
        dets = postprocess_detections(class_logits, box_regression, proposals, image_sizes,
                                      self.box_coder, cfg.box_score_thresh, cfg.box_min_size,
                                      cfg.box_nms_thresh, cfg.detections_per_img)
        det_boxes = [d["boxes"].astype(dtype) for d in dets]
        if sum(b.shape[0] for b in det_boxes):
            mpooled, _ = self.mask_roi_pool.forward(features, det_boxes, batch_size)
            mask_logits, _ = self.mask_head.forward(mpooled)  # (D_all, K+1, M, M)
        start = 0
        for d, (hh, ww) in zip(dets, image_sizes, strict=True):
            n = d["boxes"].shape[0]
            if n == 0:
                d["masks"] = np.zeros((0, hh, ww), bool)
                continue
            logits = mask_logits[start:start + n]
            start += n
            probs = mask_probabilities(logits, d["labels"], cfg.mask_loss)  # (D, M, M)
            pasted = ops.paste_masks_in_image(probs.astype(np.float32), d["boxes"], (hh, ww), padding=1)
            d["masks"] = np.asarray(pasted).reshape(n, hh, ww) >= cfg.mask_threshold
        return dets


def mask_probabilities(mask_logits, labels, mode):
    """``(D, K+1, M, M)`` logits -> ``(D, M, M)`` probabilities of each detection's class.

    ``mode="sigmoid"``: sigmoid of the class's channel. ``"softmax"``: the class's share of a
    softmax over the K class channels plus a background logit fixed at 0 (as
    :func:`minimaskrcnn.ops.mask_loss` defines it); channel 0 is unused in both modes.
    ``labels`` ``(D,)`` int64 in 1..K; the result has the logits' dtype. Any ``mode`` other than
    ``"softmax"`` is treated as sigmoid (the config validates it: ``MASK_LOSSES``).
    """
    idx = np.arange(labels.shape[0])
    x = mask_logits[idx, labels]  # (D, M, M)
    if mode == "softmax":
        fg = mask_logits[:, 1:]
        m = np.maximum(fg.max(axis=1), 0.0)  # stabiliser, includes the background's 0
        return np.exp(x - m) / (np.exp(-m) + np.exp(fg - m[:, None]).sum(axis=1))
    e = np.exp(-np.abs(x))  # stable sigmoid
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


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
    k1 = class_logits.shape[1]
    z = class_logits - class_logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    scores_all = e / e.sum(axis=1, keepdims=True)  # (R, K+1)
    out = []
    start = 0
    for props, size in zip(proposals, image_sizes, strict=True):
        n = props.shape[0]
        if n == 0:
            out.append({"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                        "labels": np.zeros(0, np.int64)})
            continue
        reg = box_regression[start:start + n]
        scores = scores_all[start:start + n]
        start += n
        boxes = box_coder.decode(reg, props).reshape(n, k1, 4)
        boxes = clip_boxes_to_image(boxes, size)
        labels = np.broadcast_to(np.arange(k1), (n, k1))
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = np.nonzero(scores > score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        out.append({"boxes": boxes[keep].astype(np.float32),
                    "scores": scores[keep].astype(np.float32),
                    "labels": labels[keep].astype(np.int64)})
    return out
