"""The mask head: mask targets, RoI features, the FCN, the mask loss, and the masks of the
detections pasted into the image (paper sections 3 and 3.1, Figure 4 right; torchvision
``MaskRCNNHeads`` + ``MaskRCNNPredictor``, ``maskrcnn_loss``, ``paste_masks_in_image``).

Shape shorthand: N images, C FPN channels, Rf foreground RoIs (all images together), K classes
(background not counted), M mask size (28), D detections of one image, h w an image's size.

Training forward of :class:`MaskHead` (on the box head's foreground RoIs only; the paper defines
``L_mask`` on positive RoIs only)::

    foreground RoIs + their matched gt masks -> project_masks_on_boxes -> targets (Rf, M, M)
    P2..P5 + RoIs -> MultiScaleRoIAlign 14x14 -> 4 x (conv3x3, ReLU) -> deconv 2x2 s2, ReLU
      -> conv1x1 -> mask logits (Rf, K+1, M, M)
    loss_mask = ops.mask_loss on channels 1..K (per-class sigmoid BCE on the gt class's channel,
                or the softmax ablation), summed over the Rf M M pixels / (Rf M M)

The predictor has K + 1 output channels like torchvision's ``MaskRCNNPredictor`` (its
``num_classes`` counts the background): channel 0 never enters the loss and gets a zero
gradient. Keeping it makes the parameter count equal torchvision's (2,479,803 for
``nuclei-mini``).

Backward: the loss's gradient (made here, weighted; zero on channel 0) -> conv1x1 -> ReLU ->
deconv -> 4 x (ReLU, conv) -> (Rf, C, 14, 14) -> the pooler's backward -> dP2..dP5.

Two variants of the paper's Table 2 (config fields; the default is the FCN above, per class):

- ``mask_head_type="mlp"`` (Table 2e): the pooled ``(Rf, C, 14, 14)`` features flattened, fully
  connected layers of widths ``mask_mlp_dims`` each with ReLU, then one fully connected layer
  to ``(K+1) M M`` logits reshaped to ``(Rf, K+1, M, M)``: no spatial structure is kept, which is
  what the paper's FCN-vs-MLP comparison measures. Init: torch's ``Linear`` default.
- ``mask_class_agnostic=True`` (section 4.2, "class-agnostic masks"): the predictor has 2
  channels (background, one mask) whatever K; the loss and the prediction read channel 1 for
  every class.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.model.stage import Stage, identity_count, weighted
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Sequential


def mask_probabilities(mask_logits, labels, mode):
    """``(D, K+1, M, M)`` logits -> ``(D, M, M)`` probabilities of each detection's class.

    ``mode="sigmoid"``: sigmoid of the class's channel. ``"softmax"``: the class's share of a
    softmax over the K class channels plus a background logit fixed at 0 (as
    :func:`minimaskrcnn.ops.mask_loss` defines it); channel 0 is unused in both modes.
    ``labels`` ``(D,)`` int64 in 1..K; the result has the logits' dtype. Any ``mode`` other than
    ``"softmax"`` is treated as sigmoid (the config validates it: ``MASK_LOSS_MODES``).
    """
    xp = get_array_module(mask_logits)
    idx = xp.arange(labels.shape[0])
    x = mask_logits[idx, xp.asarray(labels)]  # (D, M, M)
    if mode == "softmax":
        fg = mask_logits[:, 1:]
        m = xp.maximum(fg.max(axis=1), 0.0)  # stabiliser, includes the background's 0
        return xp.exp(x - m) / (xp.exp(-m) + xp.exp(fg - m[:, None]).sum(axis=1))
    e = xp.exp(-xp.abs(x))  # stable sigmoid
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def mask_targets(rois, labels, matched_idxs, gt_masks, M: int, dtype):
    """Foreground RoIs of each image and their mask targets (torchvision ``maskrcnn_loss``'s
    ``project_masks_on_boxes``: the matched gt mask RoIAligned into the RoI at ``M x M``, soft).

    Args:
        rois, labels, matched_idxs: per image, the box head's :class:`SampledRoIs` fields.
        gt_masks: per image ``(G_i, h_i, w_i)`` uint8.

    Returns:
        ``(fg_rois, fg_labels, targets)``: per image the ``(Rf_i, 4)`` foreground RoIs, all
        images' ``(Rf,)`` int64 labels (NumPy, like the box head's) and ``(Rf, M, M)`` targets
        of ``dtype`` (RoIs and targets on the RoIs' device).
    """
    fg_rois, fg_labels, targets = [], [], []
    xp = get_array_module(*rois)
    for r, lab, m, masks in zip(rois, labels, matched_idxs, gt_masks, strict=True):
        lab = to_numpy(lab)  # the box head's host labels: no synchronisation
        pos_host = np.nonzero(lab > 0)[0]
        pos = xp.asarray(pos_host)
        fg_rois.append(r[pos])
        fg_labels.append(lab[pos_host])
        if pos_host.size:
            targets.append(ops.project_masks_on_boxes(masks, r[pos], m[pos], M).astype(dtype))
    fg_labels = np.concatenate(fg_labels)
    targets = xp.concatenate(targets) if targets else xp.zeros((0, M, M), dtype)
    return fg_rois, fg_labels, targets


class MaskHeadCache(NamedTuple):
    """What :meth:`MaskHead.backward` reads (``None`` fields when there is no foreground RoI):
    the pooler's cache, the layers' caches (in forward order), the logits ``(Rf, K+1, M, M)``,
    the labels ``(Rf,)`` (the predictor channel of each RoI: 1 for class-agnostic masks), the
    targets ``(Rf, M, M)``, the normaliser (foreground RoIs of the whole batch)."""

    pool: object
    layers: object
    mask_logits: np.ndarray | None
    labels: np.ndarray | None
    targets: np.ndarray | None
    num_fg: float


class MaskHead(Stage):
    """The mask branch (parameters ``mask_fcn`` -- torchvision's ``MaskRCNNHeads`` -- and
    ``conv5_mask``, ``mask_fcn_logits`` -- its ``MaskRCNNPredictor``), with its pooler.
    Init: Kaiming normal (fan_out, ReLU), zero bias. With ``mask_head_type="mlp"`` the parameters
    are ``mask_fc`` and ``mask_fc_logits`` instead (module docstring).

    ``forward_train(features, sampled, image_size, gt_masks)`` -> ``(None, losses, cache)``;
    ``predict(features, detections, image_size, image_sizes)`` -> the detections with masks;
    ``backward(None, cache, loss_weights)`` -> ``[dP2..dP5]``.

    Args:
        cfg: the :class:`~minimaskrcnn.config.ModelConfig` (``mask_*``, ``roi_op``,
            ``roi_aligned``, ``canonical_*``, ``fpn_channels``, ``num_classes``).
        rng: initial weights.
    """

    LOSSES = ("loss_mask",)

    def __init__(self, cfg, rng: np.random.Generator):
        k1 = (1 if cfg.mask_class_agnostic else cfg.num_classes) + 1
        self.roi_pool = ops.MultiScaleRoIPooler(cfg.mask_roi_size, cfg.mask_sampling_ratio,
                                               pooler_type=cfg.roi_op, aligned=cfg.roi_aligned,
                                               canonical_scale=cfg.canonical_scale,
                                               canonical_level=cfg.canonical_level)
        self.kind = cfg.mask_head_type
        self.class_agnostic = cfg.mask_class_agnostic
        self.mask_size = cfg.mask_size
        self.loss_mode = cfg.mask_loss
        self.threshold = cfg.mask_threshold
        if self.kind == "mlp":
            self._build_mlp(cfg, k1, rng)
            return
        layers, c = [], cfg.fpn_channels
        for _ in range(cfg.mask_head_convs):
            layers += [nn.Conv2d(c, cfg.mask_head_channels, 3, padding=1, rng=rng), nn.ReLU()]
            c = cfg.mask_head_channels
        self.mask_fcn = Sequential(*layers)
        self.conv5_mask = nn.ConvTranspose2d(c, cfg.mask_head_channels, 2, stride=2, rng=rng)
        self.relu5 = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(cfg.mask_head_channels, k1, 1, rng=rng)
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        for layer in convs + [self.conv5_mask, self.mask_fcn_logits]:
            init.kaiming_normal_(layer.weight, rng, mode="fan_out", nonlinearity="relu")
            init.zeros_(layer.bias)

    def _build_mlp(self, cfg, k1: int, rng: np.random.Generator):
        """The Table 2e head: ``mask_fc`` (Linear + ReLU per width of ``mask_mlp_dims``) and
        ``mask_fc_logits`` (Linear to ``k1 M M``), torch's default Linear init."""
        layers, d = [], cfg.fpn_channels * cfg.mask_roi_size * cfg.mask_roi_size
        for width in cfg.mask_mlp_dims:
            layers += [nn.Linear(d, width, rng=rng), nn.ReLU()]
            d = width
        self.mask_fc = Sequential(*layers)
        self.mask_fc_logits = nn.Linear(d, k1 * cfg.mask_size * cfg.mask_size, rng=rng)

    def _layers_forward(self, pooled):
        """Pooled ``(R, C, S, S)`` features -> ``(R, k1, M, M)`` logits, and the layer caches."""
        if self.kind == "mlp":
            r, m = pooled.shape[0], self.mask_size
            h, c1 = self.mask_fc.forward(pooled.reshape(r, -1))  # (R, C S S) -> (R, hidden)
            logits, c2 = self.mask_fc_logits.forward(h)  # (R, k1 M M)
            return logits.reshape(r, -1, m, m), (c1, c2, pooled.shape)
        h, c1 = self.mask_fcn.forward(pooled)
        h, c2 = self.conv5_mask.forward(h)  # (R, ch, 28, 28)
        h, c3 = self.relu5.forward(h)
        logits, c4 = self.mask_fcn_logits.forward(h)  # (R, k1, 28, 28)
        return logits, (c1, c2, c3, c4)

    def _layers_backward(self, d_logits, caches):
        """Mirror of :meth:`_layers_forward`: d logits -> d pooled features ``(R, C, S, S)``."""
        if self.kind == "mlp":
            c1, c2, pooled_shape = caches
            dh = self.mask_fc_logits.backward(d_logits.reshape(d_logits.shape[0], -1), c2)
            return self.mask_fc.backward(dh, c1).reshape(pooled_shape)
        c1, c2, c3, c4 = caches
        dh = self.mask_fcn_logits.backward(d_logits, c4)
        dh = self.relu5.backward(dh, c3)
        dh = self.conv5_mask.backward(dh, c2)
        return self.mask_fcn.backward(dh, c1)

    def _channels(self, labels):
        """The predictor channel of each RoI: its class, or 1 for class-agnostic masks."""
        return np.ones_like(labels) if self.class_agnostic else labels

    def _logits(self, features, rois, image_size):
        """RoIs -> pooled features -> the head's layers -> ``(R, k1, M, M)`` logits, and the
        pooler's and layers' caches."""
        pooled, c_pool = self.roi_pool.forward(features, rois, image_size)  # (R, C, 14, 14)
        logits, c_layers = self._layers_forward(pooled)
        return logits, (c_pool, c_layers)

    def _loss(self, mask_logits, labels, targets, num_fg):
        """Mask loss (sum over the Rf M M pixels / (num_fg M M)) and its gradient
        ``(Rf, K+1, M, M)`` (zero on channel 0); channels 1..K are ops.mask_loss's K."""
        xp = get_array_module(mask_logits)
        loss, d_fg = ops.mask_loss(mask_logits[:, 1:], xp.asarray(labels), targets,
                                   mode=self.loss_mode)
        share = labels.shape[0] / num_fg  # 1 in one process
        d_mask = xp.zeros_like(mask_logits)
        d_mask[:, 1:] = d_fg if share == 1 else d_fg * d_fg.dtype.type(share)
        return float(loss) * share, d_mask

    def forward_train(self, features, sampled, image_size, gt_masks, *,
                      sum_counts=identity_count):
        """Mask loss on the foreground RoIs.

        Args:
            features: P2..P5, list of ``(N, C, H_l, W_l)``.
            sampled: the box head's :class:`~minimaskrcnn.model.box_head.SampledRoIs`.
            image_size: ``(H, W)`` of the padded batch.
            gt_masks: per image ``(G_i, h_i, w_i)`` uint8 ground-truth masks.
            sum_counts: sums the normaliser Rf over data-parallel ranks (identity by default).

        Returns:
            ``(None, {"loss_mask"}, MaskHeadCache)`` (torchvision's loss is 0 without a
            foreground RoI: ``mask_logits.sum() * 0``).
        """
        dtype = features[0].dtype
        fg_rois, labels, targets = mask_targets(sampled.rois, sampled.labels,
                                                sampled.matched_idxs, gt_masks, self.mask_size,
                                                dtype)
        num_fg = sum_counts(float(labels.shape[0]))
        if labels.shape[0] == 0:
            return None, {"loss_mask": 0.0}, MaskHeadCache(*(None,) * 5, num_fg)
        labels = self._channels(labels)
        logits, caches = self._logits(features, fg_rois, image_size)
        loss, _ = self._loss(logits, labels, targets, num_fg)
        return None, {"loss_mask": loss}, MaskHeadCache(*caches, logits, labels, targets, num_fg)

    def predict(self, features, detections, image_size):
        """Mask probabilities of the detections (torchvision's mask branch in eval mode,
        ``maskrcnn_inference``): each dict gets ``masks (D, M, M) float32``, the probability of
        its class at each cell, pasted into the image by the transform's postprocess."""
        dtype = features[0].dtype
        xp = get_array_module(features[0])
        boxes = [d["boxes"].astype(dtype) for d in detections]
        if sum(b.shape[0] for b in boxes):
            mask_logits, _ = self._logits(features, boxes, image_size)  # (D_all, K+1, M, M)
        start = 0
        for d in detections:
            n = d["boxes"].shape[0]
            logits = mask_logits[start:start + n] if n else None
            start += n
            d["masks"] = (mask_probabilities(logits, self._channels(d["labels"]),
                                             self.loss_mode).astype(np.float32)
                          if n else xp.zeros((0, self.mask_size, self.mask_size), np.float32))
        return detections

    def backward(self, dy, cache: MaskHeadCache, loss_weights=None):
        """Gradient of the weighted mask loss w.r.t. P2..P5 (list of ``(N, C, H_l, W_l)``), or
        ``None`` when there was no foreground RoI (nothing flows)."""
        if dy is not None:
            raise ValueError("the mask head's training output is its loss: pass dy=None")
        if cache.mask_logits is None:
            return None
        _, d_mask = self._loss(cache.mask_logits, cache.labels, cache.targets, cache.num_fg)
        d_mask = weighted(d_mask, loss_weights, "loss_mask")
        return self.roi_pool.backward(self._layers_backward(d_mask, cache.layers), cache.pool)
