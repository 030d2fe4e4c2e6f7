"""RoIWarp: definition checks, golden cases worked by hand, tiers vs reference, gradients."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimaskrcnn.ops import roi_align, roi_warp, roi_warp_backward
from minimaskrcnn.testing.gradcheck import gradcheck
from minimaskrcnn.testing.roi_cases import distinct_map, random_rois
from minimaskrcnn.testing.tiers import tier_params

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
ARANGE = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)  # value 5*y + x


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def quantise(rois, scale):
    """RoIPool's box, by a different route than the package: numpy, half away from zero."""
    q = np.sign(rois[:, 1:] * scale) * np.floor(np.abs(rois[:, 1:].astype(np.float64) * scale) + 0.5)
    w = np.maximum(q[:, 2] - q[:, 0] + 1, 1)
    h = np.maximum(q[:, 3] - q[:, 1] + 1, 1)
    return np.stack([rois[:, 0], q[:, 0], q[:, 1], q[:, 0] + w, q[:, 1] + h], axis=1)


def test_avg_golden_arange(tier):
    # [0.6, 0.6, 2.4, 2.4] rounds to cells 1..2 -> box [1, 3] x [1, 3] (2 cells). 4x4 bins of 0.5
    # with one sample each at 1.25, 1.75, 2.25, 2.75; the map is linear: value 5y + x.
    out = roi_warp(ARANGE, np.array([[0, 0.6, 0.6, 2.4, 2.4]], np.float32), 4, tier=tier)
    c = np.array([1.25, 1.75, 2.25, 2.75])
    np.testing.assert_allclose(out[0, 0], 5 * c[:, None] + c[None, :], rtol=1e-6)


def test_max_golden_arange_and_backward(tier):
    # Box [0.6, 0.6, 2.4, 2.4] quantises to cells 1..2, i.e. [1, 3] (note [1, 1, 3, 3] itself
    # would become cells 1..3: RoIPool's inclusive "+1"). 2x2 bins of 1 cell, 2x2 samples per bin
    # at +0.25 and +0.75: bin (0, 0) samples y, x in {1.25, 1.75}. 5y + x grows with y and x,
    # so the last sample (iy = ix = 1, index 3) wins: 5 * 1.75 + 1.75 = 10.5.
    boxes = np.array([[0, 0.6, 0.6, 2.4, 2.4]], np.float32)
    out, argmax = roi_warp(ARANGE, boxes, 2, 1.0, 2, mode="max", tier=tier, return_argmax=True)
    np.testing.assert_allclose(out[0, 0], [[10.5, 11.5], [15.5, 16.5]], rtol=1e-6)
    np.testing.assert_array_equal(argmax, 3)
    # Gradient 1 on bin (0, 0) only: goes to the sample (1.75, 1.75) with bilinear weights
    # (1 - 0.75) * (1 - 0.75) = 0.0625 on (1, 1), 0.25 * 0.75 on (1, 2) and (2, 1), 0.5625 on (2, 2).
    g = np.zeros((1, 1, 2, 2), np.float32)
    g[0, 0, 0, 0] = 1
    gi = roi_warp_backward(g, boxes, ARANGE.shape, 2, 1.0, 2, mode="max", tier=tier,
                           argmax=argmax)
    expected = np.zeros((5, 5))
    expected[1:3, 1:3] = [[0.0625, 0.1875], [0.1875, 0.5625]]
    np.testing.assert_allclose(gi[0, 0], expected, rtol=1e-6)


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    R = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = distinct_map(rng, (N, C, H, W), dtype)
    boxes = random_rois(rng, N, H, W, R, scale, dtype)
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    g = rng.standard_normal((R, C) + size).astype(dtype)
    return x, boxes, size, scale, g


@given(case=cases(), sampling_ratio=st.sampled_from([-1, 0, 1, 2, 4]))
def test_avg_is_roi_align_on_the_quantised_box(case, sampling_ratio):
    x, boxes, size, scale, _ = case
    out = roi_warp(x, boxes, size, scale, sampling_ratio, mode="avg", tier="numpy")
    ref = roi_align(x, quantise(boxes, scale).astype(x.dtype), size, 1.0, sampling_ratio, False,
                    tier="numpy")
    np.testing.assert_allclose(out, ref, **tol(x.dtype))


@fixture_ok
@given(case=cases(), sampling_ratio=st.sampled_from([-1, 0, 1, 2, 4]),
       mode=st.sampled_from(["avg", "max"]))
def test_tiers_match_reference(fast_tier, case, sampling_ratio, mode):
    x, boxes, size, scale, g = case
    args, kw = (size, scale, sampling_ratio), {"mode": mode}
    ref, ref_arg = roi_warp(x, boxes, *args, **kw, tier="numpy", return_argmax=True)
    out, arg = roi_warp(x, boxes, *args, **kw, tier=fast_tier, return_argmax=True)
    np.testing.assert_allclose(out, ref, **tol(x.dtype))
    if mode == "max":
        np.testing.assert_array_equal(arg, ref_arg)
    else:
        assert arg is None and ref_arg is None
    gref = roi_warp_backward(g, boxes, x.shape, *args, **kw, tier="numpy", argmax=ref_arg)
    gout = roi_warp_backward(g, boxes, x.shape, *args, **kw, tier=fast_tier, argmax=arg)
    np.testing.assert_allclose(gout, gref, **tol(x.dtype))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gradcheck_and_adjoint_float64(tier, mode):
    rng = np.random.default_rng(8)
    x = distinct_map(rng, (2, 2, 7, 8))
    boxes = random_rois(rng, 2, 7, 8, 4, 0.5, np.float64)
    args, kw = ((2, 3), 0.5, 2), {"mode": mode}

    def f(x):
        y, argmax = roi_warp(x, boxes, *args, **kw, tier=tier, return_argmax=True)
        return y, lambda dy: roi_warp_backward(dy, boxes, x.shape, *args, **kw, tier=tier,
                                               argmax=argmax)

    gradcheck(f, [x], directions=3, seeds=(0, 1))
    out, argmax = roi_warp(x, boxes, *args, **kw, tier=tier, return_argmax=True)
    g = rng.standard_normal(out.shape)
    rhs = np.sum(x * roi_warp_backward(g, boxes, x.shape, *args, **kw, tier=tier, argmax=argmax))
    np.testing.assert_allclose(np.sum(out * g), rhs, rtol=1e-12)


@pytest.mark.parametrize("gpu_tier", tier_params(("cuda", "cupy")))
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gpu_backward_deterministic_flag(gpu_tier, mode):
    rng = np.random.default_rng(9)
    x = distinct_map(rng, (1, 2, 8, 8), np.float32)
    boxes = np.array([[0, 0, 0, 8, 8], [0, 0, 0, 8, 8], [0, 2.4, 1.2, 6.3, 7.7]], np.float32)
    out, argmax = roi_warp(x, boxes, 3, 1.0, 2, mode=mode, tier="numpy", return_argmax=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ref = roi_warp_backward(g, boxes, x.shape, 3, 1.0, 2, mode=mode, tier="numpy", argmax=argmax)
    for det in (False, True):
        got = roi_warp_backward(g, boxes, x.shape, 3, 1.0, 2, mode=mode, tier=gpu_tier,
                                argmax=argmax, deterministic=det)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_empty_and_bad_input(tier):
    x = np.ones((2, 3, 8, 8), np.float32)
    out, argmax = roi_warp(x, np.zeros((0, 5), np.float32), 2, mode="max", tier=tier,
                           return_argmax=True)
    assert out.shape == (0, 3, 2, 2) and argmax.shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="mode must be 'avg' or 'max'"):
        roi_warp(x, np.zeros((1, 5), np.float32), 2, mode="sum")
    with pytest.raises(ValueError, match="needs argmax"):
        roi_warp_backward(np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 5), np.float32),
                          x.shape, 2, mode="max")
    with pytest.raises(ValueError, match="batch indices"):
        roi_warp(x, np.array([[2, 0, 0, 1, 1]], np.float32), 2)
