"""The keypoint head: keypoint targets, RoI features, the conv stack, the spatial softmax loss,
and the keypoints of the detections (paper section 5, "Mask R-CNN for Human Pose Estimation";
torchvision ``KeypointRCNNHeads`` + ``KeypointRCNNPredictor``, ``keypointrcnn_loss``,
``keypointrcnn_inference``).

Shape shorthand: N images, C FPN channels, Rf foreground RoIs (all images together), K keypoint
types, m heatmap size (56), D detections of one image.

The paper's point: the mask framework carries over with almost no change. A keypoint's location
is a one-hot ``m x m`` mask; for each of the K keypoint types the head predicts one map per RoI,
trained with a cross-entropy over the ``m^2`` locations (a softmax over space, one location is
the target), only for the keypoints that are labelled and inside the RoI.

Training forward of :class:`KeypointHead` (on the box head's foreground RoIs, like the mask
head)::

    foreground RoIs + their matched gt keypoints -> ops.keypoints_to_heatmap
        -> targets (Rf, K) flat cells, valid (Rf, K)
    P2..P5 + RoIs -> MultiScaleRoIAlign 14x14 -> n x (conv3x3, ReLU)
      -> ConvTranspose 4x4 s2 p1 (28x28) -> bilinear 2x -> logits (Rf, K, m, m)
    loss_keypoint = ops.keypoint_loss: cross-entropy summed over the valid keypoints / their
                    number in the whole batch (torchvision's mean over the valid ones)

The paper's and torchvision's head: eight 3x3 512-channel convs (``keypoint_head_convs``,
``keypoint_head_channels``), the deconv (no ReLU after it) and the 2x bilinear upscaling
(:class:`minimaskrcnn.nn.Upsample`, ``mode="bilinear"``) to 56 x 56. Init as torchvision: every
conv and the deconv Kaiming normal (fan_out, ReLU), zero bias.

Backward: the loss's gradient (made here, weighted) -> upsample^T -> deconv -> n x (ReLU, conv)
-> (Rf, C, 14, 14) -> the pooler's backward -> dP2..dP5.

Inference: the head runs on the detection boxes; ``ops.heatmaps_to_keypoints`` (bicubic resize
to the box, arg-max, the map's value as the score) gives ``keypoints (D, K, 3)`` ``[x, y, 1]``
and ``keypoint_scores (D, K)`` (torchvision calls the latter ``keypoints_scores``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.model.stage import Stage, identity_count, weighted
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Sequential


def keypoint_targets(rois, labels, matched_idxs, gt_keypoints, m: int, num_keypoints: int):
    """Foreground RoIs of each image and their keypoint targets (torchvision
    ``keypointrcnn_loss``'s ``keypoints_to_heatmap`` of the matched ground truth).

    Args:
        rois, labels, matched_idxs: per image, the box head's :class:`SampledRoIs` fields.
        gt_keypoints: per image ``(G_i, K, 3)`` float ``[x, y, v]`` image pixels.
        m: heatmap size; num_keypoints: K.

    Returns:
        ``(fg_rois, targets, valid)``: per image the ``(Rf_i, 4)`` foreground RoIs, all images'
        ``(Rf, K)`` int64 flat cells and ``(Rf, K)`` bool validity.
    """
    fg_rois, targets, valid = [], [], []
    xp = get_array_module(*rois)
    for r, lab, midx, kp in zip(rois, labels, matched_idxs, gt_keypoints, strict=True):
        pos_host = np.nonzero(to_numpy(lab) > 0)[0]  # the box head's host labels: no sync
        pos = xp.asarray(pos_host)
        fg_rois.append(r[pos])
        if pos_host.size:
            # the ground-truth keypoints, validated on the host, copied to the RoIs' device
            t, v = ops.keypoints_to_heatmap(xp.asarray(kp)[xp.asarray(midx)[pos]], r[pos], m)
            targets.append(t)
            valid.append(v)
    if not targets:
        return (fg_rois, xp.zeros((0, num_keypoints), np.int64),
                xp.zeros((0, num_keypoints), bool))
    return fg_rois, xp.concatenate(targets), xp.concatenate(valid)


class KeypointHeadCache(NamedTuple):
    """What :meth:`KeypointHead.backward` reads (``None`` fields when no foreground RoI of this
    process has a valid keypoint): the pooler's and the layers' caches, the logits
    ``(Rf, K, m, m)``, the targets and validity ``(Rf, K)``, the normaliser (valid keypoints of
    the whole batch)."""

    pool: object
    keypoint_fcn: object
    kps_score_lowres: object
    upsample: object
    logits: np.ndarray | None
    targets: np.ndarray | None
    valid: np.ndarray | None
    num_valid: float


class KeypointHead(Stage):
    """The keypoint branch (parameters ``keypoint_fcn`` -- torchvision's ``KeypointRCNNHeads``
    -- and ``kps_score_lowres`` -- its ``KeypointRCNNPredictor``), with its pooler.

    ``forward_train(features, sampled, image_size, gt_keypoints)`` -> ``(None, losses, cache)``;
    ``predict(features, detections, image_size)`` -> the detections with keypoints;
    ``backward(None, cache, loss_weights)`` -> ``[dP2..dP5]`` or ``None``.

    Args:
        cfg: the :class:`~minimaskrcnn.config.ModelConfig` (``num_keypoints`` > 0,
            ``keypoint_*``, ``roi_op``, ``roi_aligned``, ``canonical_*``, ``fpn_channels``).
        rng: initial weights.
    """

    LOSSES = ("loss_keypoint",)

    def __init__(self, cfg, rng: np.random.Generator):
        if cfg.num_keypoints < 1:
            raise ValueError(f"KeypointHead needs num_keypoints >= 1, got {cfg.num_keypoints}")
        self.roi_pool = ops.MultiScaleRoIPooler(cfg.keypoint_roi_size, cfg.keypoint_sampling_ratio,
                                               pooler_type=cfg.roi_op, aligned=cfg.roi_aligned,
                                               canonical_scale=cfg.canonical_scale,
                                               canonical_level=cfg.canonical_level)
        layers, c = [], cfg.fpn_channels
        for _ in range(cfg.keypoint_head_convs):
            layers += [nn.Conv2d(c, cfg.keypoint_head_channels, 3, padding=1, rng=rng), nn.ReLU()]
            c = cfg.keypoint_head_channels
        self.keypoint_fcn = Sequential(*layers)
        self.kps_score_lowres = nn.ConvTranspose2d(c, cfg.num_keypoints, 4, stride=2, padding=1,
                                                   rng=rng)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        for layer in convs + [self.kps_score_lowres]:
            init.kaiming_normal_(layer.weight, rng, mode="fan_out", nonlinearity="relu")
            init.zeros_(layer.bias)
        self.num_keypoints = cfg.num_keypoints
        self.heatmap_size = cfg.keypoint_heatmap_size

    def _logits(self, features, rois, image_size):
        """RoIs -> pooled features -> convs -> deconv -> 2x -> ``(R, K, m, m)``, and the caches."""
        pooled, c_pool = self.roi_pool.forward(features, rois, image_size)  # (R, C, 14, 14)
        h, c1 = self.keypoint_fcn.forward(pooled)
        h, c2 = self.kps_score_lowres.forward(h)  # (R, K, 28, 28)
        logits, c3 = self.upsample.forward(h)  # (R, K, 56, 56)
        return logits, (c_pool, c1, c2, c3)

    def check_keypoints(self, gt_keypoints, num_gt):
        """Each image's ``(G_i, K, 3)`` keypoints, float; raises ``ValueError`` naming the image
        for a wrong shape (a wrong number of keypoint types K included) or NaN/inf."""
        out = []
        for i, (kp, g) in enumerate(zip(gt_keypoints, num_gt, strict=True)):
            kp = np.asarray(kp)
            if kp.shape != (g, self.num_keypoints, 3):
                raise ValueError(f"targets[{i}]['keypoints'] must have shape (G, K, 3) = "
                                 f"{(g, self.num_keypoints, 3)} (K = num_keypoints of the "
                                 f"model), got {kp.shape}")
            if not np.issubdtype(kp.dtype, np.number) or not np.isfinite(kp).all():
                raise ValueError(f"targets[{i}]['keypoints'] must be finite numbers [x, y, v]")
            out.append(kp.astype(np.float32))
        return out

    def forward_train(self, features, sampled, image_size, gt_keypoints, *,
                      sum_counts=identity_count):
        """Keypoint loss on the foreground RoIs.

        Args:
            features: P2..P5, list of ``(N, C, H_l, W_l)``.
            sampled: the box head's :class:`~minimaskrcnn.model.box_head.SampledRoIs`.
            image_size: ``(H, W)`` of the padded batch.
            gt_keypoints: per image ``(G_i, K, 3)`` float ``[x, y, v]`` image pixels (COCO
                visibility: 0 not labelled, 1 occluded, 2 visible; ``v > 0`` is trained on).
            sum_counts: sums the normaliser (valid keypoints) over data-parallel ranks.

        Returns:
            ``(None, {"loss_keypoint"}, KeypointHeadCache)``; the loss is 0 when no foreground
            RoI has a valid keypoint (torchvision: ``keypoint_logits.sum() * 0``).
        """
        dtype = features[0].dtype
        fg_rois, targets, valid = keypoint_targets(sampled.rois, sampled.labels,
                                                   sampled.matched_idxs, gt_keypoints,
                                                   self.heatmap_size, self.num_keypoints)
        num_valid = sum_counts(float(valid.sum()))
        if not valid.any():
            return None, {"loss_keypoint": 0.0}, KeypointHeadCache(*(None,) * 7, num_valid)
        logits, caches = self._logits(features, [r.astype(dtype) for r in fg_rois], image_size)
        loss, _ = ops.keypoint_loss(logits, targets, valid, num_valid)
        return (None, {"loss_keypoint": loss},
                KeypointHeadCache(*caches, logits, targets, valid, num_valid))

    def predict(self, features, detections, image_size):
        """Keypoints of the detections (torchvision's keypoint branch in eval mode).

        Args:
            features: P2..P5; detections: the box head's per-image dicts (``boxes``).
            image_size: padded ``(H, W)``.

        Returns:
            the detections, each dict with ``keypoints (D, K, 3) float32`` ``[x, y, 1]`` image
            pixels and ``keypoint_scores (D, K) float32`` (the heatmap logit at the keypoint)
            added.
        """
        dtype = features[0].dtype
        xp = get_array_module(features[0])
        boxes = [d["boxes"].astype(dtype) for d in detections]  # on the features' device
        if sum(b.shape[0] for b in boxes):
            logits, _ = self._logits(features, boxes, image_size)  # (D_all, K, m, m)
        start, k = 0, self.num_keypoints
        for d, b in zip(detections, boxes, strict=True):
            n = b.shape[0]
            if n:
                kp, scores = ops.heatmaps_to_keypoints(logits[start:start + n], b)
            else:
                kp, scores = xp.zeros((0, k, 3)), xp.zeros((0, k))
            start += n
            d["keypoints"] = kp.astype(np.float32)
            d["keypoint_scores"] = scores.astype(np.float32)
        return detections

    def backward(self, dy, cache: KeypointHeadCache, loss_weights=None):
        """Gradient of the weighted keypoint loss w.r.t. P2..P5 (list of ``(N, C, H_l, W_l)``),
        or ``None`` when no foreground RoI had a valid keypoint (nothing flows)."""
        if dy is not None:
            raise ValueError("the keypoint head's training output is its loss: pass dy=None")
        if cache.logits is None:
            return None
        _, d_logits = ops.keypoint_loss(cache.logits, cache.targets, cache.valid, cache.num_valid)
        d_logits = weighted(d_logits, loss_weights, "loss_keypoint")
        dh = self.upsample.backward(d_logits, cache.upsample)
        dh = self.kps_score_lowres.backward(dh, cache.kps_score_lowres)
        dh = self.keypoint_fcn.backward(dh, cache.keypoint_fcn)
        return self.roi_pool.backward(dh, cache.pool)
