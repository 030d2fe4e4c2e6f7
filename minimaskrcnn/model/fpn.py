"""Feature pyramid network (Lin et al. 2017; torchvision ``ops.FeaturePyramidNetwork`` with
``LastLevelMaxPool``).

Shape shorthand: N images, C the FPN width (64 for ``nuclei-mini``), C2..C5 the backbone maps at
strides 4..32.

    inner_5 = lateral_5(C5)                              1x1 conv with bias
    inner_l = lateral_l(C_l) + upsample_nearest(inner_{l+1})   l = 4, 3, 2
    P_l = output_l(inner_l)                              3x3 conv with bias
    P6 = P5[:, :, ::2, ::2]                              max pool kernel 1 stride 2 (RPN only)

Init as torchvision: Kaiming uniform (a=1) weights, zero bias.

Built on ``[C5]`` alone with ``p6=False`` it is the single-level neck of ``features="c5"`` (the
paper's ResNet-C5 rows of Table 2d): ``P5 = output_5(lateral_5(C5))``, one stride-32 map.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.backend import get_array_module
from minimaskrcnn.model.stage import Stage
from minimaskrcnn.nn import init


class FPNCache(NamedTuple):
    """Per level (finest first): the lateral 1x1 convs' caches, the output 3x3 convs' caches and
    the nearest-upsampling caches (``None`` for the coarsest level); the shape of P5."""

    inner: list
    layer: list
    upsample: list
    p5_shape: tuple


class FPN(Stage):
    """``forward([C2..C5])`` -> ``([P2, P3, P4, P5, P6], cache)``, each ``(N, C, H_l, W_l)``;
    ``backward([dP2..dP6], cache)`` -> ``[dC2..dC5]`` (a ``dP`` may be ``None``).
    ``C_k`` and ``P_k`` have stride ``2**k`` pixels (P6: P5 max-pooled with kernel 1, stride 2); arrays in the
    parameters' dtype (float32). Errors: as :class:`~minimaskrcnn.nn.Conv2d`.

    ``in_channels`` has one width per input map (finest first); ``p6=False`` leaves P6 out
    (``features="c5"``: ``FPN([C5 width], C, rng, p6=False)`` maps ``[C5]`` to ``[P5]``)."""

    def __init__(self, in_channels, channels: int, rng: np.random.Generator, *, p6: bool = True):
        self.p6 = bool(p6)
        self.inner_blocks = [nn.Conv2d(c, channels, 1, rng=rng) for c in in_channels]
        self.layer_blocks = [nn.Conv2d(channels, channels, 3, padding=1, rng=rng)
                             for _ in in_channels]
        for conv in self.inner_blocks + self.layer_blocks:
            init.kaiming_uniform_(conv.weight, rng, a=1)
            init.zeros_(conv.bias)

    def forward(self, feats):
        n_lvl = len(feats)
        inner_caches, layer_caches, up_caches = [None] * n_lvl, [None] * n_lvl, [None] * n_lvl
        outs = [None] * n_lvl
        inner, inner_caches[-1] = self.inner_blocks[-1].forward(feats[-1])
        outs[-1], layer_caches[-1] = self.layer_blocks[-1].forward(inner)
        for i in range(n_lvl - 2, -1, -1):
            lateral, inner_caches[i] = self.inner_blocks[i].forward(feats[i])
            top_down, up_caches[i] = nn.upsample_nearest(inner, lateral.shape[-2:])
            inner = lateral + top_down
            outs[i], layer_caches[i] = self.layer_blocks[i].forward(inner)
        cache = FPNCache(inner_caches, layer_caches, up_caches, outs[-1].shape)
        if not self.p6:
            return outs, cache
        xp = get_array_module(outs[-1])
        p6 = xp.ascontiguousarray(outs[-1][:, :, ::2, ::2])  # max pool k1 s2 (torchvision LastLevelMaxPool)
        return outs + [p6], cache

    def backward(self, d_outs, cache: FPNCache, loss_weights=None):
        """``[dP2..dP6]`` -> ``[dC2..dC5]`` (no losses here: ``loss_weights`` is unused)."""
        inner_caches, layer_caches, up_caches, p5_shape = cache
        n_lvl = len(self.inner_blocks)
        d_outs = list(d_outs)
        d_p6 = d_outs[n_lvl] if len(d_outs) > n_lvl else None
        if d_p6 is not None:
            xp = get_array_module(d_p6)
            d_p5 = xp.zeros(p5_shape, d_p6.dtype) if d_outs[n_lvl - 1] is None else d_outs[n_lvl - 1].copy()
            d_p5[:, :, ::2, ::2] += d_p6
            d_outs[n_lvl - 1] = d_p5
        # reverse of the top-down pass, finest level first:
        # d inner_i = output_i^T dP_i + upsample^T(d inner_{i-1}); d C_i = lateral_i^T d inner_i
        d_feats = [None] * n_lvl
        d_from_finer = None
        for i in range(n_lvl):
            d = self.layer_blocks[i].backward(d_outs[i], layer_caches[i])
            if d_from_finer is not None:
                d = d + d_from_finer
            d_feats[i] = self.inner_blocks[i].backward(d, inner_caches[i])
            if i < n_lvl - 1:
                d_from_finer = nn.upsample_nearest_backward(d, up_caches[i])
        return d_feats
