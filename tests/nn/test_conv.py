"""Conv2d / ConvTranspose2d: forward against nested loops, float64 gradient checks, errors."""

import numpy as np
import pytest

from minimaskrcnn.nn import Conv2d, ConvTranspose2d
from minimaskrcnn.nn.conv_reference import conv2d_reference, conv2d_reference_backward
from minimaskrcnn.testing.gradcheck import check_layer


def conv2d_loops(x, w, b, stride, padding, dilation):
    """Direct definition: y[n,o,i,j] = b[o] + sum_{c,a,q} w[o,c,a,q] x[n,c,i*s+a*d-p, j*s+q*d-p]."""
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    s = 0.0 if b is None else b[o]
                    for c in range(C):
                        for a in range(kh):
                            for q in range(kw):
                                r, col = i * sh + a * dh - ph, j * sw + q * dw - pw
                                if 0 <= r < H and 0 <= col < W:
                                    s += w[o, c, a, q] * x[n, c, r, col]
                    y[n, o, i, j] = s
    return y


def conv_transpose2d_loops(x, w, b, stride, padding, output_padding, dilation):
    """Scatter definition: every input pixel adds w[c, o] * x into its output window."""
    N, C, H, W = x.shape
    _, O, kh, kw = w.shape
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = stride, padding, output_padding, dilation
    Ho = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oh + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (kw - 1) + ow + 1
    y = np.zeros((N, O, Ho, Wo)) + (0 if b is None else b[None, :, None, None])
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    for a in range(kh):
                        for q in range(kw):
                            r, col = i * sh + a * dh - ph, j * sw + q * dw - pw
                            if 0 <= r < Ho and 0 <= col < Wo:
                                y[n, :, r, col] += w[c, :, a, q] * x[n, c, i, j]
    return y


CONV_CASES = [
    # (C, O, k, stride, padding, dilation, H, W, bias)
    (3, 4, 3, 1, 1, 1, 7, 6, True),
    (2, 3, 3, 2, 1, 1, 7, 8, True),
    (2, 3, 1, 1, 0, 1, 5, 4, False),
    (2, 3, 1, 2, 0, 1, 5, 5, True),
    (3, 2, 3, 1, 2, 2, 6, 7, True),
    (2, 2, (3, 2), (2, 1), (1, 0), (1, 2), 7, 6, True),
    (1, 2, 5, 3, 2, 1, 9, 8, False),
    (2, 3, 2, 1, 0, 1, 4, 5, True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_loops(case):
    C, O, k, s, p, d, H, W, bias = case
    rng = np.random.default_rng(1)
    layer = Conv2d(C, O, k, s, p, d, bias=bias, rng=rng).astype(np.float64)
    x = rng.standard_normal((2, C, H, W))
    y, _ = layer.forward(x)
    ref = conv2d_loops(x, layer.weight.data, None if not bias else layer.bias.data,
                       layer.stride, layer.padding, layer.dilation)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_reference_matches_loops_and_the_tuned_layer(case):
    """nn.conv_reference (the readable specification) equals the direct definition, and the
    tuned Conv2d equals it forward and backward (dx, dW, db) in float64 and float32."""
    C, O, k, s, p, d, H, W, bias = case
    rng = np.random.default_rng(4)
    layer = Conv2d(C, O, k, s, p, d, bias=bias, rng=rng).astype(np.float64)
    if bias:
        layer.bias.data[...] = rng.standard_normal(O)
    x = rng.standard_normal((2, C, H, W))
    b = layer.bias.data if bias else None
    args = (layer.stride, layer.padding, layer.dilation)
    ref = conv2d_reference(x, layer.weight.data, b, *args)
    np.testing.assert_allclose(ref, conv2d_loops(x, layer.weight.data, b, *args), rtol=1e-12,
                               atol=1e-12)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        lay = Conv2d(C, O, k, s, p, d, bias=bias, rng=rng).astype(dtype)
        lay.weight.data[...] = layer.weight.data
        if bias:
            lay.bias.data[...] = layer.bias.data
        xd = x.astype(dtype)
        y, cache = lay.forward(xd)
        np.testing.assert_allclose(y, conv2d_reference(xd, lay.weight.data,
                                                       lay.bias.data if bias else None, *args),
                                   rtol=tol, atol=tol)
        dy = rng.standard_normal(y.shape).astype(dtype)
        lay.zero_grad()
        dx = lay.backward(dy, cache)
        rdx, rdw, rdb = conv2d_reference_backward(dy, xd, lay.weight.data, *args)
        np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
        np.testing.assert_allclose(lay.weight.grad, rdw, rtol=tol, atol=tol * 10)
        if bias:
            np.testing.assert_allclose(lay.bias.grad, rdb, rtol=tol, atol=tol * 10)


def test_conv2d_golden_by_hand():
    # 1 channel, 3x3 input 1..9, 2x2 kernel [[1, 0], [0, -1]], no padding:
    # y[i, j] = x[i, j] - x[i+1, j+1] = -4 everywhere.
    layer = Conv2d(1, 1, 2, bias=False).astype(np.float64)
    layer.weight.data[...] = np.array([[1.0, 0.0], [0.0, -1.0]])
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    y, _ = layer.forward(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -4.0))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case):
    C, O, k, s, p, d, H, W, bias = case
    rng = np.random.default_rng(2)
    layer = Conv2d(C, O, k, s, p, d, bias=bias, rng=rng)
    check_layer(layer, rng.standard_normal((2, C, H, W)), directions=4)


def test_conv2d_gradcheck_full_small():
    rng = np.random.default_rng(3)
    layer = Conv2d(2, 2, 3, stride=2, padding=1, rng=rng)
    check_layer(layer, rng.standard_normal((2, 2, 5, 4)), seeds=(0,))


TRANSPOSE_CASES = [
    # (C, O, k, stride, padding, output_padding, dilation, H, W, bias)
    (3, 2, 2, 2, 0, 0, 1, 3, 4, True),       # the mask head's 2x upsampling
    (2, 3, 3, 1, 1, 0, 1, 4, 3, True),
    (2, 2, 3, 2, 1, 1, 1, 3, 3, False),
    (2, 2, 3, 2, 0, 0, 2, 3, 2, True),
    (2, 3, 3, 3, 0, 0, 1, 2, 3, True),       # kernel = stride 3: the windows tile the output
    (2, 2, 2, 2, 0, 1, 1, 3, 3, True),       # kernel = stride, output_padding: they do not
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose2d_forward_and_gradcheck(case):
    C, O, k, s, p, op, d, H, W, bias = case
    rng = np.random.default_rng(4)
    layer = ConvTranspose2d(C, O, k, s, p, op, d, bias=bias, rng=rng).astype(np.float64)
    x = rng.standard_normal((2, C, H, W))
    y, _ = layer.forward(x)
    ref = conv_transpose2d_loops(x, layer.weight.data, layer.bias.data if bias else None,
                                 layer.stride, layer.padding, layer.output_padding,
                                 layer.dilation)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    check_layer(layer, x, directions=4)


def test_conv_transpose_k2s2_golden():
    # one input pixel of value 2, weight arange(4): the output 2x2 block is 2 * [[0, 1], [2, 3]]
    layer = ConvTranspose2d(1, 1, 2, stride=2, bias=False).astype(np.float64)
    layer.weight.data[...] = np.arange(4.0).reshape(1, 1, 2, 2)
    y, _ = layer.forward(np.full((1, 1, 1, 1), 2.0))
    np.testing.assert_array_equal(y[0, 0], [[0.0, 2.0], [4.0, 6.0]])


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for layer in (Conv2d(3, 4, 3, padding=1, rng=rng), Conv2d(3, 4, 1, stride=2, rng=rng),
                  ConvTranspose2d(3, 2, 2, 2, rng=rng)):
        y, cache = layer.forward(x)
        dx = layer.backward(np.ones_like(y), cache)
        assert y.dtype == dx.dtype == layer.weight.grad.dtype == np.float32


def test_two_forwards_then_two_backwards_accumulate():
    rng = np.random.default_rng(6)
    layer = Conv2d(2, 3, 3, padding=1, rng=rng).astype(np.float64)
    x1, x2 = rng.standard_normal((2, 1, 2, 4, 4))
    y1, c1 = layer.forward(x1)
    y2, c2 = layer.forward(x2)
    d1, d2 = layer.backward(np.ones_like(y1), c1), layer.backward(np.ones_like(y2), c2)
    g_both = layer.weight.grad.copy()
    layer.zero_grad()
    _, c1b = layer.forward(x1)
    np.testing.assert_array_equal(layer.backward(np.ones_like(y1), c1b), d1)
    g1 = layer.weight.grad.copy()
    layer.zero_grad()
    _, c2b = layer.forward(x2)
    np.testing.assert_array_equal(layer.backward(np.ones_like(y2), c2b), d2)
    np.testing.assert_allclose(g_both, g1 + layer.weight.grad, rtol=1e-12)
    np.testing.assert_array_equal(layer.bias.grad, np.full(3, 16.0))


def test_bad_input_errors_name_layer_and_shapes():
    layer = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 4.*\(N, 3, H, W\).*\(1, 2, 8, 8\)"):
        layer.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*\(3, 8, 8\)"):
        layer.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="too small"):
        layer.forward(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float64.*float32"):
        layer.forward(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*\(N, 4, H, W\)"):
        ConvTranspose2d(4, 2, 2, 2).forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="stride"):
        Conv2d(3, 4, 3, stride=0)


@pytest.mark.parametrize("layer, shape, out_shape", [
    (Conv2d(3, 4, 3, padding=1), (0, 3, 14, 14), (0, 4, 14, 14)),
    (Conv2d(3, 4, 1), (0, 3, 14, 14), (0, 4, 14, 14)),
    (Conv2d(3, 4, 3, stride=2, padding=1), (0, 3, 14, 14), (0, 4, 7, 7)),
    (ConvTranspose2d(3, 4, 2, 2), (0, 3, 14, 14), (0, 4, 28, 28)),
])
def test_empty_batch(layer, shape, out_shape):
    """Zero RoIs in the mask head: empty in, empty out, zero parameter gradients."""
    y, cache = layer.forward(np.zeros(shape, np.float32))
    assert y.shape == out_shape and y.dtype == np.float32
    dx = layer.backward(y, cache)
    assert dx.shape == shape
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_float32_matches_float64(rng):
    """Float32 end to end stays close to the float64 result (no precision surprise)."""
    x = rng.standard_normal((2, 8, 33, 31))
    layer = Conv2d(8, 16, 3, padding=1, rng=rng)
    y32, c32 = layer.forward(x.astype(np.float32))
    dx32 = layer.backward(np.ones_like(y32), c32)
    layer.astype(np.float64)
    y64, c64 = layer.forward(x)
    dx64 = layer.backward(np.ones_like(y64), c64)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4)


def test_large_image_uses_row_blocks(monkeypatch, rng):
    """Bands of output rows (the large-image path) give the same result as the loops."""
    import minimaskrcnn.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "BLOCK_ELEMENTS", 64)   # forces 1-2 rows per block
    for stride in (1, 2):
        layer = Conv2d(2, 3, 3, stride=stride, padding=1, rng=rng).astype(np.float64)
        x = rng.standard_normal((2, 2, 7, 5))
        y, _ = layer.forward(x)
        ref = conv2d_loops(x, layer.weight.data, layer.bias.data, layer.stride, layer.padding,
                           layer.dilation)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        check_layer(layer, x, directions=3, seeds=(0,))


@pytest.mark.parametrize("block", [300, 2000])
def test_multi_image_blocks_with_partial_last_block(monkeypatch, block):
    """Several whole images per product, the last block shorter (5 images, 2 per block)."""
    import minimaskrcnn.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 2, 4, 5))
    for layer in (Conv2d(2, 3, 3, padding=1, rng=rng), Conv2d(2, 3, 3, stride=2, padding=1,
                                                              rng=rng)):
        layer.astype(np.float64)
        y, _ = layer.forward(x)
        ref = conv2d_loops(x, layer.weight.data, layer.bias.data, layer.stride, layer.padding,
                           layer.dilation)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        check_layer(layer, x, directions=3, seeds=(0,))
    convt = ConvTranspose2d(2, 3, 2, 2, rng=rng).astype(np.float64)
    y, _ = convt.forward(x)
    ref = conv_transpose2d_loops(x, convt.weight.data, convt.bias.data, convt.stride,
                                 convt.padding, convt.output_padding, convt.dilation)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    check_layer(convt, x, directions=3, seeds=(0,))


def test_forward_on_host_threads_is_bit_identical(monkeypatch):
    """The forward's blocks of ``cols`` (several images, bands of rows with and without the
    per-tap products, the transposed conv's depth-to-space) split over two host threads give
    the one-thread result bit for bit: the same products, written to disjoint spans."""
    import minimaskrcnn.nn.conv as conv_module

    calls = []
    real_map_chunks = conv_module.map_chunks

    def spy(fn, n, threads, min_chunk=1):
        calls.append((n, threads))
        return real_map_chunks(fn, n, threads, min_chunk)

    monkeypatch.setattr(conv_module, "map_chunks", spy)
    monkeypatch.setattr(conv_module, "BLOCK_ELEMENTS", 600)
    monkeypatch.delenv("MINIMASKRCNN_TIER", raising=False)
    rng = np.random.default_rng(12)
    cases = [(Conv2d(3, 5, 3, padding=1, rng=rng), (7, 3, 5, 6)),            # images per block
             (Conv2d(3, 5, 3, padding=1, rng=rng), (1, 3, 30, 20)),           # per-tap row bands
             (Conv2d(3, 5, 3, stride=2, padding=1, rng=rng), (2, 3, 30, 20)),  # strided bands
             (ConvTranspose2d(4, 3, 2, stride=2, rng=rng), (9, 4, 5, 6))]     # depth-to-space
    for layer, shape in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        monkeypatch.setenv("MINIMASKRCNN_THREADS", "1")
        serial, _ = layer.forward(x)
        monkeypatch.setenv("MINIMASKRCNN_THREADS", "2")
        calls.clear()
        threaded, _ = layer.forward(x)
        assert any(n >= 2 and threads == 2 for n, threads in calls), (layer, calls)
        np.testing.assert_array_equal(threaded, serial)
