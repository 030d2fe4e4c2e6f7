"""RoIPool: golden cases worked by hand, every tier against the NumPy reference, gradients."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimaskrcnn.ops import roi_pool, roi_pool_backward
from minimaskrcnn.testing.gradcheck import gradcheck
from minimaskrcnn.testing.roi_cases import distinct_map, random_rois
from minimaskrcnn.testing.tiers import tier_params

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# The 5x5 arange map: value 5*h + w at cell (h, w), which is also the cell's flat index, so
# the argmax of a bin equals its maximum.
ARANGE = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)


def test_arange_2x2_golden(tier):
    # Box [1, 1, 3, 3]: corners round to 1 and 3, size 3 - 1 + 1 = 3 cells, bin 1.5.
    # Bin 0: [floor(0), ceil(1.5)) + 1 = rows 1..2; bin 1: [floor(1.5), ceil(3)) + 1 = rows 2..3.
    # Max of 5h + w over rows {1,2} x cols {1,2} is 12 at (2, 2); etc.
    out, argmax = roi_pool(ARANGE, np.array([[0, 1, 1, 3, 3]], np.float32), 2, tier=tier,
                           return_argmax=True)
    np.testing.assert_array_equal(out[0, 0], [[12, 13], [17, 18]])
    np.testing.assert_array_equal(argmax[0, 0], [[12, 13], [17, 18]])
    assert out.dtype == np.float32 and argmax.dtype == np.int64


def test_arange_4x4_golden_and_shared_cells(tier):
    # Same box, 4 bins of 0.75: [0, 1), [0, 2), [1, 3), [2, 3) (+1) -> rows {1}, {1,2}, {2,3},
    # {3}: the maxima sit on rows 1, 2, 3, 3 (and columns likewise).
    boxes = np.array([[0, 1, 1, 3, 3]], np.float32)
    out, argmax = roi_pool(ARANGE, boxes, 4, tier=tier, return_argmax=True)
    m = np.array([1, 2, 3, 3])
    np.testing.assert_array_equal(out[0, 0], 5 * m[:, None] + m[None, :])
    # Backward of all-ones: cell (h, w) receives one per bin choosing it: 1, 1, 2 choices for
    # rows/columns 1, 2, 3 -> products, e.g. cell (3, 3) gets 2 * 2 = 4.
    g = roi_pool_backward(np.ones((1, 1, 4, 4), np.float32), boxes, ARANGE.shape, 4,
                          argmax=argmax, tier=tier)
    cnt = np.array([0, 1, 1, 2, 0])
    np.testing.assert_array_equal(g[0, 0], cnt[:, None] * cnt[None, :])


def test_rounding_is_half_away_from_zero(tier):
    # round(0.5) = 1 and round(2.5) = 3 (C round; NumPy's round-half-even would give 0 and 2),
    # so [0.5, 0.5, 2.5, 2.5] pools exactly like [1, 1, 3, 3].
    a = roi_pool(ARANGE, np.array([[0, 0.5, 0.5, 2.5, 2.5]], np.float32), 2, tier=tier)
    np.testing.assert_array_equal(a[0, 0], [[12, 13], [17, 18]])
    # round(-0.5) = -1: the RoI starts one cell outside; the first bin [floor(0), ceil(1.5))
    # - 1 = rows -1..0, clipped to row 0; size 1 - (-1) + 1 = 3 cells.
    b = roi_pool(ARANGE, np.array([[0, -0.5, -0.5, 1.0, 1.0]], np.float32), 2, tier=tier)
    np.testing.assert_array_equal(b[0, 0], [[0, 1], [5, 6]])


def test_empty_bins_and_ties(tier):
    x = np.ones((1, 2, 5, 5), np.float64)
    boxes = np.array([[0, 10, 10, 12, 12], [0, 1, 2, 3, 4]], np.float64)
    out, argmax = roi_pool(x, boxes, 2, tier=tier, return_argmax=True)
    # Wholly outside: every bin is clipped empty -> 0 and argmax -1.
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(argmax[0], -1)
    # Constant map: every bin ties; the first cell in row-major order wins: rows 2.. and 3..,
    # columns 1.. and 2.. (size 3, bins [0, 2) and [1, 3)).
    np.testing.assert_array_equal(out[1], 1)
    np.testing.assert_array_equal(argmax[1, 0], [[2 * 5 + 1, 2 * 5 + 2], [3 * 5 + 1, 3 * 5 + 2]])


def test_zero_boxes_give_empty_output(tier):
    x = np.ones((2, 3, 8, 8), np.float32)
    out, argmax = roi_pool(x, np.zeros((0, 5), np.float32), (2, 4), tier=tier, return_argmax=True)
    assert out.shape == (0, 3, 2, 4) and argmax.shape == (0, 3, 2, 4)
    g = roi_pool_backward(np.zeros((0, 3, 2, 4), np.float32), np.zeros((0, 5)), x.shape, (2, 4),
                          argmax=argmax, tier=tier)
    assert g.shape == x.shape and not g.any()


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    R = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # Distinct values everywhere, plus sometimes a constant patch (ties).
    x = distinct_map(rng, (N, C, H, W), dtype)
    if draw(st.booleans()):
        x[..., : H // 2 + 1, : W // 2 + 1] = 0.25
    boxes = random_rois(rng, N, H, W, R, scale, dtype)
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    g = rng.standard_normal((R, C) + size).astype(dtype)
    return x, boxes, size, scale, g


@fixture_ok
@given(case=cases())
def test_tiers_match_reference(fast_tier, case):
    x, boxes, size, scale, g = case
    ref, ref_arg = roi_pool(x, boxes, size, scale, tier="numpy", return_argmax=True)
    out, arg = roi_pool(x, boxes, size, scale, tier=fast_tier, return_argmax=True)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    gref = roi_pool_backward(g, boxes, x.shape, size, scale, argmax=ref_arg, tier="numpy")
    gout = roi_pool_backward(g, boxes, x.shape, size, scale, argmax=arg, tier=fast_tier)
    np.testing.assert_allclose(gout, gref, rtol=1e-6, atol=1e-6)


def test_gradcheck_and_adjoint_float64(tier):
    rng = np.random.default_rng(6)
    x = distinct_map(rng, (2, 2, 7, 8))
    boxes = random_rois(rng, 2, 7, 8, 5, 0.5, np.float64)

    def f(x):
        y, argmax = roi_pool(x, boxes, (2, 3), 0.5, tier=tier, return_argmax=True)
        return y, lambda dy: roi_pool_backward(dy, boxes, x.shape, (2, 3), 0.5, argmax=argmax,
                                                    tier=tier)

    gradcheck(f, [x], directions=3, seeds=(0, 1))
    # With the argmax fixed the op selects cells: <out, g> == <x, backward(g)>.
    out, argmax = roi_pool(x, boxes, (2, 3), 0.5, tier=tier, return_argmax=True)
    g = rng.standard_normal(out.shape)
    rhs = np.sum(x * roi_pool_backward(g, boxes, x.shape, (2, 3), 0.5, argmax=argmax,
                                             tier=tier))
    np.testing.assert_allclose(np.sum(out * g), rhs, rtol=1e-12)


@pytest.mark.parametrize("gpu_tier", tier_params(("cuda", "cupy")))
def test_gpu_backward_deterministic_flag(gpu_tier):
    rng = np.random.default_rng(7)
    x = distinct_map(rng, (1, 2, 8, 8), np.float32)
    boxes = np.array([[0, 0, 0, 8, 8], [0, 0, 0, 8, 8], [0, 2, 1, 6, 7]], np.float32)
    out, argmax = roi_pool(x, boxes, 3, tier="numpy", return_argmax=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ref = roi_pool_backward(g, boxes, x.shape, 3, argmax=argmax, tier="numpy")
    for det in (False, True):
        got = roi_pool_backward(g, boxes, x.shape, 3, argmax=argmax, tier=gpu_tier,
                                deterministic=det)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_bad_input():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="batch indices"):
        roi_pool(x, np.array([[3, 0, 0, 1, 1]], np.float32), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        roi_pool(x, np.array([[0, 0, np.nan, 1, 1]], np.float32), 2)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_pool(x, np.zeros((1, 5), np.float32), (0, 2))
    boxes = np.zeros((1, 5), np.float32)
    g = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="argmax must be an integer array of shape"):
        roi_pool_backward(g, boxes, x.shape, 2, argmax=np.zeros((1, 1, 2, 3), np.int64))
    with pytest.raises(ValueError, match=r"argmax values must lie in \[-1, H\*W\)"):
        roi_pool_backward(g, boxes, x.shape, 2, argmax=np.full((1, 1, 2, 2), 16, np.int64))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        roi_pool_backward(np.zeros((2, 1, 2, 2), np.float32), boxes, x.shape, 2,
                          argmax=np.zeros((2, 1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="needs argmax"):
        roi_pool_backward(g, boxes, x.shape, 2)
    with pytest.raises(ValueError, match="beyond"):  # +-3e38 overflows float32 sample arithmetic
        roi_pool(x, np.array([[0, -3e38, 0, 3e38, 1]], np.float32), 2)
