"""Region proposal network: shared head, anchor targets, losses and proposals (paper section 3;
torchvision ``models/detection/rpn.py``).

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

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.nn.module import Module
from minimaskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.training.matcher import Matcher


class RPNHead(Module):
    """conv 3x3 C -> C + ReLU, then 1x1 objectness (A) and 1x1 box deltas (4A), shared by every
    level (torchvision ``RPNHead``). Init: normal(std 0.01), zero bias.

    ``forward(features)`` takes the list of L maps ``(N, C, H_l, W_l)`` and returns
    ``((objectness list (N, A, H_l, W_l), deltas list (N, 4A, H_l, W_l)), cache)``;
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
            caches.append((x, r))  # the input and the ReLU output are all backward needs
        return (objectness, deltas), caches

    def backward(self, grads, cache):
        d_objectness, d_deltas = grads
        w_cls = self.cls_logits.weight.data.reshape(self.cls_logits.out_channels, -1)  # (A, C)
        w_box = self.bbox_pred.weight.data.reshape(self.bbox_pred.out_channels, -1)  # (4A, C)
        w3 = self.conv.weight.data.reshape(self.conv.out_channels, -1)  # (C, C*9)
        d_features = []
        for do, dd, (x, r) in zip(d_objectness, d_deltas, cache, strict=True):
            n, c, h, w = x.shape
            dx_pad = np.zeros((n, c, h + 2, w + 2), x.dtype)
            ni, hi, wi = np.nonzero((do != 0).any(axis=1) | (dd != 0).any(axis=1))  # S cells
            if ni.size:
                do_s = do[ni, :, hi, wi]  # (S, A)
                dd_s = dd[ni, :, hi, wi]  # (S, 4A)
                r_s = r[ni, :, hi, wi]  # (S, C)
                self.cls_logits.weight.grad += (do_s.T @ r_s).reshape(self.cls_logits.weight.shape)
                self.cls_logits.bias.grad += do_s.sum(axis=0)
                self.bbox_pred.weight.grad += (dd_s.T @ r_s).reshape(self.bbox_pred.weight.shape)
                self.bbox_pred.bias.grad += dd_s.sum(axis=0)
                dt_s = (do_s @ w_cls + dd_s @ w_box) * (r_s > 0)  # (S, C), through the ReLU
                x_pad = np.zeros_like(dx_pad)
                x_pad[:, :, 1:-1, 1:-1] = x
                taps = [(a, b) for a in range(3) for b in range(3)]
                patches = np.stack([x_pad[ni, :, hi + a, wi + b] for a, b in taps], axis=2)
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
    return np.concatenate(obj_flat, axis=1), np.concatenate(delta_flat, axis=1)


def unflatten_head_grads(d_obj, d_deltas, shapes):
    """Inverse of :func:`flatten_head_outputs` for the gradients: ``(N, T)`` and ``(N, T, 4)``
    back to per-level ``(N, A, H, W)`` and ``(N, 4A, H, W)``. ``shapes`` are the objectness
    shapes ``(N, A, H, W)`` per level. Returns C-contiguous arrays of the gradients' dtype."""
    d_obj_levels, d_delta_levels = [], []
    start = 0
    for n, a, h, w in shapes:
        stop = start + h * w * a
        o = d_obj[:, start:stop].reshape(n, h, w, a).transpose(0, 3, 1, 2)
        d = d_deltas[:, start:stop].reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2)
        d_obj_levels.append(np.ascontiguousarray(o))
        d_delta_levels.append(np.ascontiguousarray(d.reshape(n, a * 4, h, w)))
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
        background and the targets are zero).
    """
    t = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return np.zeros(t, np.float32), np.zeros((t, 4), np.float32)
    matched = matcher(box_iou(gt_boxes, anchors))  # (T,) in {-2, -1, 0..G-1}
    labels = (matched >= 0).astype(np.float32)
    labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
    labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
    matched_gt = gt_boxes[np.clip(matched, 0, None)]
    targets = box_coder.encode_single(matched_gt, anchors).astype(np.float32)
    return labels, targets


def rpn_losses(objectness, deltas, labels, regression_targets, sampler, rng, beta):
    """Objectness and box losses of the RPN and their gradients (torchvision
    ``RegionProposalNetwork.compute_loss``).

    Args:
        objectness: ``(N, T)`` logits; deltas: ``(N, T, 4)``.
        labels: list of N ``(T,)`` float32 in {1, 0, -1}; regression_targets: list of N ``(T, 4)``.
        sampler: ``BalancedPositiveNegativeSampler(256, 0.5)`` for the preset; rng drives it.
        beta: smooth L1 beta (1/9).

    Returns:
        ``(loss_objectness, loss_rpn_box_reg, d_objectness (N, T), d_deltas (N, T, 4))``:
        binary cross-entropy averaged over the S sampled anchors of the batch, and smooth L1
        summed over the sampled foreground anchors divided by S.
    """
    pos_masks, neg_masks = sampler([lab.astype(np.int64) for lab in labels], rng)
    pos = np.stack([np.asarray(p, bool) for p in pos_masks])  # (N, T)
    sampled = pos | np.stack([np.asarray(m, bool) for m in neg_masks])
    lab = np.stack(labels)
    reg = np.stack(regression_targets)
    num_sampled = int(sampled.sum())
    d_obj = np.zeros_like(objectness)
    d_del = np.zeros_like(deltas)
    if num_sampled == 0:
        return 0.0, 0.0, d_obj, d_del
    loss_obj, g_obj = nn.losses.binary_cross_entropy_with_logits(objectness[sampled], lab[sampled].astype(objectness.dtype))
    d_obj[sampled] = g_obj
    loss_box, g_box = nn.losses.smooth_l1_loss(deltas[pos], reg[pos].astype(deltas.dtype), beta=beta, reduction="sum")
    d_del[pos] = g_box / num_sampled
    return float(loss_obj), float(loss_box) / num_sampled, d_obj, d_del


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
    n = objectness.shape[0]
    levels = np.concatenate([np.full(s, i, np.int64) for i, s in enumerate(level_sizes)])
    top_idx = []  # per-level top-k indices, the same k for each image of the batch
    start = 0
    for s in level_sizes:
        k = min(pre_nms_top_n, s)
        if k < s:
            part = np.argpartition(-objectness[:, start:start + s], k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(s), (n, s))
        top_idx.append(part + start)
        start += s
    top_idx = np.concatenate(top_idx, axis=1)  # (N, sum_l k_l)
    rows = np.arange(n)[:, None]
    logits = objectness[rows, top_idx]
    e = np.exp(-np.abs(logits))  # stable sigmoid: exp of a non-positive number only
    prob_all = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))

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
