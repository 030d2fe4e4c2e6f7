"""ReLU, Linear, Flatten, GroupNorm, MaxPool2d, Upsample, Sequential: golden values worked out
by hand, float64 gradient checks, float32 preservation and clear errors."""

import numpy as np
import pytest

from minimaskrcnn.nn import (
    Flatten,
    GroupNorm,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Upsample,
)
from minimaskrcnn.testing.gradcheck import check_layer


def distinct(rng, shape, gap=1e-3):
    """Values with no ties and no value within ``gap`` of 0 or of each other (kinks)."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2 + 0.5) * 0.01
    v[np.abs(v) < gap] += 0.005
    return v.reshape(shape)


def test_relu_golden_and_gradcheck(rng):
    y, cache = ReLU().forward(np.array([-2.0, 0.0, 3.0]))
    np.testing.assert_array_equal(y, [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(ReLU().backward(np.array([5.0, 5.0, 5.0]), cache), [0, 0, 5])
    check_layer(ReLU(), distinct(rng, (2, 3, 4, 5)), seeds=(0,))


def test_linear_golden_and_gradcheck(rng):
    layer = Linear(2, 1).astype(np.float64)
    layer.weight.data[...] = [[2.0, -1.0]]
    layer.bias.data[...] = 0.5
    y, _ = layer.forward(np.array([[1.0, 3.0]]))
    np.testing.assert_array_equal(y, [[2.0 - 3.0 + 0.5]])
    check_layer(Linear(5, 3, rng=rng), rng.standard_normal((4, 5)), seeds=(0, 1))
    check_layer(Linear(5, 3, bias=False, rng=rng), rng.standard_normal((2, 3, 5)), directions=3)


def test_linear_rows_on_host_threads(monkeypatch, rng):
    """A large 2-D forward splits its rows over the host threads (spied): the float64 result
    equals x @ W^T + b, the float32 one the one-thread result to float summation order; the
    same thread count gives the same bits; small inputs stay one product."""
    import minimaskrcnn.nn.linear as linear_module

    calls = []
    real_map_chunks = linear_module.map_chunks

    def spy(fn, n, threads, min_chunk=1):
        calls.append((n, threads))
        return real_map_chunks(fn, n, threads, min_chunk)

    monkeypatch.setattr(linear_module, "map_chunks", spy)
    monkeypatch.setattr(linear_module, "PARALLEL_MIN_MACS", 1000)
    monkeypatch.setattr(linear_module, "PARALLEL_MIN_ROWS", 4)
    monkeypatch.delenv("MINIMASKRCNN_TIER", raising=False)
    layer = Linear(30, 7, rng=rng)
    x = rng.standard_normal((21, 30)).astype(np.float32)
    monkeypatch.setenv("MINIMASKRCNN_THREADS", "1")
    serial, _ = layer.forward(x)
    assert not calls
    monkeypatch.setenv("MINIMASKRCNN_THREADS", "3")
    threaded, _ = layer.forward(x)
    assert calls == [(21, 3)]
    np.testing.assert_allclose(threaded, serial, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.forward(x)[0], threaded)
    layer64 = Linear(30, 7, rng=rng).astype(np.float64)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer64.forward(x64)[0],
                               x64 @ layer64.weight.data.T + layer64.bias.data, rtol=1e-12)
    calls.clear()
    layer.forward(x[:3])  # 3 * 210 multiply-adds: below the threshold
    assert not calls


def test_flatten_roundtrip(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y, cache = Flatten().forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(Flatten().backward(y, cache), x)
    check_layer(Flatten(), x, directions=2)


def test_groupnorm_golden():
    # one group of the values [1, 2, 3, 4]: mean 2.5, biased var 1.25
    gn = GroupNorm(1, 2, eps=0.0).astype(np.float64)
    gn.weight.data[...] = [1.0, 2.0]
    gn.bias.data[...] = [0.0, 1.0]
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2)
    y, _ = gn.forward(x)
    z = (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(y.ravel(), [z[0], z[1], 2 * z[2] + 1, 2 * z[3] + 1], rtol=1e-14)


@pytest.mark.parametrize("groups, channels, shape", [
    (1, 4, (2, 4, 3, 3)), (2, 4, (3, 4, 5, 2)), (4, 4, (1, 4, 3, 1)), (3, 6, (2, 6, 7))])
def test_groupnorm_gradcheck(groups, channels, shape):
    rng = np.random.default_rng(groups)
    gn = GroupNorm(groups, channels)
    gn.weight.data[...] = rng.uniform(0.5, 1.5, channels)
    gn.bias.data[...] = rng.standard_normal(channels)
    check_layer(gn, rng.standard_normal(shape) * 3 + 1, directions=4, seeds=(0, 1, 2))


def test_groupnorm_float32_and_errors(rng):
    gn = GroupNorm(2, 4)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y, cache = gn.forward(x)
    assert y.dtype == gn.backward(y, cache).dtype == np.float32
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 4.*\(N, 4, \*\).*\(2, 3, 5, 5\)"):
        gn.forward(np.zeros((2, 3, 5, 5), np.float32))


def test_maxpool_golden():
    x = np.array([[1.0, 5.0, 2.0, 0.0],
                  [3.0, 4.0, 8.0, 7.0],
                  [0.0, 1.0, 2.0, 3.0],
                  [9.0, 6.0, 4.0, 5.0]]).reshape(1, 1, 4, 4)
    pool = MaxPool2d(2)
    y, cache = pool.forward(x)
    np.testing.assert_array_equal(y[0, 0], [[5.0, 8.0], [9.0, 5.0]])
    dx = pool.backward(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2), cache)
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 2], expected[3, 0], expected[3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expected)
    # FPN P6: kernel 1 stride 2 keeps every other pixel
    y6, _ = MaxPool2d(1, 2).forward(x)
    np.testing.assert_array_equal(y6[0, 0], [[1.0, 2.0], [0.0, 2.0]])


@pytest.mark.parametrize("k, s, p, shape", [
    (2, 2, 0, (2, 2, 4, 6)), (3, 2, 1, (1, 2, 7, 5)), (1, 2, 0, (2, 3, 5, 5)),
    (3, 1, 1, (1, 1, 4, 4)), ((2, 3), (1, 2), 0, (2, 1, 5, 7))])
def test_maxpool_gradcheck(k, s, p, shape):
    rng = np.random.default_rng(7)
    check_layer(MaxPool2d(k, s, p), distinct(rng, shape), seeds=(0, 1))


def test_upsample_golden():
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    y, cache = Upsample(scale_factor=2).forward(x)
    np.testing.assert_array_equal(y[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4],
                                            [3, 3, 4, 4]])
    np.testing.assert_array_equal(Upsample(scale_factor=2).backward(np.ones((1, 1, 4, 4)), cache),
                                  np.full((1, 1, 2, 2), 4.0))
    # to a size: 2 -> 3 reads floor(i * 2/3) = [0, 0, 1]; 2 -> 5 reads floor(i * 0.4) = 0,0,0,1,1
    y, _ = Upsample(size=(3, 5)).forward(x)
    np.testing.assert_array_equal(y[0, 0], [[1, 1, 1, 2, 2], [1, 1, 1, 2, 2], [3, 3, 3, 4, 4]])


@pytest.mark.parametrize("kwargs, shape", [
    ({"scale_factor": 2}, (2, 2, 3, 4)), ({"scale_factor": (3, 1)}, (1, 2, 2, 3)),
    ({"size": (5, 7)}, (2, 1, 3, 4)), ({"size": 4}, (1, 2, 4, 3))])
def test_upsample_gradcheck(kwargs, shape):
    rng = np.random.default_rng(8)
    check_layer(Upsample(**kwargs), rng.standard_normal(shape), seeds=(0, 1))


def test_sequential_names_and_gradcheck(rng):
    net = Sequential(Linear(4, 6, rng=rng), ReLU(), Identity(), Linear(6, 2, rng=rng))
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    check_layer(net, rng.standard_normal((3, 4)), directions=4)


def test_rank_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(N, C, H, W\).*\(4, 4\)"):
        MaxPool2d(2).forward(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear.*\(\*, 5\).*\(2, 4\)"):
        Linear(5, 3).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Upsample"):
        Upsample(scale_factor=1.5)


@pytest.mark.parametrize("make, shape, out_shape", [
    (lambda: GroupNorm(2, 4), (0, 4, 5, 5), (0, 4, 5, 5)),
    (lambda: Linear(6, 3), (0, 6), (0, 3)),
    (lambda: MaxPool2d(1, 2), (0, 3, 4, 4), (0, 3, 2, 2)),
    (lambda: Upsample(scale_factor=2), (0, 3, 2, 2), (0, 3, 4, 4)),
    (lambda: Flatten(), (0, 3, 2, 2), (0, 12)),
    (lambda: ReLU(), (0, 5), (0, 5)),
])
def test_empty_batch(make, shape, out_shape):
    layer = make()
    x = np.zeros(shape, np.float32)
    y, cache = layer.forward(x)
    assert y.shape == out_shape and y.dtype == np.float32
    dx = layer.backward(y, cache)
    assert dx.shape == shape and dx.dtype == np.float32
    assert all(not p.grad.any() for p in layer.parameters())
