"""The mask head: mask targets, the FCN (or the MLP of Table 2e) and the mask predictor, the mask
loss, and the mask probabilities of the detections (paper sections 3 and 3.1, Figure 4 right;
torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor``, ``maskrcnn_loss``,
``maskrcnn_inference``). :class:`~minimaskrcnn.model.roi_heads.RoIHeads` runs it.

Shape shorthand: N images, C FPN channels, Rf foreground RoIs (all images together), S the
pooled size (14), K classes (background not counted), M mask size (28), D detections of one
image.

Training (on the box head's foreground RoIs only; the paper defines ``L_mask`` on positive RoIs
only)::

    P2..P5 + foreground RoIs -> mask_roi_pool 14x14
      -> MaskRCNNHeads: 4 x (conv3x3, ReLU)
      -> MaskRCNNPredictor: deconv 2x2 s2, ReLU, conv1x1 -> mask logits (Rf, K+1, M, M)
    targets: the matched gt masks -> project_masks_on_boxes -> (Rf, M, M)
    loss_mask = ops.mask_loss on channels 1..K (per-class sigmoid BCE on the gt class's channel,
                or the softmax ablation), summed over the Rf M M pixels / (Rf M M)

The predictor has K + 1 output channels like torchvision's ``MaskRCNNPredictor`` (its
``num_classes`` counts the background): channel 0 never enters the loss and gets a zero
gradient. Keeping it makes the parameter count equal torchvision's (2,479,803 for
``nuclei-mini``).

Backward: ``ops.mask_loss`` gives the loss and its gradient in one fused pass, so the forward
keeps the gradient (:func:`maskrcnn_loss`, zero on channel 0) and the backward scales it by the
loss's weight, reading nothing back from the device -> the predictor -> the heads
-> (Rf, C, 14, 14) -> the pooler's backward -> dP2..dP5.

Two variants of the paper's Table 2 (config fields, chosen once in :func:`build_mask_branch`;
the default is the FCN above, per class):

- ``mask_head_type="mlp"`` (Table 2e): :class:`MaskRCNNMLPHead`, the pooled ``(Rf, C, 14, 14)``
  features flattened, fully connected layers of widths ``mask_mlp_dims`` each with ReLU, then
  :class:`MaskRCNNMLPPredictor`, one fully connected layer to ``(K+1) M M`` logits reshaped to
  ``(Rf, K+1, M, M)``: no spatial structure is kept, which is what the paper's FCN-vs-MLP
  comparison measures. Init: torch's ``Linear`` default.
- ``mask_class_agnostic=True`` (section 4.2, "class-agnostic masks"): the predictor has 2
  channels (background, one mask) whatever K; the loss and the prediction read channel 1 for
  every class.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn, ops
from minimaskrcnn.backend import get_array_module
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Sequential

# --------------------------------------------------------------------------------------------
# the layers (differentiated)


def kaiming_init_(layers, rng: np.random.Generator) -> None:
    """Kaiming normal (fan_out, ReLU) weights and zero biases, layer by layer (torchvision's
    init of the mask and keypoint heads and predictors)."""
    for layer in layers:
        init.kaiming_normal_(layer.weight, rng, mode="fan_out", nonlinearity="relu")
        init.zeros_(layer.bias)


class NamedSequential(Sequential):
    """A :class:`~minimaskrcnn.nn.Sequential` whose children have names (torch's
    ``Sequential(OrderedDict(...))``): parameter names ``mask_fcn1.weight``, not ``0.weight``.
    The cache is the tuple of the children's caches, as :class:`Sequential`'s."""

    def __init__(self, named_layers):
        super().__init__(*(layer for _, layer in named_layers))
        self.names = [name for name, _ in named_layers]

    def named_children(self):
        yield from zip(self.names, self.layers, strict=True)

    def __getattr__(self, name):  # head.mask_fcn1, as torch's named Sequential
        names = self.__dict__.get("names", ())
        if name in names:
            return self.layers[names.index(name)]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


class MaskRCNNHeads(NamedSequential):
    """``len(layers)`` x (conv3x3, ReLU) (torchvision ``MaskRCNNHeads``, its children
    ``mask_fcn1``, ``relu1``, ...): ``(R, C, S, S)`` -> ``(R, layers[-1], S, S)``.

    Args:
        in_channels: C; layers: the width of each conv (``mask_head_convs`` x
            ``mask_head_channels``); rng: the torch-default weights (then
            :meth:`reset_parameters`).
    """

    def __init__(self, in_channels: int, layers, rng: np.random.Generator):
        named, c = [], in_channels
        for i, width in enumerate(layers, 1):
            named += [(f"mask_fcn{i}", nn.Conv2d(c, width, 3, padding=1, rng=rng)),
                      (f"relu{i}", nn.ReLU())]
            c = width
        super().__init__(named)

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """torchvision's init: Kaiming normal (fan_out, ReLU), zero bias."""
        kaiming_init_([m for m in self.layers if isinstance(m, nn.Conv2d)], rng)


class MaskRCNNPredictorCache(NamedTuple):
    """What :meth:`MaskRCNNPredictor.backward` reads: each layer's cache."""

    conv5_mask: object
    relu: object
    mask_fcn_logits: object


class MaskRCNNPredictor(Module):
    """Deconv 2x2 stride 2, ReLU, conv1x1 (torchvision ``MaskRCNNPredictor``): ``(R, d, S, S)``
    -> mask logits ``(R, num_classes, 2S, 2S)``. Parameters ``conv5_mask``,
    ``mask_fcn_logits``.

    Args:
        in_channels: d; dim_reduced: the deconv's width; num_classes: K + 1 (2 for
            class-agnostic masks); rng: the torch-default weights (then
            :meth:`reset_parameters`).
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int,
                 rng: np.random.Generator):
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2, rng=rng)
        self.relu = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, rng=rng)

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """torchvision's init: Kaiming normal (fan_out, ReLU), zero bias."""
        kaiming_init_([self.conv5_mask, self.mask_fcn_logits], rng)

    def output_size(self, pooled_size: int) -> int:
        """M for an ``S x S`` input: ``2 S`` (the deconv's stride)."""
        return 2 * pooled_size

    def forward(self, x):
        h, c5 = self.conv5_mask.forward(x)  # (R, d, 2S, 2S)
        h, cr = self.relu.forward(h)
        logits, cl = self.mask_fcn_logits.forward(h)  # (R, num_classes, 2S, 2S)
        return logits, MaskRCNNPredictorCache(c5, cr, cl)

    def backward(self, dy, cache: MaskRCNNPredictorCache):
        dh = self.mask_fcn_logits.backward(dy, cache.mask_fcn_logits)
        dh = self.relu.backward(dh, cache.relu)
        return self.conv5_mask.backward(dh, cache.conv5_mask)


class MLPHeadCache(NamedTuple):
    """What :meth:`MaskRCNNMLPHead.backward` reads: the input's shape, the layers' caches."""

    input_shape: tuple
    layers: tuple


class MaskRCNNMLPHead(NamedSequential):
    """The MLP mask head of Table 2e: flatten, then per width of ``dims`` a Linear and a ReLU
    (children ``mask_fc1``, ``relu1``, ...): ``(R, C, S, S)`` -> ``(R, dims[-1])``.

    Args:
        in_features: ``C S S``; dims: the layers' widths (``mask_mlp_dims``); rng: weights
            (torch's Linear default).
    """

    def __init__(self, in_features: int, dims, rng: np.random.Generator):
        named, d = [], in_features
        for i, width in enumerate(dims, 1):
            named += [(f"mask_fc{i}", nn.Linear(d, width, rng=rng)), (f"relu{i}", nn.ReLU())]
            d = width
        super().__init__(named)

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """Nothing: the Linear layers keep torch's default init (the constructor's)."""

    def forward(self, x):
        h, layers = super().forward(x.reshape(x.shape[0], -1))  # (R, C S S) -> (R, d)
        return h, MLPHeadCache(x.shape, layers)

    def backward(self, dy, cache: MLPHeadCache):
        return super().backward(dy, cache.layers).reshape(cache.input_shape)


class MLPPredictorCache(NamedTuple):
    """What :meth:`MaskRCNNMLPPredictor.backward` reads: the layer's cache."""

    mask_fc_logits: object


class MaskRCNNMLPPredictor(Module):
    """One Linear layer to ``num_classes M M`` logits, reshaped to ``(R, num_classes, M, M)``
    (Table 2e's predictor). Parameters ``mask_fc_logits`` (torch's Linear default init).

    Args:
        in_features: d; num_classes: K + 1 (2 class-agnostic); mask_size: M; rng: weights.
    """

    def __init__(self, in_features: int, num_classes: int, mask_size: int,
                 rng: np.random.Generator):
        self.mask_size = mask_size
        self.mask_fc_logits = nn.Linear(in_features, num_classes * mask_size * mask_size, rng=rng)

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """Nothing: torch's Linear default init (the constructor's)."""

    def output_size(self, pooled_size: int) -> int:
        """M, whatever the input: ``mask_size``."""
        return self.mask_size

    def forward(self, x):
        m = self.mask_size
        logits, c = self.mask_fc_logits.forward(x)  # (R, k1 M M)
        return logits.reshape(x.shape[0], -1, m, m), MLPPredictorCache(c)

    def backward(self, dy, cache: MLPPredictorCache):
        return self.mask_fc_logits.backward(dy.reshape(dy.shape[0], -1), cache.mask_fc_logits)


def build_mask_branch(cfg, rng: np.random.Generator):
    """``(mask_roi_pool, mask_head, mask_predictor)`` of ``cfg``: the ``mask_roi_size`` pooler
    of ``roi_op``; :class:`MaskRCNNHeads` + :class:`MaskRCNNPredictor` (the FCN), or with
    ``mask_head_type="mlp"`` :class:`MaskRCNNMLPHead` + :class:`MaskRCNNMLPPredictor`; K + 1
    output channels, 2 with ``mask_class_agnostic``.

    torchvision initialises each part in its constructor; here both parts are built first
    (torch's default init) and then re-initialised, head then predictor, the order in which the
    first versions drew from ``rng``: a seed gives the same weights as it always did.
    """
    k1 = (1 if cfg.mask_class_agnostic else cfg.num_classes) + 1
    pool = ops.MultiScaleRoIPooler(cfg.mask_roi_size, cfg.mask_sampling_ratio,
                                   pooler_type=cfg.roi_op, aligned=cfg.roi_aligned,
                                   canonical_scale=cfg.canonical_scale,
                                   canonical_level=cfg.canonical_level)
    if cfg.mask_head_type == "mlp":
        s = cfg.mask_roi_size
        head = MaskRCNNMLPHead(cfg.fpn_channels * s * s, cfg.mask_mlp_dims, rng)
        predictor = MaskRCNNMLPPredictor(cfg.mask_mlp_dims[-1], k1, cfg.mask_size, rng)
    else:
        width = cfg.mask_head_channels
        head = MaskRCNNHeads(cfg.fpn_channels, (width,) * cfg.mask_head_convs, rng)
        predictor = MaskRCNNPredictor(width, width, k1, rng)
    head.reset_parameters(rng)
    predictor.reset_parameters(rng)
    return pool, head, predictor


# --------------------------------------------------------------------------------------------
# targets, loss, inference (not differentiated, except the loss's gradient)


def mask_targets(rois, matched_idxs, gt_masks, M: int, dtype):
    """The mask target of each foreground RoI (torchvision ``maskrcnn_loss``'s
    ``project_masks_on_boxes``: the matched gt mask RoIAligned into the RoI at ``M x M``, soft).

    Args:
        rois, matched_idxs: per image, the ``(Rf_i, 4)`` foreground RoIs and their ``(Rf_i,)``
            matched ground truths (:class:`~minimaskrcnn.model.roi_heads.ForegroundRoIs`).
        gt_masks: per image ``(G_i, h_i, w_i)`` uint8.
        M: the mask size; dtype: the targets' dtype.

    Returns:
        ``(Rf, M, M)`` targets of ``dtype``, on the RoIs' device.
    """
    xp = get_array_module(*rois)
    targets = []
    for r, m, masks in zip(rois, matched_idxs, gt_masks, strict=True):
        if r.shape[0]:
            targets.append(ops.project_masks_on_boxes(masks, r, m, M).astype(dtype))
    return xp.concatenate(targets) if targets else xp.zeros((0, M, M), dtype)


def maskrcnn_loss(mask_logits, labels, mask_targets, num_fg, mode):
    """The mask loss and its gradient (torchvision ``maskrcnn_loss``).

    Args:
        mask_logits: ``(Rf, K+1, M, M)``; labels: ``(Rf,)`` int64, the predictor channel of each
            RoI in 1..K (its class, or 1 for class-agnostic masks); mask_targets:
            ``(Rf, M, M)``.
        num_fg: the normaliser, the foreground RoIs of the whole batch (over every
            data-parallel rank).
        mode: ``"sigmoid"`` or ``"softmax"`` (:func:`minimaskrcnn.ops.mask_loss`).

    Returns:
        ``(loss_mask, d_mask_logits)``: the sum over the Rf M M pixels / (num_fg M M), a Python
        float; its gradient ``(Rf, K+1, M, M)`` (of a weight-1 loss, zero on channel 0). No
        foreground RoI: ``(0.0, zeros)`` (torchvision: ``mask_logits.sum() * 0``).
    """
    xp = get_array_module(mask_logits)
    d_mask = xp.zeros_like(mask_logits)
    if labels.shape[0] == 0:
        return 0.0, d_mask
    loss, d_fg = ops.mask_loss(mask_logits[:, 1:], xp.asarray(labels), mask_targets, mode=mode)
    share = labels.shape[0] / num_fg  # 1 in one process: the mean over the local RoIs
    d_mask[:, 1:] = d_fg if share == 1 else d_fg * d_fg.dtype.type(share)
    return float(loss) * share, d_mask


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


def maskrcnn_inference(mask_logits, labels, mode):
    """The mask probabilities of each image's detections (torchvision ``maskrcnn_inference``).

    Args:
        mask_logits: ``(D_all, K+1, M, M)``, every image's detections in order.
        labels: per image ``(D_i,)`` int64, the predictor channel of each detection.
        mode: as :func:`mask_probabilities`.

    Returns:
        per image ``(D_i, M, M)`` float32 probabilities (pasted into the image by
        :meth:`GeneralizedRCNNTransform.postprocess
        <minimaskrcnn.model.transform.GeneralizedRCNNTransform.postprocess>`).
    """
    xp = get_array_module(mask_logits)
    m = mask_logits.shape[-1]
    out, start = [], 0
    for lab in labels:
        n = lab.shape[0]
        out.append(mask_probabilities(mask_logits[start:start + n], lab, mode).astype(np.float32)
                   if n else xp.zeros((0, m, m), np.float32))
        start += n
    return out
