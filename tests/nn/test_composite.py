"""The composite-module pattern of the package docstring: a residual BasicBlock built from the
layers, its parameter names, a float64 gradient check through both branches, and the Module
protocol (zero_grad, state_dict, astype, shared parameters)."""

import numpy as np
import pytest

from minimaskrcnn.nn import Conv2d, GroupNorm, Linear, Module, Param, ReLU, Sequential, add
from minimaskrcnn.testing.gradcheck import check_layer


class BasicBlock(Module):
    def __init__(self, cin, cout, stride, rng):
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False, rng=rng)
        self.gn1 = GroupNorm(2, cout)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False, rng=rng)
        self.gn2 = GroupNorm(2, cout)
        self.shortcut = Sequential(Conv2d(cin, cout, 1, stride, bias=False, rng=rng),
                                   GroupNorm(2, cout))
        self.relu2 = ReLU()

    def forward(self, x):
        h, c1 = self.conv1.forward(x)
        h, c2 = self.gn1.forward(h)
        h, c3 = self.relu1.forward(h)
        h, c4 = self.conv2.forward(h)
        h, c5 = self.gn2.forward(h)
        s, cs = self.shortcut.forward(x)
        y, _ = add(h, s)
        y, c6 = self.relu2.forward(y)
        return y, (c1, c2, c3, c4, c5, cs, c6)

    def backward(self, dy, cache):
        c1, c2, c3, c4, c5, cs, c6 = cache
        dy = self.relu2.backward(dy, c6)
        dx = self.shortcut.backward(dy, cs)
        dh = self.gn2.backward(dy, c5)
        dh = self.conv2.backward(dh, c4)
        dh = self.relu1.backward(dh, c3)
        dh = self.gn1.backward(dh, c2)
        return dx + self.conv1.backward(dh, c1)


def test_basic_block_names():
    block = BasicBlock(2, 4, 2, np.random.default_rng(0))
    assert [n for n, _ in block.named_parameters()] == [
        "conv1.weight", "gn1.weight", "gn1.bias", "conv2.weight", "gn2.weight", "gn2.bias",
        "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"]
    assert [n for n, _ in block.named_parameters("layer1.0")][0] == "layer1.0.conv1.weight"


@pytest.mark.parametrize("stride", [1, 2])
def test_basic_block_gradcheck(stride):
    rng = np.random.default_rng(stride)
    block = BasicBlock(2, 4, stride, rng)
    for _, p in block.named_parameters():
        if p.data.ndim == 1:   # GN affine away from 1/0 so every path matters
            p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    check_layer(block, rng.standard_normal((2, 2, 5, 6)), directions=6, seeds=(0, 1))


def test_shared_parameter_listed_once_and_grads_summed():
    class Tied(Module):
        def __init__(self):
            self.a = Linear(3, 3, bias=False, rng=np.random.default_rng(0))
            self.b = Linear(3, 3, bias=False, rng=np.random.default_rng(1))
            self.b.weight = self.a.weight          # tie

        def forward(self, x):
            h, ca = self.a.forward(x)
            y, cb = self.b.forward(h)
            return y, (ca, cb)

        def backward(self, dy, cache):
            return self.a.backward(self.b.backward(dy, cache[1]), cache[0])

    m = Tied()
    assert [n for n, _ in m.named_parameters()] == ["a.weight"]
    check_layer(m, np.random.default_rng(2).standard_normal((4, 3)), seeds=(0,))


def test_state_dict_zero_grad_astype():
    m = Sequential(Linear(2, 3, rng=np.random.default_rng(0)), ReLU())
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    m2 = Sequential(Linear(2, 3, rng=np.random.default_rng(5)), ReLU())
    m2.load_state_dict(sd)
    for (n, p), (_, q) in zip(m.named_parameters(), m2.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    y, c = m.forward(np.ones((1, 2), np.float32))
    m.backward(np.ones_like(y), c)
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())
    m.astype(np.float64)
    assert all(p.data.dtype == p.grad.dtype == np.float64 for p in m.parameters())
    with pytest.raises(ValueError, match="0.weight"):
        m2.load_state_dict({"0.weight": np.zeros((2, 2)), "0.bias": np.zeros(3)})
    with pytest.raises(KeyError, match="missing"):
        m2.load_state_dict({})
    assert isinstance(m.parameters()[0], Param)


def test_add_shape_mismatch():
    with pytest.raises(ValueError, match="add"):
        add(np.zeros((1, 2)), np.zeros((2, 1)))
