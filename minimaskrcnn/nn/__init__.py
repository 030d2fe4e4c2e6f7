"""Neural-network layers with hand-written backward passes (NumPy or CuPy arrays).

The protocol (one for every layer, see :mod:`minimaskrcnn.nn.module`)::

    y, cache = layer.forward(x)      # nothing from this call is kept on the layer
    dx = layer.backward(dy, cache)   # adds dL/dparam into param.grad (+=), returns dL/dx
    layer.zero_grad()                # explicit, before the next accumulation
    for name, p in model.named_parameters(): ...   # "layer1.0.conv1.weight", p.data, p.grad

Layers: :class:`Conv2d`, :class:`ConvTranspose2d`, :class:`Linear`, :class:`ReLU`,
:class:`GroupNorm`, :class:`MaxPool2d`, :class:`Upsample` (nearest or bilinear), :class:`Flatten`,
:class:`Sequential`, :class:`Identity`, and :func:`add` for summing two branches. Initialisers
are in :mod:`minimaskrcnn.nn.init`, losses (each returning ``(loss, dloss_dinput)``) in
:mod:`minimaskrcnn.nn.losses`. Parameters are float32 and a layer refuses an input of another
dtype (``TypeError``); ``module.astype(np.float64)`` converts a whole model for gradient checks.

Composite modules. A module made of children assigns them as attributes (that is how
:meth:`Module.named_parameters` finds them), calls their ``forward`` in its own ``forward``
keeping every child's cache in its own cache tuple, and calls their ``backward`` in reverse
order. Where two branches meet (``add``), the backward sends the same ``dy`` into both and sums
the gradients where a tensor fed two branches. A ResNet basic block::

    class BasicBlock(Module):
        def __init__(self, cin, cout, stride, rng):
            self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False, rng=rng)
            self.gn1 = GroupNorm(8, cout)
            self.relu1 = ReLU()
            self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False, rng=rng)
            self.gn2 = GroupNorm(8, cout)
            self.shortcut = Sequential(Conv2d(cin, cout, 1, stride, bias=False, rng=rng),
                                       GroupNorm(8, cout))
            self.relu2 = ReLU()

        def forward(self, x):
            h, c1 = self.conv1.forward(x)
            h, c2 = self.gn1.forward(h)
            h, c3 = self.relu1.forward(h)
            h, c4 = self.conv2.forward(h)
            h, c5 = self.gn2.forward(h)
            s, cs = self.shortcut.forward(x)      # second branch from the same x
            y, _ = add(h, s)
            y, c6 = self.relu2.forward(y)
            return y, (c1, c2, c3, c4, c5, cs, c6)

        def backward(self, dy, cache):
            c1, c2, c3, c4, c5, cs, c6 = cache
            dy = self.relu2.backward(dy, c6)
            dx = self.shortcut.backward(dy, cs)   # add: both branches get dy
            dh = self.gn2.backward(dy, c5)
            dh = self.conv2.backward(dh, c4)
            dh = self.relu1.backward(dh, c3)
            dh = self.gn1.backward(dh, c2)
            return dx + self.conv1.backward(dh, c1)   # x fed both branches: sum

(the same block is gradient-checked in ``tests/nn/test_composite.py``).
"""

from minimaskrcnn.nn import init, losses
from minimaskrcnn.nn.activation import ReLU
from minimaskrcnn.nn.conv import Conv2d, ConvTranspose2d
from minimaskrcnn.nn.conv_reference import conv2d_reference, conv2d_reference_backward
from minimaskrcnn.nn.linear import Flatten, Linear
from minimaskrcnn.nn.module import Identity, Module, Param, Sequential, add
from minimaskrcnn.nn.norm import GroupNorm
from minimaskrcnn.nn.pooling import MaxPool2d
from minimaskrcnn.nn.upsample import Upsample, upsample_nearest, upsample_nearest_backward

__all__ = [
    "Conv2d", "ConvTranspose2d", "Flatten", "GroupNorm", "Identity", "Linear", "MaxPool2d",
    "Module", "Param", "ReLU", "Sequential", "Upsample", "add", "conv2d_reference",
    "conv2d_reference_backward", "init", "losses", "upsample_nearest", "upsample_nearest_backward",
]
