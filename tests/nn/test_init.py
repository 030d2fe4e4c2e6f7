"""Initialisers: PyTorch's fan and gain formulas (worked out by hand) and the drawn statistics."""

import math

import numpy as np
import pytest

from minimaskrcnn.nn import Conv2d, ConvTranspose2d, Linear, Param, init


def test_fans_and_gains_by_hand():
    assert init.calculate_fan_in_and_fan_out((64, 32, 3, 3)) == (32 * 9, 64 * 9)
    assert init.calculate_fan_in_and_fan_out((10, 20)) == (20, 10)
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 1e-4)))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("conv2d") == 1.0
    with pytest.raises(ValueError):
        init.calculate_fan_in_and_fan_out((5,))
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def test_kaiming_normal_fan_out_std():
    w = np.zeros((256, 64, 3, 3), np.float32)
    init.kaiming_normal_(w, np.random.default_rng(0), mode="fan_out", nonlinearity="relu")
    # std = sqrt(2) / sqrt(256 * 9) = 0.029462...
    assert w.dtype == np.float32
    assert w.std() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.01)
    assert abs(w.mean()) < 1e-3


def test_kaiming_uniform_bounds():
    w = Param(np.zeros((128, 50), np.float32))
    init.kaiming_uniform_(w, np.random.default_rng(1), a=1, mode="fan_in")
    bound = math.sqrt(2 / (1 + 1)) * math.sqrt(3 / 50)      # gain(leaky_relu, 1) = 1
    assert np.abs(w.data).max() <= bound
    assert np.abs(w.data).max() > 0.98 * bound
    assert w.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_normal_uniform_constants():
    rng = np.random.default_rng(2)
    a = init.normal_(np.zeros(100000), rng, std=0.01)
    assert a.std() == pytest.approx(0.01, rel=0.01)
    u = init.uniform_(np.zeros(1000), rng, -2, 3)
    assert u.min() >= -2 and u.max() < 3
    assert (init.ones_(np.zeros(3)) == 1).all() and (init.zeros_(np.ones(3)) == 0).all()
    with pytest.raises(TypeError, match="Generator"):
        init.normal_(np.zeros(3), 0)


def test_default_layer_init_matches_torch_bounds():
    conv = Conv2d(8, 16, 3, rng=np.random.default_rng(3))
    bound = 1 / math.sqrt(8 * 9)        # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
    assert np.abs(conv.weight.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.95 * bound
    assert np.abs(conv.bias.data).max() <= bound
    lin = Linear(30, 5, rng=np.random.default_rng(4))
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(30)
    convt = ConvTranspose2d(6, 4, 2, 2, rng=np.random.default_rng(5))
    assert np.abs(convt.bias.data).max() <= 1 / math.sqrt(4 * 4)   # torch: fan_in = O*kh*kw


def test_same_seed_same_weights():
    a = Conv2d(3, 4, 3, rng=np.random.default_rng(9))
    b = Conv2d(3, 4, 3, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(Conv2d(3, 4, 3, rng=7).bias.data,
                                  Conv2d(3, 4, 3, rng=7).bias.data)
    c = Conv2d(3, 4, 3, rng=np.random.default_rng(10))  # and another seed gives other weights
    assert not np.array_equal(a.weight.data, c.weight.data)
    assert not np.array_equal(Conv2d(3, 4, 3, rng=7).bias.data, Conv2d(3, 4, 3, rng=8).bias.data)
