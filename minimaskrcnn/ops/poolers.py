"""Multi-scale RoI pooling over an FPN pyramid, with backward: :class:`MultiScaleRoIPooler` with
any of the paper's RoI ops, and :class:`MultiScaleRoIAlign` (torchvision.ops.MultiScaleRoIAlign),
its RoIAlign case.

Each RoI is assigned to one pyramid level by the FPN paper's equation (1) (Lin et al. 2017,
torchvision's ``LevelMapper``) and pooled from that level alone with the chosen RoI op
(RoIAlign, RoIAlign-max, RoIWarp avg/max or RoIPool: the Mask R-CNN paper's Table 2c/2d
ablations). The backward scatters each RoI's gradient back to the level it was pooled from.

Shapes: features ``[(N, C, H_l, W_l)]`` finest first (P2..P5), boxes ``(R, 5)`` or a list of
``(R_i, 4)`` in input pixels of the padded batch of size ``image_size = (H, W)``; output
``(R, C, Ph, Pw)`` in the input RoI order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn.ops._roi_common import (
    check_input,
    check_sampling_ratio,
    convert_boxes_to_rois,
    output_size_pair,
)
from minimaskrcnn.ops.roi_align import roi_align, roi_align_backward
from minimaskrcnn.ops.roi_pool import roi_pool, roi_pool_backward
from minimaskrcnn.ops.roi_warp import roi_warp, roi_warp_backward

ROI_OPS = ("align", "align_max", "warp_avg", "warp_max", "pool")
"""The pooler types of :class:`MultiScaleRoIPooler` (the paper's Table 2c): RoIAlign (avg, and
max over the bin's samples), RoIWarp (avg, max), RoIPool."""


class PoolerCache(NamedTuple):
    """What :meth:`MultiScaleRoIPooler.backward` reads.

    rois: ``(R, 5)`` the pooled RoIs (input dtype); index: per level, the ``(R_l,)`` int64 rows
    pooled from that level; scales: per level, cells per input pixel; shapes: per level,
    ``(N, C, H_l, W_l)``; argmax: per level, the ``(R_l, C, Ph, Pw)`` int64 argmax of the max-based
    ops (``None`` for the averaging ones and empty levels); tier: the forward's kernel tier,
    used again by the backward.
    """

    rois: object
    index: list
    scales: list
    shapes: list
    argmax: list
    tier: str | None


def _roi_op_pair(pooler_type: str, output_size, sampling_ratio: int, aligned: bool):
    """``(forward, backward)`` of one RoI op, its arguments bound; chosen once per pooler.

    ``forward(feat, rois, scale, tier) -> (out, argmax or None)``;
    ``backward(grad, rois, argmax, shape, scale, tier) -> grad of feat``.
    """
    if pooler_type == "pool":
        def forward(feat, rois, scale, tier):
            return roi_pool(feat, rois, output_size, scale, tier=tier, return_argmax=True)

        def backward(g, rois, argmax, shape, scale, tier):
            return roi_pool_backward(g, rois, shape, output_size, scale, argmax=argmax, tier=tier)

        return forward, backward
    mode = "max" if pooler_type.endswith("max") else "avg"
    if pooler_type.startswith("align"):
        op, op_backward, extra = roi_align, roi_align_backward, (aligned,)
    else:
        op, op_backward, extra = roi_warp, roi_warp_backward, ()

    def forward(feat, rois, scale, tier):
        return op(feat, rois, output_size, scale, sampling_ratio, *extra, mode=mode, tier=tier,
                  return_argmax=True)

    def backward(g, rois, argmax, shape, scale, tier):
        return op_backward(g, rois, shape, output_size, scale, sampling_ratio, *extra, mode=mode,
                           argmax=argmax, tier=tier)

    return forward, backward


def infer_scale(feature_height: int, image_height: int) -> float:
    """Scale of a level, snapped to a power of two: ``2 ** round(log2(H_l / H))`` (torchvision).

    Raises:
        ValueError: a non-positive height.
    """
    if feature_height <= 0 or image_height <= 0:
        raise ValueError(f"feature and image heights must be positive, got {feature_height}, "
                         f"{image_height}")
    return float(2.0 ** round(math.log2(feature_height / image_height)))


def map_levels(boxes, k_min: int, k_max: int, canonical_scale: float = 224,
               canonical_level: int = 4, eps: float = 1e-6):
    """FPN level of each box, as an index into the pyramid (0 for level ``k_min``).

    ``k = floor(k0 + log2(sqrt(area) / s0) + eps)`` clamped to ``[k_min, k_max]``, with
    ``k0 = canonical_level``, ``s0 = canonical_scale`` (FPN paper, eq. 1) -- torchvision's
    ``LevelMapper``, which adds ``eps`` after the logarithm; the issue's
    ``floor(k0 + log2(sqrt(area) / s0 + 1e-6))`` differs from it only for boxes within about
    1e-6 relative of a level boundary. Computed in the boxes' dtype, as torchvision does.
    A degenerate box with negative area (NaN size) goes to ``k_min`` (torchvision would leave
    its output row at zero).

    Args:
        boxes: ``(R, 4)`` ``[x1, y1, x2, y2]`` or ``(R, 5)`` ``[batch_idx, x1, y1, x2, y2]``,
            input pixels, float.
        k_min, k_max: levels of the finest and coarsest feature maps (2 and 5 for P2..P5).

    Returns:
        ``(R,)`` int64 level indices in ``[0, k_max - k_min]``.
    """
    xp = backend.get_array_module(boxes)
    b = boxes[:, -4:]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = xp.sqrt(area)
        k = xp.floor(canonical_level + xp.log2(s / b.dtype.type(canonical_scale))
                     + b.dtype.type(eps))
    k = xp.where(xp.isnan(k), k_min, k)
    k = xp.clip(k, k_min, k_max)
    return (k - k_min).astype(np.int64)


class MultiScaleRoIPooler:
    """Pool RoIs from the FPN level that fits their size, with any of the paper's RoI ops
    (torchvision ``MultiScaleRoIAlign`` generalised to Table 2c's ops).

    Args:
        output_size: ``Ph`` or ``(Ph, Pw)``.
        sampling_ratio: samples per bin per axis for the bilinear ops (``<= 0``: adaptive);
            ignored by ``"pool"``.
        pooler_type: one of :data:`ROI_OPS`: ``"align"`` (RoIAlign, ``aligned`` as given),
            ``"align_max"`` (RoIAlign-max: the largest bilinear sample of each bin),
            ``"warp_avg"`` / ``"warp_max"`` (RoIWarp, quantised box + bilinear, mean / max), or
            ``"pool"`` (RoIPool). The op's forward and backward are chosen once, here.
        aligned: RoIAlign's half-pixel shift (only for ``"align"`` and ``"align_max"``).
        canonical_scale, canonical_level: ``s0`` and ``k0`` of the level mapper (224, 4).

    Raises:
        ValueError: unknown ``pooler_type`` or bad ``output_size``.
    """

    def __init__(self, output_size, sampling_ratio=2, *, pooler_type="align", aligned=False,
                 canonical_scale=224, canonical_level=4):
        if pooler_type not in ROI_OPS:
            raise ValueError(f"pooler_type must be one of {ROI_OPS}, got {pooler_type!r}")
        self.output_size = output_size_pair(output_size)
        self.sampling_ratio = check_sampling_ratio(sampling_ratio)
        self.pooler_type = pooler_type
        self.aligned = bool(aligned)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self._forward, self._backward = _roi_op_pair(pooler_type, self.output_size,
                                                     self.sampling_ratio, self.aligned)

    def __repr__(self):
        return (f"{type(self).__name__}(output_size={self.output_size}, sampling_ratio="
                f"{self.sampling_ratio}, pooler_type={self.pooler_type!r}, aligned={self.aligned})")

    # ----------------------------------------------------------------------------------------

    def forward(self, features, boxes, image_size, *, tier=None):
        """Pool every RoI from its level.

        Args:
            features: list of ``L`` arrays ``(N, C, H_l, W_l)``, finest first, same N, C, dtype.
            boxes: ``(R, 5)`` ``[batch_idx, x1, y1, x2, y2]`` or a list of ``(R_i, 4)``, input
                pixels.
            image_size: ``(H, W)`` of the padded input batch (pixels).
            tier: kernel tier passed to the RoI op.

        Returns:
            ``(out, cache)``: ``out`` ``(R, C, Ph, Pw)`` in the input RoI order; ``cache`` a
            :class:`PoolerCache`.

        Raises:
            ValueError / TypeError: empty or inconsistent ``features``, bad boxes or image size.
        """
        if not isinstance(features, (list, tuple)) or len(features) == 0:
            raise ValueError("features must be a non-empty list of (N, C, H_l, W_l) arrays")
        features = [check_input(f"features[{i}]", f) for i, f in enumerate(features)]
        N, C = features[0].shape[:2]
        for i, f in enumerate(features):
            if f.shape[:2] != (N, C) or f.dtype != features[0].dtype:
                raise ValueError(f"features[{i}] has shape {tuple(f.shape)} and dtype {f.dtype}; "
                                 f"every level must have N={N}, C={C}, dtype {features[0].dtype}")
        if len(image_size) != 2 or min(image_size) <= 0:
            raise ValueError(f"image_size must be (H, W) > 0, got {image_size!r}")
        xp = backend.get_array_module(features[0])
        dtype = features[0].dtype
        rois = convert_boxes_to_rois(boxes, N, dtype, like=features[0])
        scales = [infer_scale(f.shape[2], int(image_size[0])) for f in features]
        k_min = round(-math.log2(scales[0]))
        k_max = round(-math.log2(scales[-1]))
        if len(features) == 1:
            levels = xp.zeros(rois.shape[0], dtype=np.int64)
        else:
            levels = map_levels(rois, k_min, k_max, self.canonical_scale, self.canonical_level)
        Ph, Pw = self.output_size
        out = xp.zeros((rois.shape[0], C, Ph, Pw), dtype=dtype)
        index, argmaxes = [], []
        for lvl, (feat, scale) in enumerate(zip(features, scales, strict=True)):
            idx = xp.nonzero(levels == lvl)[0]
            index.append(idx)
            argmaxes.append(None)
            if idx.size == 0:
                continue
            res, argmax = self._forward(feat, rois[idx], scale, tier)
            out[idx] = res
            argmaxes[lvl] = argmax
        return out, PoolerCache(rois, index, scales, [tuple(f.shape) for f in features], argmaxes,
                                tier)

    def backward(self, grad_out, cache: PoolerCache):
        """Gradient of :meth:`forward` w.r.t. each level: list of ``(N, C, H_l, W_l)`` arrays.

        Raises:
            ValueError: ``grad_out`` does not have one row per pooled RoI.
        """
        xp = backend.get_array_module(grad_out)
        rois = cache.rois
        if grad_out.shape[0] != rois.shape[0]:
            raise ValueError(f"grad_out must have {rois.shape[0]} rows (one per RoI), "
                             f"got shape {tuple(grad_out.shape)}")
        grads = []
        for lvl, shape in enumerate(cache.shapes):
            idx = cache.index[lvl]
            if idx.size == 0:
                grads.append(xp.zeros(shape, dtype=grad_out.dtype))
                continue
            g = xp.ascontiguousarray(grad_out[idx])
            grads.append(self._backward(g, rois[idx], cache.argmax[lvl], shape, cache.scales[lvl],
                                        cache.tier))
        return grads


class MultiScaleRoIAlign(MultiScaleRoIPooler):
    """torchvision's ``MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, *,
    canonical_scale=224, canonical_level=4)``: the :class:`MultiScaleRoIPooler` with RoIAlign.

    Without ``featmap_names``: the pyramid is a list, finest level first (torchvision takes a
    dict and the names of the maps to pool from). ``aligned`` is RoIAlign's half-pixel shift
    (torchvision's pooler always uses ``aligned=False``, the default here too).
    """

    def __init__(self, output_size, sampling_ratio=2, *, aligned=False, canonical_scale=224,
                 canonical_level=4):
        super().__init__(output_size, sampling_ratio, pooler_type="align", aligned=aligned,
                         canonical_scale=canonical_scale, canonical_level=canonical_level)
