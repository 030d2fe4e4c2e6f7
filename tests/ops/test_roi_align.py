"""RoIAlign: golden cases worked by hand, every tier against the NumPy reference, gradients."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimaskrcnn.ops import roi_align, roi_align_backward
from minimaskrcnn.testing.gradcheck import gradcheck
from minimaskrcnn.testing.roi_cases import distinct_map, random_rois
from minimaskrcnn.testing.tiers import tier_params

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


# ------------------------------------------------------------------------------------------
# Golden cases, worked by hand
# ------------------------------------------------------------------------------------------

# The 5x5 arange map has value f(y, x) = 5*y + x at cell (y, x). It is linear, so bilinear
# interpolation at any point inside [0, 4] x [0, 4] returns exactly 5*y + x.
# Box [1, 1, 3, 3], output 4x4, scale 1, sampling_ratio -1:
#   aligned=False: RoI [1, 3] on each axis, length 2, bin 0.5, grid ceil(2/4) = 1 sample per bin
#     at 1 + 0.5*p + 0.25 -> coordinates 1.25, 1.75, 2.25, 2.75.
#   aligned=True: RoI shifted by -0.5 to [0.5, 2.5], same bins -> 0.75, 1.25, 1.75, 2.25.
ARANGE_CASES = {
    False: np.array([1.25, 1.75, 2.25, 2.75]),
    True: np.array([0.75, 1.25, 1.75, 2.25]),
}


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_arange_5x5_golden(tier, aligned, sampling_ratio):
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    boxes = np.array([[0, 1, 1, 3, 3]], dtype=np.float32)
    c = ARANGE_CASES[aligned]
    # sampling_ratio=2 puts two samples per bin at the bin's quarter points (+-0.125 around the
    # single sample above); their mean is the same point because f is linear.
    expected = 5 * c[:, None] + c[None, :]
    out = roi_align(x, boxes, 4, 1.0, sampling_ratio, aligned, tier=tier)
    assert out.shape == (1, 1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_arange_5x5_list_format_and_scale(tier):
    # The same case through the list-of-(R_i, 4) format, on a map at half resolution with the
    # box given in input pixels (box [2, 2, 6, 6] * 0.5 = [1, 1, 3, 3]).
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    out = roi_align(x, [np.array([[2.0, 2.0, 6.0, 6.0]])], (4, 4), 0.5, -1, False, tier=tier)
    c = ARANGE_CASES[False]
    np.testing.assert_allclose(out[0, 0], 5 * c[:, None] + c[None, :], rtol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_constant_map_gives_the_constant_inside_the_image(tier, aligned):
    x = np.full((2, 3, 6, 7), 2.5, dtype=np.float32)
    # Every sample of these boxes lies in [-1, H] x [-1, W], so each bilinear value is 2.5.
    boxes = np.array([[0, 0, 0, 7, 6], [1, 1.3, 0.2, 4.1, 5.9], [1, 2, 2, 2.5, 2.2],
                      [0, 5.5, 4.5, 7, 6]], dtype=np.float32)
    out = roi_align(x, boxes, (3, 2), 1.0, 2, aligned, tier=tier)
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)


def test_box_of_zero_height_gives_zeros(tier):
    # aligned=True does not clamp the RoI: height 0 -> adaptive grid ceil(0 / Ph) = 0 samples,
    # and an empty grid outputs 0 (torchvision's count = max(0, 1) = 1 divides an empty sum).
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    boxes = np.array([[0, 1, 3, 6, 3]], dtype=np.float32)
    out = roi_align(x, boxes, 2, 1.0, -1, True, tier=tier)
    np.testing.assert_array_equal(out, 0)
    # aligned=False clamps the height to 1 cell instead: samples on rows 3..4, not zeros.
    assert np.abs(roi_align(x, boxes, 2, 1.0, -1, False, tier=tier)).max() > 0


def test_box_wholly_outside_gives_zeros(tier):
    x = np.ones((1, 1, 8, 8), dtype=np.float32)
    boxes = np.array([[0, 20, 20, 30, 30], [0, -9, -9, -2.5, -2.5]], dtype=np.float32)
    np.testing.assert_array_equal(roi_align(x, boxes, 3, 1.0, 2, False, tier=tier), 0)


def test_zero_boxes_give_empty_output(tier):
    x = np.ones((2, 3, 8, 8), dtype=np.float64)
    out = roi_align(x, np.zeros((0, 5)), (2, 4), tier=tier)
    assert out.shape == (0, 3, 2, 4) and out.dtype == np.float64
    out = roi_align(x, [np.zeros((0, 4)), np.zeros((0, 4))], 7, tier=tier)
    assert out.shape == (0, 3, 7, 7)
    g = roi_align_backward(np.zeros((0, 3, 7, 7)), np.zeros((0, 5)), (2, 3, 8, 8), 7, tier=tier)
    assert g.shape == (2, 3, 8, 8) and not g.any()


# ------------------------------------------------------------------------------------------
# Every tier against the reference (hypothesis), gradients, adjoint
# ------------------------------------------------------------------------------------------


@st.composite
def cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    R = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    boxes = random_rois(rng, N, H, W, R, scale, dtype)
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    g = rng.standard_normal((R, C) + size).astype(dtype)
    return x, boxes, size, scale, g


@fixture_ok
@given(case=cases(), sampling_ratio=st.sampled_from([-1, 0, 1, 2, 4]), aligned=st.booleans())
def test_tiers_match_reference(fast_tier, case, sampling_ratio, aligned):
    x, boxes, size, scale, g = case
    args = (size, scale, sampling_ratio, aligned)
    ref = roi_align(x, boxes, *args, tier="numpy")
    out = roi_align(x, boxes, *args, tier=fast_tier)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out, ref, **tol(x.dtype))
    gref = roi_align_backward(g, boxes, x.shape, *args, tier="numpy")
    gout = roi_align_backward(g, boxes, x.shape, *args, tier=fast_tier)
    assert gout.dtype == x.dtype
    np.testing.assert_allclose(gout, gref, **tol(x.dtype))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck_float64(tier, aligned, sampling_ratio):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 7, 8))
    boxes = random_rois(rng, 2, 7, 8, 4, 0.5, np.float64)
    args = ((2, 3), 0.5, sampling_ratio, aligned)

    def f(x):
        y = roi_align(x, boxes, *args, tier=tier)
        return y, lambda dy: roi_align_backward(dy, boxes, x.shape, *args, tier=tier)

    gradcheck(f, [x], directions=3, seeds=(0, 1))


@pytest.mark.parametrize("aligned", [False, True])
def test_adjoint_identity(tier, aligned):
    # RoIAlign is linear in its input, so <op(x), g> == <x, op_backward(g)> exactly (in exact
    # arithmetic) for every x and g.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8, 8))
    boxes = random_rois(rng, 2, 8, 8, 5, 1.0, np.float64)
    g = rng.standard_normal((5, 3, 3, 3))
    lhs = np.sum(roi_align(x, boxes, 3, 1.0, -1, aligned, tier=tier) * g)
    rhs = np.sum(x * roi_align_backward(g, boxes, x.shape, 3, 1.0, -1, aligned, tier=tier))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_numba_tier_is_bitwise_the_reference_whatever_the_thread_count():
    # The Numba CPU backward gives each grad_input cell one writer and adds its contributions in
    # the reference's order (module docstring), so it is exactly the reference's result and
    # does not depend on how many threads run it.
    import numba

    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    boxes = random_rois(rng, 2, 9, 8, 12, 0.5, np.float32)
    g = rng.standard_normal((12, 5, 3, 2)).astype(np.float32)
    args = ((3, 2), 0.5, -1, True)
    ref = roi_align(x, boxes, *args, tier="numpy")
    gref = roi_align_backward(g, boxes, x.shape, *args, tier="numpy")
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            np.testing.assert_array_equal(roi_align(x, boxes, *args, tier="numba"), ref)
            np.testing.assert_array_equal(roi_align_backward(g, boxes, x.shape, *args,
                                                             tier="numba"), gref)
    finally:
        numba.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

X = np.zeros((2, 1, 4, 4), dtype=np.float32)


@pytest.mark.parametrize(("boxes", "match"), [
    (np.array([[2, 0, 0, 1, 1]], np.float32), r"batch indices must lie in \[0, 2\)"),
    (np.array([[-1, 0, 0, 1, 1]], np.float32), r"batch indices must lie"),
    (np.array([[0.5, 0, 0, 1, 1]], np.float32), "must be integers"),
    (np.array([[0, 0, 1, 1]], np.float32), r"boxes must have last dimension 5"),
    (np.zeros((1, 1, 5), np.float32), r"boxes must have 2 dimensions"),
    (np.array([[0, 0, 0, np.nan, 1]], np.float32), "NaN or inf"),
    (np.array([[0, 0, 0, np.inf, 1]], np.float32), "NaN or inf"),
    ([np.zeros((1, 5), np.float32)], r"boxes\[0\] must have last dimension 4"),
    ([np.zeros((1, 4))] * 3, r"batch indices must lie in \[0, 2\)"),
])
def test_bad_boxes(boxes, match):
    with pytest.raises(ValueError, match=match):
        roi_align(X, boxes, 2, tier="numpy")


def test_bad_arguments():
    boxes = np.zeros((1, 5), np.float32)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_align(X, boxes, -1)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_align(X, boxes, (2, 0))
    with pytest.raises(TypeError, match="output_size"):
        roi_align(X, boxes, 2.5)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align(X, boxes, 2, spatial_scale=0)
    with pytest.raises(ValueError, match="sampling_ratio must be an integer"):
        roi_align(X, boxes, 2, sampling_ratio=1.5)
    with pytest.raises(ValueError, match=r"input must have 4 dimensions"):
        roi_align(X[0], boxes, 2)
    with pytest.raises(TypeError, match="input must be a floating"):
        roi_align(X.astype(np.int32), boxes, 2)
    with pytest.raises(TypeError, match="boxes must be a floating"):
        roi_align(X, boxes.astype(np.int64), 2)
    with pytest.raises(ValueError, match=r"grad_output must have shape"):
        roi_align_backward(np.zeros((1, 1, 3, 3), np.float32), boxes, X.shape, 2)
    with pytest.raises(ValueError, match="input_shape"):
        roi_align_backward(np.zeros((1, 1, 2, 2), np.float32), boxes, (2, 1, 4), 2)


# ------------------------------------------------------------------------------------------
# GPU tiers: atomic and deterministic backward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu_tier", tier_params(("cuda", "cupy")))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_backward_atomic_and_deterministic(gpu_tier, dtype):
    rng = np.random.default_rng(5)
    x_shape = (2, 2, 8, 8)
    boxes = random_rois(rng, 2, 8, 8, 5, 1.0, dtype)
    boxes[:, 0] = [0, 0, 1, 0, 1]
    boxes[1, 1:] = boxes[0, 1:]  # two identical RoIs: same cells receive from both
    g = rng.standard_normal((5, 2, 3, 3)).astype(dtype)
    args = (3, 1.0, 2, True)
    ref = roi_align_backward(g, boxes, x_shape, *args, tier="numpy")
    atomic = roi_align_backward(g, boxes, x_shape, *args, tier=gpu_tier)
    det1 = roi_align_backward(g, boxes, x_shape, *args, tier=gpu_tier, deterministic=True)
    det2 = roi_align_backward(g, boxes, x_shape, *args, tier=gpu_tier, deterministic=True)
    np.testing.assert_allclose(atomic, ref, **tol(dtype))
    np.testing.assert_allclose(det1, ref, **tol(dtype))
    np.testing.assert_array_equal(det1, det2)


# ------------------------------------------------------------------------------------------
# RoIAlign-max (mode="max"): the paper's Table 2c row
# ------------------------------------------------------------------------------------------


def test_max_golden_arange_and_backward(tier):
    # Box [1, 1, 3, 3], 2x2 bins of one cell, sampling_ratio 2: samples at 1.25, 1.75 (bin 0)
    # and 2.25, 2.75 (bin 1) on each axis; f(y, x) = 5y + x grows with y and x, so each bin's
    # maximum is its last sample (iy = ix = 1, index 1 * 2 + 1 = 3).
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    boxes = np.array([[0, 1, 1, 3, 3]], np.float32)
    out, argmax = roi_align(x, boxes, 2, 1.0, 2, mode="max", tier=tier, return_argmax=True)
    c = np.array([1.75, 2.75])
    np.testing.assert_allclose(out[0, 0], 5 * c[:, None] + c[None, :], rtol=1e-6)
    np.testing.assert_array_equal(argmax, 3)
    # The average of the same samples is the bin centre's value (f is linear): max > avg.
    avg = roi_align(x, boxes, 2, 1.0, 2, tier=tier)
    np.testing.assert_allclose(out - avg, 5 * 0.25 + 0.25, rtol=1e-6)
    # Backward of a one at bin (0, 0): only the sample (1.75, 1.75) scatters, bilinear weights
    # 0.25 / 0.75 per axis onto cells (1, 1), (1, 2), (2, 1), (2, 2).
    g = np.zeros((1, 1, 2, 2), np.float32)
    g[0, 0, 0, 0] = 1
    gi = roi_align_backward(g, boxes, x.shape, 2, 1.0, 2, mode="max", argmax=argmax, tier=tier)
    want = np.zeros((5, 5))
    want[1:3, 1:3] = np.outer([0.25, 0.75], [0.25, 0.75])
    np.testing.assert_allclose(gi[0, 0], want, rtol=1e-6)


@fixture_ok
@given(seed=st.integers(0, 2**31 - 1), sampling_ratio=st.sampled_from([-1, 1, 2, 3]),
       aligned=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_max_tiers_match_reference(fast_tier, seed, sampling_ratio, aligned, dtype):
    rng = np.random.default_rng(seed)
    x = distinct_map(rng, (2, 2, 7, 8), dtype)  # distinct samples: the arg-max is defined
    boxes = random_rois(rng, 2, 7, 8, 4, 0.5, dtype)
    g = rng.standard_normal((4, 2, 2, 3)).astype(dtype)
    args = ((2, 3), 0.5, sampling_ratio, aligned)
    ref, ref_arg = roi_align(x, boxes, *args, mode="max", tier="numpy", return_argmax=True)
    out, arg = roi_align(x, boxes, *args, mode="max", tier=fast_tier, return_argmax=True)
    np.testing.assert_allclose(out, ref, **tol(dtype))
    np.testing.assert_array_equal(arg, ref_arg)
    gref = roi_align_backward(g, boxes, x.shape, *args, mode="max", argmax=ref_arg, tier="numpy")
    gout = roi_align_backward(g, boxes, x.shape, *args, mode="max", argmax=arg, tier=fast_tier)
    np.testing.assert_allclose(gout, gref, **tol(dtype))


@pytest.mark.parametrize("aligned", [False, True])
def test_max_gradcheck_and_adjoint_float64(tier, aligned):
    rng = np.random.default_rng(9)
    x = distinct_map(rng, (2, 2, 7, 8))
    boxes = random_rois(rng, 2, 7, 8, 4, 0.5, np.float64)
    args = ((2, 3), 0.5, 2, aligned)

    def f(x):
        y, argmax = roi_align(x, boxes, *args, mode="max", tier=tier, return_argmax=True)
        return y, lambda dy: roi_align_backward(dy, boxes, x.shape, *args, mode="max",
                                                argmax=argmax, tier=tier)

    gradcheck(f, [x], directions=3, seeds=(0, 1))
    out, argmax = roi_align(x, boxes, *args, mode="max", tier=tier, return_argmax=True)
    g = rng.standard_normal(out.shape)
    rhs = np.sum(x * roi_align_backward(g, boxes, x.shape, *args, mode="max", argmax=argmax,
                                        tier=tier))
    np.testing.assert_allclose(np.sum(out * g), rhs, rtol=1e-12)


@pytest.mark.parametrize("gpu_tier", tier_params(("cuda", "cupy")))
def test_max_gpu_backward_deterministic_flag(gpu_tier):
    rng = np.random.default_rng(10)
    x = distinct_map(rng, (1, 2, 8, 8), np.float32)
    boxes = np.array([[0, 0, 0, 8, 8], [0, 0, 0, 8, 8], [0, 2, 1, 6, 7]], np.float32)
    args = (3, 1.0, 2, False)
    out, argmax = roi_align(x, boxes, *args, mode="max", tier="numpy", return_argmax=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ref = roi_align_backward(g, boxes, x.shape, *args, mode="max", argmax=argmax, tier="numpy")
    runs = [roi_align_backward(g, boxes, x.shape, *args, mode="max", argmax=argmax, tier=gpu_tier,
                               deterministic=det) for det in (False, True, True)]
    for got in runs:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(runs[1], runs[2])


def test_max_needs_its_argmax_and_a_known_mode():
    x = np.zeros((1, 1, 4, 4), np.float32)
    boxes = np.array([[0, 0, 0, 2, 2]], np.float32)
    g = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="needs argmax"):
        roi_align_backward(g, boxes, x.shape, 2, mode="max")
    with pytest.raises(ValueError, match="argmax must be an integer array of shape"):
        roi_align_backward(g, boxes, x.shape, 2, mode="max", argmax=np.zeros((1, 1, 3, 2), int))
    with pytest.raises(ValueError, match="mode must be 'avg' or 'max'"):
        roi_align(x, boxes, 2, mode="mean")


# ------------------------------------------------------------------------------------------
# What one call may ask for is bounded, with the same error in every tier
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("boxes", "kw", "match"), [
    # a huge sampling_ratio: 7 * 7 * 10000**2 samples
    ([[0, 0, 0, 4, 4]], {"sampling_ratio": 10_000}, "more than the limit"),
    # adaptive sampling on a box of millions of pixels
    ([[0, 0, 0, 3e6, 3e6]], {"sampling_ratio": -1}, "adaptive sampling"),
    # coordinates that overflow float32 sample arithmetic (NaN in one tier before the bound)
    ([[0, -3e38, -3e38, 3e38, 3e38]], {"sampling_ratio": 2}, "beyond"),
])
def test_extent_is_bounded_in_every_tier(tier, boxes, kw, match):
    x = np.ones((1, 1, 8, 8), np.float32)
    boxes = np.array(boxes, np.float32)
    with pytest.raises(ValueError, match=match):
        roi_align(x, boxes, 7, 1.0, tier=tier, **kw)
    with pytest.raises(ValueError, match=match):
        roi_align_backward(np.zeros((1, 1, 7, 7), np.float32), boxes, x.shape, 7, 1.0, tier=tier,
                           **kw)


# ------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------


def test_plot_roi_sampling_saves_a_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minimaskrcnn.viz import plot_roi_sampling

    fig = plot_roi_sampling([9.0, 6.5, 27.0, 23.0], (8, 10), 2, spatial_scale=0.25)
    assert len(fig.axes) == 4
    assert [a.get_title().splitlines()[0] for a in fig.axes] == [
        "RoIPool", "RoIWarp", "RoIAlign, aligned=False", "RoIAlign, aligned=True"]
    # 2x2 bins x 2x2 samples per bin in each bilinear panel.
    assert len(fig.axes[3].collections[0].get_offsets()) == 16
    path = tmp_path / "roi_sampling.png"
    fig.savefig(path, dpi=60)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="box must be 4 finite numbers"):
        plot_roi_sampling([0, 0, 1], (4, 4), 2)
