"""ResNet-style backbone with GroupNorm (paper section 3, "Network Architecture"; Wu & He 2018
for GroupNorm; torchvision ``resnet.BasicBlock`` with ``norm_layer=GroupNorm``).

Shape shorthand: N images, input ``(N, 3, H, W)`` with H and W multiples of 32.

Layout (``nuclei-mini``: stem 32, stages 32, 64, 128, 256, one block each)::

    stem: conv3x3 s2 (3 -> 32), GN, ReLU                         (N, 32, H/2, W/2)
    layer1: BasicBlock s2 -> C2 (N, 32, H/4, W/4)
    layer2: BasicBlock s2 -> C3 (N, 64, H/8, W/8)
    layer3: BasicBlock s2 -> C4 (N, 128, H/16, W/16)
    layer4: BasicBlock s2 -> C5 (N, 256, H/32, W/32)

A basic block is conv3x3(s)-GN-ReLU-conv3x3-GN plus a shortcut conv1x1(s)-GN (when the stride or
the width changes), added, then ReLU. Convolutions have no bias; GroupNorm has 8 groups,
weight 1, bias 0. Conv init: Kaiming normal, fan_out, ReLU gain (torchvision's ResNet init).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.model.stage import Stage
from minimaskrcnn.nn import init
from minimaskrcnn.nn.module import Module, Sequential


def _conv(cin, cout, k, stride, rng):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, rng=rng)
    init.kaiming_normal_(conv.weight, rng, mode="fan_out", nonlinearity="relu")
    return conv


class BasicBlockCache(NamedTuple):
    """Each layer's cache of a :class:`BasicBlock` (``downsample``: the shortcut's)."""

    conv1: object
    gn1: object
    relu1: object
    conv2: object
    gn2: object
    downsample: object
    relu2: object


class BasicBlock(Module):
    """``(N, cin, H, W)`` -> ``(N, cout, H/s, W/s)`` (``s`` the stride), in the parameters'
    dtype (float32); see the module docstring. Errors: as :class:`~minimaskrcnn.nn.Conv2d`."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, rng: np.random.Generator):
        self.conv1 = _conv(cin, cout, 3, stride, rng)
        self.gn1 = nn.GroupNorm(groups, cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(cout, cout, 3, 1, rng)
        self.gn2 = nn.GroupNorm(groups, cout)
        if stride != 1 or cin != cout:
            self.downsample = Sequential(_conv(cin, cout, 1, stride, rng), nn.GroupNorm(groups, cout))
        else:
            self.downsample = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        h, c1 = self.conv1.forward(x)
        h, g1 = self.gn1.forward(h)
        h, r1 = self.relu1.forward(h)
        h, c2 = self.conv2.forward(h)
        h, g2 = self.gn2.forward(h)
        s, cs = self.downsample.forward(x)
        y, r2 = self.relu2.forward(h + s)
        return y, BasicBlockCache(c1, g1, r1, c2, g2, cs, r2)

    def backward(self, dy, cache: BasicBlockCache):
        dy = self.relu2.backward(dy, cache.relu2)
        dx = self.downsample.backward(dy, cache.downsample)
        dh = self.gn2.backward(dy, cache.gn2)
        dh = self.conv2.backward(dh, cache.conv2)
        dh = self.relu1.backward(dh, cache.relu1)
        dh = self.gn1.backward(dh, cache.gn1)
        return dx + self.conv1.backward(dh, cache.conv1)


class BackboneCache(NamedTuple):
    """The stem's conv, GroupNorm and ReLU caches, and each stage's (``Sequential``) cache."""

    conv1: tuple
    gn1: tuple
    relu: object
    stages: list


class ResNetGN(Stage):
    """Stem and stages; ``forward(x)`` returns ``([C2, C3, C4, C5], cache)`` and
    ``backward([dC2, .., dC5], cache)`` returns ``dx`` (any dC may be ``None``: no gradient).
    ``x (N, 3, H, W)`` float32 (the parameters' dtype); ``C_k`` has stride ``2**k`` pixels.
    Errors: as :class:`~minimaskrcnn.nn.Conv2d` (``ValueError`` shape, ``TypeError`` dtype)."""

    def __init__(self, stem_channels, stage_channels, blocks_per_stage, groups, rng):
        self.conv1 = _conv(3, stem_channels, 3, 2, rng)
        self.gn1 = nn.GroupNorm(groups, stem_channels)
        self.relu = nn.ReLU()
        cin = stem_channels
        self.layers = []
        for cout, blocks in zip(stage_channels, blocks_per_stage, strict=True):
            stage = [BasicBlock(cin, cout, 2, groups, rng)]
            stage += [BasicBlock(cout, cout, 1, groups, rng) for _ in range(blocks - 1)]
            self.layers.append(Sequential(*stage))
            cin = cout
        self.out_channels = tuple(stage_channels)

    def forward(self, x):
        h, c1 = self.conv1.forward(x)
        h, c2 = self.gn1.forward(h)
        h, c3 = self.relu.forward(h)
        outs, caches = [], []
        for layer in self.layers:
            h, c = layer.forward(h)
            outs.append(h)
            caches.append(c)
        return outs, BackboneCache(c1, c2, c3, caches)

    def backward(self, d_outs, cache: BackboneCache, loss_weights=None):
        """``[dC2..dC5]`` -> d images ``(N, 3, H, W)`` (no losses here)."""
        dh = None
        for layer, d_out, c in zip(reversed(self.layers), reversed(d_outs),
                                   reversed(cache.stages), strict=True):
            if d_out is not None:
                dh = d_out if dh is None else dh + d_out
            dh = layer.backward(dh, c)
        dh = self.relu.backward(dh, cache.relu)
        dh = self.gn1.backward(dh, cache.gn1)
        return self.conv1.backward(dh, cache.conv1)
