"""Region proposal network: shared head, anchors, targets, losses and proposals (paper section 3;
torchvision ``models/detection/rpn.py``, ``RegionProposalNetwork``).

Training forward of :class:`RegionProposalNetwork`::

    P2..P6 -> RPNHead -> objectness (N, T), deltas (N, T, 4)        (flattened, level order)
    anchors (AnchorGenerator on the padded size) vs ground truths:
        Matcher(0.7, 0.3, low-quality matches) -> labels {1, 0, -1}, BoxCoder.encode -> targets
        sampler(256, 0.5 per image) -> S sampled anchors, of which the foreground
        loss_objectness = BCE over the S sampled / S;  loss_rpn_box_reg = smooth L1 over fg / S
    proposals: per level top-k, decode, clip, remove small, NMS per level, top-k per image
        (no gradient)

Backward: the two losses' gradients (made here, scaled by their weights), un-flattened to the
levels, through the shared head -> dP2..dP6.

Shape shorthand: N images, C channels (FPN width), L levels (P2..P6), A anchors per cell,
H_l W_l the size of level l, T = sum_l H_l * W_l * A anchors per image, G ground truths.

Ordering (as torchvision's ``concat_box_prediction_layers``): the head's objectness
``(N, A, H, W)`` and deltas ``(N, A * 4, H, W)`` are permuted to ``(N, H, W, A)`` /
``(N, H, W, A, 4)`` and flattened per level, then the levels are concatenated, so anchor index
``t`` runs over levels, then rows, then columns, then the A cell anchors, which is the order of
``AnchorGenerator``'s anchors.

Nothing here is differentiated except :class:`RPNHead` and the two losses; targets and proposals
are plain arrays (gradients never flow into proposals, as in torchvision).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.model.stage import Stage, identity_count, weighted
from minimaskrcnn.nn.module import Module
from minimaskrcnn.ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)


class RPNHeadCache(NamedTuple):
    """One level's cache of :class:`RPNHead`: its input ``(N, C, H_l, W_l)`` and the 3x3
    conv's ReLU output (the sparse backward recomputes nothing else)."""

    features: object
    relu: object


class RPNHead(Module):
    """conv 3x3 C -> C + ReLU, then 1x1 objectness (A) and 1x1 box deltas (4A), shared by every
    level (torchvision ``RPNHead``). Init: normal(std 0.01), zero bias.

    ``forward(features)`` takes the list of L maps ``(N, C, H_l, W_l)`` and returns
    ``((objectness list (N, A, H_l, W_l), deltas list (N, 4A, H_l, W_l)), cache)`` (the cache:
    one :class:`RPNHeadCache` per level);
    ``backward((d_objectness list, d_deltas list), cache)`` returns the list of feature gradients
    and accumulates the head's parameter gradients over all levels.

    The backward is sparse. The RPN losses only see the sampled anchors (256 per image out of
    ~16k for a 256x256 crop), so the incoming gradients are zero except at the S cells holding a
    sampled anchor. The 1x1 convs and the ReLU are per cell; the 3x3 conv's weight gradient is
    ``sum over those cells of dt (x) patch`` and its input gradient scatters ``W^T dt`` into the
    3x3 neighbourhood of each cell. Working on the S cells only (gathered patches, one scatter
    per tap, unique targets per tap) gives exactly the dense backward's result for ~5% of its
    work.
    """

    def __init__(self, channels: int, num_anchors: int, rng: np.random.Generator):
        self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=True, rng=rng)
        self.relu = nn.ReLU()
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1, bias=True, rng=rng)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1, bias=True, rng=rng)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            layer.weight.data[...] = rng.normal(0.0, 0.01, layer.weight.shape)
            layer.bias.data[...] = 0.0

    def forward(self, features):
        objectness, deltas, caches = [], [], []
        for x in features:
            t, _ = self.conv.forward(x)
            r, _ = self.relu.forward(t)
            o, _ = self.cls_logits.forward(r)
            d, _ = self.bbox_pred.forward(r)
            objectness.append(o)
            deltas.append(d)
            caches.append(RPNHeadCache(x, r))  # all the sparse backward needs
        return (objectness, deltas), caches

    def backward(self, grads, cache):
        d_objectness, d_deltas = grads
        w_cls = self.cls_logits.weight.data.reshape(self.cls_logits.out_channels, -1)  # (A, C)
        w_box = self.bbox_pred.weight.data.reshape(self.bbox_pred.out_channels, -1)  # (4A, C)
        w3 = self.conv.weight.data.reshape(self.conv.out_channels, -1)  # (C, C*9)
        d_features = []
        for do, dd, c in zip(d_objectness, d_deltas, cache, strict=True):
            x, r = c.features, c.relu
            n, c, h, w = x.shape
            xp = get_array_module(x)
            dx_pad = xp.zeros((n, c, h + 2, w + 2), x.dtype)
            # S cells (on a GPU: a host sync per level, for the number of cells)
            ni, hi, wi = xp.nonzero((do != 0).any(axis=1) | (dd != 0).any(axis=1))
            if ni.size:
                do_s = do[ni, :, hi, wi]  # (S, A)
                dd_s = dd[ni, :, hi, wi]  # (S, 4A)
                r_s = r[ni, :, hi, wi]  # (S, C)
                self.cls_logits.weight.grad += (do_s.T @ r_s).reshape(self.cls_logits.weight.shape)
                self.cls_logits.bias.grad += do_s.sum(axis=0)
                self.bbox_pred.weight.grad += (dd_s.T @ r_s).reshape(self.bbox_pred.weight.shape)
                self.bbox_pred.bias.grad += dd_s.sum(axis=0)
                dt_s = (do_s @ w_cls + dd_s @ w_box) * (r_s > 0)  # (S, C), through the ReLU
                x_pad = xp.zeros_like(dx_pad)
                x_pad[:, :, 1:-1, 1:-1] = x
                taps = [(a, b) for a in range(3) for b in range(3)]
                patches = xp.stack([x_pad[ni, :, hi + a, wi + b] for a, b in taps], axis=2)
                self.conv.weight.grad += (dt_s.T @ patches.reshape(ni.size, -1)).reshape(
                    self.conv.weight.shape)  # (C, C*9) -> (C, C, 3, 3)
                self.conv.bias.grad += dt_s.sum(axis=0)
                dcols = (dt_s @ w3).reshape(ni.size, c, 9)  # (S, C, 3*3)
                for k, (a, b) in enumerate(taps):  # the S targets of one tap are distinct
                    dx_pad[ni, :, hi + a, wi + b] += dcols[:, :, k]
            d_features.append(dx_pad[:, :, 1:-1, 1:-1])
        return d_features


def flatten_head_outputs(objectness, deltas):
    """Per-level head outputs -> ``(N, T)`` objectness and ``(N, T, 4)`` deltas (torchvision's
    ``concat_box_prediction_layers``: level, row, column, anchor order), ``T = sum_l H_l W_l A``.
    ``objectness``: list of L ``(N, A, H_l, W_l)``; ``deltas``: list of L ``(N, 4A, H_l, W_l)``;
    dtype kept."""
    obj_flat, delta_flat = [], []
    for o, d in zip(objectness, deltas, strict=True):
        n, a, h, w = o.shape
        obj_flat.append(o.transpose(0, 2, 3, 1).reshape(n, h * w * a))  # (N, H*W*A)
        d = d.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2)  # (N, H, W, A, 4)
        delta_flat.append(d.reshape(n, h * w * a, 4))
    xp = get_array_module(obj_flat[0])
    return xp.concatenate(obj_flat, axis=1), xp.concatenate(delta_flat, axis=1)


def unflatten_head_grads(d_obj, d_deltas, shapes):
    """Inverse of :func:`flatten_head_outputs` for the gradients: ``(N, T)`` and ``(N, T, 4)``
    back to per-level ``(N, A, H, W)`` and ``(N, 4A, H, W)``. ``shapes`` are the objectness
    shapes ``(N, A, H, W)`` per level. Returns C-contiguous arrays of the gradients' dtype."""
    xp = get_array_module(d_obj)
    d_obj_levels, d_delta_levels = [], []
    start = 0
    for n, a, h, w in shapes:
        stop = start + h * w * a
        o = d_obj[:, start:stop].reshape(n, h, w, a).transpose(0, 3, 1, 2)
        d = d_deltas[:, start:stop].reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2)
        d_obj_levels.append(xp.ascontiguousarray(o))
        d_delta_levels.append(xp.ascontiguousarray(d.reshape(n, a * 4, h, w)))
        start = stop
    return d_obj_levels, d_delta_levels


def assign_anchor_targets(anchors, gt_boxes, matcher: Matcher, box_coder: BoxCoder):
    """Label every anchor of one image and encode its regression target (torchvision
    ``RegionProposalNetwork.assign_targets_to_anchors``).

    Args:
        anchors: ``(T, 4)`` float ``[x1, y1, x2, y2]``, input pixels.
        gt_boxes: ``(G, 4)`` float, input pixels (G may be 0).
        matcher: ``Matcher(0.7, 0.3, allow_low_quality_matches=True)`` for the preset.
        box_coder: weights (1, 1, 1, 1).

    Returns:
        labels ``(T,)`` float32: 1 foreground (IoU >= high, or a ground truth's best anchor),
        0 background (IoU < low), -1 ignored (in between); regression targets ``(T, 4)`` float32
        (meaningful for foreground anchors only; with no ground truth every anchor is
        background and the targets are zero). Both on the anchors' device.
    """
    xp = get_array_module(anchors)
    t = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return xp.zeros(t, np.float32), xp.zeros((t, 4), np.float32)
    matched = matcher(box_iou(gt_boxes, anchors))  # (T,) in {-2, -1, 0..G-1}
    labels = (matched >= 0).astype(np.float32)  # BELOW_LOW_THRESHOLD (-1) is already 0
    labels = xp.where(matched == Matcher.BETWEEN_THRESHOLDS, labels.dtype.type(-1), labels)
    matched_gt = gt_boxes[xp.maximum(matched, 0)]
    targets = box_coder.encode_single(matched_gt, anchors).astype(np.float32)
    return labels, targets


def sample_anchors(labels, sampler: BalancedPositiveNegativeSampler, rng):
    """Sample the anchors that enter the RPN losses (``sampler`` per image).

    The sampler draws on the host from NumPy generators (the same anchors on either device):
    on a GPU the labels are copied to the host here, one synchronisation per batch.

    Args:
        labels: list of N ``(T,)`` float32 in {1, 0, -1} (:func:`assign_anchor_targets`).
        rng: a Generator, or one Generator per image (see ``BalancedPositiveNegativeSampler``).

    Returns:
        ``(sampled, positive)``: two ``(N, T)`` bool NumPy arrays.
    """
    host = to_numpy(get_array_module(labels[0]).stack(labels)).astype(np.int64)  # (N, T)
    pos_masks, neg_masks = sampler(list(host), rng)
    positive = np.stack([np.asarray(p, bool) for p in pos_masks])  # (N, T)
    sampled = positive | np.stack([np.asarray(m, bool) for m in neg_masks])
    return sampled, positive


def rpn_losses(objectness, deltas, labels, regression_targets, sampled, positive, beta,
               num_sampled=None, *, values=True):
    """Objectness and box losses of the RPN and their gradients (torchvision
    ``RegionProposalNetwork.compute_loss``).

    Args:
        objectness: ``(N, T)`` logits; deltas: ``(N, T, 4)``.
        labels: ``(N, T)`` float32 in {1, 0, -1}; regression_targets: ``(N, T, 4)``.
        sampled, positive: ``(N, T)`` bool (:func:`sample_anchors`; host arrays: on a GPU they
            become index arrays copied to the device, no synchronisation).
        beta: smooth L1 beta (1/9).
        num_sampled: the normaliser S, the sampled anchors of the whole batch (over every
            data-parallel rank); default: those of these N images.
        values: ``False`` returns ``None`` for the two losses (the backward needs only the
            gradients; on a GPU a loss value is a host synchronisation).

    Returns:
        ``(loss_objectness, loss_rpn_box_reg, d_objectness (N, T), d_deltas (N, T, 4))``:
        binary cross-entropy summed over the sampled anchors / S, and smooth L1 summed over the
        sampled foreground / S; gradients of weight-1 losses.
    """
    xp = get_array_module(objectness)
    sampled, positive = to_numpy(sampled), to_numpy(positive)
    local = int(sampled.sum())
    num_sampled = local if num_sampled is None else num_sampled
    d_obj = xp.zeros(objectness.shape, objectness.dtype)
    d_del = xp.zeros(deltas.shape, deltas.dtype)
    if local == 0:
        return (0.0, 0.0, d_obj, d_del) if values else (None, None, d_obj, d_del)
    share = local / num_sampled  # 1 in one process: the mean over the local samples
    # flat indices of the sampled (positive) anchors, row-major as boolean-mask indexing
    s_idx = xp.asarray(np.flatnonzero(sampled))
    p_idx = xp.asarray(np.flatnonzero(positive))
    loss_obj, g_obj = nn.losses.binary_cross_entropy_with_logits(
        objectness.reshape(-1)[s_idx], labels.reshape(-1)[s_idx].astype(objectness.dtype))
    d_obj.reshape(-1)[s_idx] = g_obj if share == 1 else g_obj * g_obj.dtype.type(share)
    loss_box, g_box = nn.losses.smooth_l1_loss(
        deltas.reshape(-1, 4)[p_idx], regression_targets.reshape(-1, 4)[p_idx].astype(deltas.dtype),
        beta=beta, reduction="sum")
    d_del.reshape(-1, 4)[p_idx] = g_box / num_sampled
    if not values:
        return None, None, d_obj, d_del
    return float(loss_obj) * share, float(loss_box) / num_sampled, d_obj, d_del


def filter_proposals(anchors, deltas, objectness, box_coder: BoxCoder, image_sizes, level_sizes,
                     pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, score_thresh=0.0):
    """Pick the proposals of each image (torchvision ``RegionProposalNetwork.filter_proposals``).

    Per image: on each level keep the ``pre_nms_top_n`` anchors with the highest objectness,
    decode their deltas, clip to the image's own (unpadded) size, drop boxes with a side under
    ``min_size`` pixels, drop scores ``sigmoid(objectness) < score_thresh``, NMS at
    ``nms_thresh`` separately per level (``batched_nms`` over level ids), keep the
    ``post_nms_top_n`` highest. (torchvision decodes every anchor first; decoding only the
    kept ones gives the same boxes.)

    Args:
        anchors: ``(T, 4)`` float32, input pixels (the same for every image of the batch).
        deltas: ``(N, T, 4)`` RPN deltas; objectness: ``(N, T)`` logits (no gradient).
        box_coder: the RPN's (weights 1, 1, 1, 1).
        image_sizes: N ``(h, w)`` unpadded sizes.
        level_sizes: number of anchors ``H_l * W_l * A`` on each level (sums to T).

    Returns:
        boxes: list of N ``(P_i, 4)`` arrays (dtype of ``deltas``), sorted by decreasing score;
        scores: list of N ``(P_i,)`` sigmoid objectness.
    """
    xp = get_array_module(objectness)
    n = objectness.shape[0]
    levels = xp.concatenate([xp.full(s, i, np.int64) for i, s in enumerate(level_sizes)])
    top_idx = []  # per-level top-k indices, the same k for each image of the batch
    start = 0
    for s in level_sizes:
        k = min(pre_nms_top_n, s)
        if k < s:
            part = xp.argpartition(-objectness[:, start:start + s], k - 1, axis=1)[:, :k]
        else:
            part = xp.broadcast_to(xp.arange(s), (n, s))
        top_idx.append(part + start)
        start += s
    top_idx = xp.concatenate(top_idx, axis=1)  # (N, sum_l k_l)
    rows = xp.arange(n)[:, None]
    logits = objectness[rows, top_idx]
    e = xp.exp(-xp.abs(logits))  # stable sigmoid: exp of a non-positive number only
    prob_all = xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))

    final_boxes, final_scores = [], []
    for i in range(n):
        idx = top_idx[i]
        boxes = box_coder.decode(deltas[i, idx], anchors[idx].astype(deltas.dtype))
        boxes = clip_boxes_to_image(boxes, image_sizes[i])
        scores, lvl = prob_all[i], levels[idx]
        keep = remove_small_boxes(boxes, min_size)
        keep = keep[scores[keep] >= score_thresh]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post_nms_top_n]
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


class RPNCache(NamedTuple):
    """What :meth:`RegionProposalNetwork.backward` reads.

    head: the shared head's per-level cache; level_shapes: per level the objectness shape
    ``(N, A, H_l, W_l)``; objectness ``(N, T)`` and deltas ``(N, T, 4)``: the head's outputs;
    labels ``(N, T)`` float32 {1, 0, -1} and regression_targets ``(N, T, 4)``: the anchor
    targets (on the features' device); sampled, positive ``(N, T)`` bool NumPy arrays (the
    host sampler's); num_sampled: the normaliser S.
    """

    head: list
    level_shapes: list
    objectness: np.ndarray
    deltas: np.ndarray
    labels: np.ndarray
    regression_targets: np.ndarray
    sampled: np.ndarray
    positive: np.ndarray
    num_sampled: float


class RegionProposalNetwork(Stage):
    """The RPN stage (torchvision ``RegionProposalNetwork``): anchors, the shared head, box coder,
    matcher, sampler, targets, losses and proposal filtering. Parameters: ``head``.

    ``forward_train(features, images, targets, rng)`` -> ``(proposals, losses, cache)``;
    ``predict(features, images)`` -> proposals (``images`` the
    :class:`~minimaskrcnn.model.transform.ImageList`);
    ``backward(None, cache, loss_weights)`` -> ``[dP2..dP6]``.

    Args:
        cfg: the :class:`~minimaskrcnn.config.ModelConfig` (anchor sizes and ratios, FPN width,
            ``features``, the ``rpn_*`` fields, ``bbox_xform_clip``).
        rng: initial weights of the head.

    With ``features="fpn"`` the levels are P2..P6, one anchor size each times each of
    ``anchor_octave_scales`` (A = scales x aspect ratios); with ``"c5"`` there is one level, P5, carrying every size (A = sizes x ratios,
    Faster R-CNN's single-map RPN). The feature maps given to :meth:`forward_train` /
    :meth:`predict` and the gradients :meth:`backward` returns are one per level, in that order.
    """

    LOSSES = ("loss_objectness", "loss_rpn_box_reg")

    def __init__(self, cfg, rng: np.random.Generator):
        scales = tuple(cfg.anchor_octave_scales)
        if cfg.features == "c5":  # one level carries every anchor size
            sizes = (tuple(int(round(s * m)) for s in cfg.anchor_sizes for m in scales),)
        else:  # one size per pyramid level, times each octave scale
            sizes = tuple(tuple(int(round(s * m)) for m in scales) for s in cfg.anchor_sizes)
        self.head = RPNHead(cfg.fpn_channels, len(sizes[0]) * len(cfg.aspect_ratios), rng)
        self.anchor_generator = AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * len(sizes))
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0), cfg.bbox_xform_clip)
        self.matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh,
                               allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(cfg.rpn_batch_size_per_image,
                                                       cfg.rpn_positive_fraction)
        self.pre_nms_top_n = {True: cfg.rpn_pre_nms_top_n_train, False: cfg.rpn_pre_nms_top_n_test}
        self.post_nms_top_n = {True: cfg.rpn_post_nms_top_n_train,
                               False: cfg.rpn_post_nms_top_n_test}
        self.nms_thresh = cfg.rpn_nms_thresh
        self.min_size = cfg.rpn_min_size
        self.smooth_l1_beta = cfg.rpn_smooth_l1_beta

    def _head(self, features, images):
        """Head outputs flattened in anchor order, the anchors (laid on the padded batch), the
        level sizes."""
        (obj_levels, delta_levels), head_cache = self.head.forward(features)
        objectness, deltas = flatten_head_outputs(obj_levels, delta_levels)  # (N, T), (N, T, 4)
        xp = get_array_module(features[0])
        anchors = xp.concatenate(self.anchor_generator(images.tensors.shape[-2:],
                                                       [f.shape[-2:] for f in features], xp=xp))
        level_shapes = [o.shape for o in obj_levels]
        return objectness, deltas, anchors, level_shapes, head_cache

    def _proposals(self, objectness, deltas, anchors, level_shapes, image_sizes, training):
        level_sizes = [a * h * w for _, a, h, w in level_shapes]
        boxes, _ = filter_proposals(anchors, deltas, objectness, self.box_coder, image_sizes,
                                    level_sizes, self.pre_nms_top_n[training],
                                    self.post_nms_top_n[training], self.nms_thresh, self.min_size)
        return boxes

    def forward_train(self, features, images, targets, rng, *, proposals=None,
                      sum_counts=identity_count):
        """Proposals and the two RPN losses.

        Args:
            features: P2..P6, list of ``(N, C, H_l, W_l)``.
            images: the :class:`~minimaskrcnn.model.transform.ImageList`: the anchors are laid
                on its padded ``(H, W)``, proposals clipped to its ``image_sizes``.
            targets: N dicts with ``boxes (G_i, 4)`` float32.
            rng: a Generator, or one per image, for the anchor sampler.
            proposals: optional list of N ``(P_i, 4)`` returned instead of the RPN's own (the
                gradient check holds them fixed); the losses are computed as usual.
            sum_counts: sums a normaliser over data-parallel ranks (identity by default).

        Returns:
            ``(proposals, losses, cache)``: proposals a list of N ``(P_i, 4)`` arrays (no
            gradient), losses ``{"loss_objectness", "loss_rpn_box_reg"}``, an :class:`RPNCache`.
        """
        objectness, deltas, anchors, level_shapes, head_cache = self._head(features, images)
        labels, reg_targets = [], []
        for t in targets:
            lab, reg = assign_anchor_targets(anchors, t["boxes"], self.matcher, self.box_coder)
            labels.append(lab)
            reg_targets.append(reg)
        sampled, positive = sample_anchors(labels, self.sampler, rng)
        xp = get_array_module(objectness)
        labels, reg_targets = xp.stack(labels), xp.stack(reg_targets)  # (N, T), (N, T, 4)
        num_sampled = sum_counts(float(sampled.sum()))
        loss_obj, loss_box, _, _ = rpn_losses(objectness, deltas, labels, reg_targets, sampled,
                                              positive, self.smooth_l1_beta, num_sampled)
        if proposals is None:
            proposals = self._proposals(objectness, deltas, anchors, level_shapes,
                                        images.image_sizes, True)
        losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
        cache = RPNCache(head_cache, level_shapes, objectness, deltas, labels, reg_targets,
                         sampled, positive, num_sampled)
        return proposals, losses, cache

    def predict(self, features, images):
        """Proposals of each image: list of N ``(P_i, 4)`` arrays, highest objectness first."""
        objectness, deltas, anchors, level_shapes, _ = self._head(features, images)
        return self._proposals(objectness, deltas, anchors, level_shapes, images.image_sizes,
                               False)

    def backward(self, d_proposals, cache: RPNCache, loss_weights=None):
        """Gradients of the weighted RPN losses w.r.t. P2..P6 (list of ``(N, C, H_l, W_l)``).

        ``d_proposals`` must be ``None``: proposals carry no gradient (as in torchvision).
        """
        if d_proposals is not None:
            raise ValueError("the RPN's proposals carry no gradient: pass d_proposals=None")
        _, _, d_obj, d_del = rpn_losses(cache.objectness, cache.deltas, cache.labels,
                                        cache.regression_targets, cache.sampled, cache.positive,
                                        self.smooth_l1_beta, cache.num_sampled, values=False)
        d_obj = weighted(d_obj, loss_weights, "loss_objectness")
        d_del = weighted(d_del, loss_weights, "loss_rpn_box_reg")
        d_obj_levels, d_del_levels = unflatten_head_grads(d_obj, d_del, cache.level_shapes)
        return self.head.backward((d_obj_levels, d_del_levels), cache.head)
