"""The keypoint head: keypoint targets, the conv stack and the keypoint predictor, the spatial
softmax loss, and the keypoints of the detections (paper section 5, "Mask R-CNN for Human Pose
Estimation"; torchvision ``KeypointRCNNHeads`` + ``KeypointRCNNPredictor``,
``keypointrcnn_loss``, ``keypointrcnn_inference``). :class:`~minimaskrcnn.model.roi_heads.RoIHeads`
runs it when ``num_keypoints > 0``.

Shape shorthand: N images, C FPN channels, Rf foreground RoIs (all images together), K keypoint
types, m heatmap size (56), D detections of one image.

The paper's point: the mask framework carries over with almost no change. A keypoint's location
is a one-hot ``m x m`` mask; for each of the K keypoint types the head predicts one map per RoI,
trained with a cross-entropy over the ``m^2`` locations (a softmax over space, one location is
the target), only for the keypoints that are labelled and inside the RoI.

Training (on the box head's foreground RoIs, the same as the mask head's)::

    P2..P5 + foreground RoIs -> keypoint_roi_pool 14x14
      -> KeypointRCNNHeads: n x (conv3x3, ReLU)
      -> KeypointRCNNPredictor: ConvTranspose 4x4 s2 p1 (28x28), bilinear 2x -> (Rf, K, m, m)
    targets: the matched gt keypoints -> ops.keypoints_to_heatmap -> (Rf, K) flat cells, valid
    loss_keypoint = ops.keypoint_loss: cross-entropy summed over the valid keypoints / their
                    number in the whole batch (torchvision's mean over the valid ones)

The paper's and torchvision's head: eight 3x3 512-channel convs (``keypoint_head_convs``,
``keypoint_head_channels``), the deconv (no ReLU after it) and the 2x bilinear upscaling
(:class:`minimaskrcnn.nn.Upsample`, ``mode="bilinear"``) to 56 x 56. Init as torchvision: every
conv and the deconv Kaiming normal (fan_out, ReLU), zero bias.

Backward: ``ops.keypoint_loss`` gives the loss and its gradient in one pass; the forward keeps
the gradient and the backward scales it by the loss's weight -> upsample^T -> deconv ->
n x (ReLU, conv) -> (Rf, C, 14, 14) -> the pooler's backward -> dP2..dP5.

Inference: the head runs on the detection boxes; ``ops.heatmaps_to_keypoints`` (bicubic resize
to the box, arg-max, the map's value as the score) gives ``keypoints (D, K, 3)`` ``[x, y, 1]``
and ``keypoint_scores (D, K)`` (torchvision calls the latter ``keypoints_scores``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module
from minimaskrcnn.model.mask_head import kaiming_init_
from minimaskrcnn.nn.module import Module, Sequential

# --------------------------------------------------------------------------------------------
# the layers (differentiated)


class KeypointRCNNHeads(Sequential):
    """``len(layers)`` x (conv3x3, ReLU) (torchvision ``KeypointRCNNHeads``, children ``0``,
    ``1``, ...): ``(R, C, S, S)`` -> ``(R, layers[-1], S, S)``.

    Args:
        in_channels: C; layers: the width of each conv (``keypoint_head_convs`` x
            ``keypoint_head_channels``); rng: the torch-default weights (then
            :meth:`reset_parameters`).
    """

    def __init__(self, in_channels: int, layers, rng: np.random.Generator):
        modules, c = [], in_channels
        for width in layers:
            modules += [nn.Conv2d(c, width, 3, padding=1, rng=rng), nn.ReLU()]
            c = width
        super().__init__(*modules)

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """torchvision's init: Kaiming normal (fan_out, ReLU), zero bias."""
        kaiming_init_([m for m in self.layers if isinstance(m, nn.Conv2d)], rng)


class KeypointRCNNPredictorCache(NamedTuple):
    """What :meth:`KeypointRCNNPredictor.backward` reads: each layer's cache."""

    kps_score_lowres: object
    upsample: object


class KeypointRCNNPredictor(Module):
    """ConvTranspose 4x4 stride 2 padding 1, then bilinear ``up_scale``x (torchvision
    ``KeypointRCNNPredictor``, whose ``up_scale`` is 2): ``(R, d, S, S)`` -> logits ``(R, K,
    2 up_scale S, 2 up_scale S)``. Parameters ``kps_score_lowres``.

    Args:
        in_channels: d; num_keypoints: K; rng: the torch-default weights (then
            :meth:`reset_parameters`); up_scale: the bilinear upsampling factor (>= 1).
    """

    def __init__(self, in_channels: int, num_keypoints: int, rng: np.random.Generator,
                 up_scale: int = 2):
        self.kps_score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, 4, stride=2,
                                                   padding=1, rng=rng)
        self.upsample = nn.Upsample(scale_factor=up_scale, mode="bilinear")

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """torchvision's init: Kaiming normal (fan_out, ReLU), zero bias."""
        kaiming_init_([self.kps_score_lowres], rng)

    def forward(self, x):
        h, c1 = self.kps_score_lowres.forward(x)  # (R, K, 2S, 2S)
        logits, c2 = self.upsample.forward(h)  # (R, K, m, m), m = 2 up_scale S (4S)
        return logits, KeypointRCNNPredictorCache(c1, c2)

    def backward(self, dy, cache: KeypointRCNNPredictorCache):
        dh = self.upsample.backward(dy, cache.upsample)
        return self.kps_score_lowres.backward(dh, cache.kps_score_lowres)


def build_keypoint_branch(cfg, rng: np.random.Generator):
    """``(keypoint_roi_pool, keypoint_head, keypoint_predictor)`` of ``cfg`` (``num_keypoints``
    >= 1): the ``keypoint_roi_size`` pooler of ``roi_op``, :class:`KeypointRCNNHeads`,
    :class:`KeypointRCNNPredictor`; built, then re-initialised (head, predictor) in the order of
    the first versions' draws from ``rng`` (as
    :func:`~minimaskrcnn.model.mask_head.build_mask_branch`).

    Raises:
        ValueError: ``num_keypoints < 1``.
    """
    if cfg.num_keypoints < 1:
        raise ValueError(f"the keypoint head needs num_keypoints >= 1, got {cfg.num_keypoints}")
    pool = ops.MultiScaleRoIPooler(cfg.keypoint_roi_size, cfg.keypoint_sampling_ratio,
                                   pooler_type=cfg.roi_op, aligned=cfg.roi_aligned,
                                   canonical_scale=cfg.canonical_scale,
                                   canonical_level=cfg.canonical_level)
    width = cfg.keypoint_head_channels
    head = KeypointRCNNHeads(cfg.fpn_channels, (width,) * cfg.keypoint_head_convs, rng)
    # the heatmap side m = keypoint_heatmap_size: 2x from the deconv, the rest bilinear
    up_scale = cfg.keypoint_heatmap_size // (2 * cfg.keypoint_roi_size)
    predictor = KeypointRCNNPredictor(width, cfg.num_keypoints, rng, up_scale=up_scale)
    head.reset_parameters(rng)
    predictor.reset_parameters(rng)
    return pool, head, predictor


# --------------------------------------------------------------------------------------------
# targets, loss, inference (not differentiated, except the loss's gradient)


def keypoint_targets(rois, matched_idxs, gt_keypoints, m: int, num_keypoints: int):
    """The keypoint targets of each foreground RoI (torchvision ``keypointrcnn_loss``'s
    ``keypoints_to_heatmap`` of the matched ground truth).

    Args:
        rois, matched_idxs: per image, the ``(Rf_i, 4)`` foreground RoIs and their ``(Rf_i,)``
            matched ground truths (:class:`~minimaskrcnn.model.roi_heads.ForegroundRoIs`).
        gt_keypoints: per image ``(G_i, K, 3)`` float ``[x, y, v]`` image pixels.
        m: heatmap size; num_keypoints: K.

    Returns:
        ``(targets, valid)``: ``(Rf, K)`` int64 flat cells and ``(Rf, K)`` bool validity.
    """
    targets, valid = [], []
    xp = get_array_module(*rois)
    for r, midx, kp in zip(rois, matched_idxs, gt_keypoints, strict=True):
        if r.shape[0]:
            # the ground-truth keypoints (validated on the host) on the RoIs' device
            t, v = ops.keypoints_to_heatmap(xp.asarray(kp)[xp.asarray(midx)], r, m)
            targets.append(t)
            valid.append(v)
    if not targets:
        return xp.zeros((0, num_keypoints), np.int64), xp.zeros((0, num_keypoints), bool)
    return xp.concatenate(targets), xp.concatenate(valid)


def keypointrcnn_loss(keypoint_logits, targets, valid, num_valid):
    """The keypoint loss and its gradient (torchvision ``keypointrcnn_loss``):
    :func:`minimaskrcnn.ops.keypoint_loss` with the normaliser ``num_valid``, the valid
    keypoints of the whole batch (over every data-parallel rank). Returns ``(loss, d_logits)``,
    a Python float and ``(Rf, K, m, m)`` (of a weight-1 loss); ``(0.0, zeros)`` when no
    keypoint of the batch is valid (torchvision: ``keypoint_logits.sum() * 0``)."""
    if num_valid == 0:
        return 0.0, get_array_module(keypoint_logits).zeros_like(keypoint_logits)
    return ops.keypoint_loss(keypoint_logits, targets, valid, num_valid)


def keypointrcnn_inference(keypoint_logits, boxes):
    """The keypoints of each image's detections (torchvision ``keypointrcnn_inference``).

    Args:
        keypoint_logits: ``(D_all, K, m, m)``, every image's detections in order.
        boxes: per image the ``(D_i, 4)`` detection boxes the logits were pooled from.

    Returns:
        per image ``(keypoints (D_i, K, 3) float32 [x, y, 1], keypoint_scores (D_i, K)
        float32)`` (:func:`minimaskrcnn.ops.heatmaps_to_keypoints`).
    """
    xp = get_array_module(keypoint_logits)
    k = keypoint_logits.shape[1]
    out, start = [], 0
    for b in boxes:
        n = b.shape[0]
        if n:
            kp, scores = ops.heatmaps_to_keypoints(keypoint_logits[start:start + n], b)
        else:
            kp, scores = xp.zeros((0, k, 3)), xp.zeros((0, k))
        start += n
        out.append((kp.astype(np.float32), scores.astype(np.float32)))
    return out
