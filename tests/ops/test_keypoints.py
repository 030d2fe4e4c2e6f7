"""Keypoint ops: hand-worked targets and decoding, tiers against the NumPy reference, the loss's
gradient, bad input.

torchvision's semantics (``roi_heads.keypoints_to_heatmap``, ``keypointrcnn_loss``,
``heatmaps_to_keypoints``) are worked out by hand below; torch itself is never imported.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimaskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoint_loss, keypoints_to_heatmap
from minimaskrcnn.ops.keypoints.reference import bicubic_resize, cubic_source
from minimaskrcnn.testing.gradcheck import gradcheck, loss_function
from minimaskrcnn.testing.tiers import tier_params

cpu_tiers = pytest.mark.parametrize("tier", tier_params(("numpy", "numba")))

# --------------------------------------------------------------------------------------------
# keypoints_to_heatmap
# --------------------------------------------------------------------------------------------


@cpu_tiers
def test_targets_by_hand(tier):
    # RoI [10, 20, 18, 28] is 8 x 8 px, m = 4: cells 2 px wide. Keypoint (13, 21): x cell
    # floor(3 * 0.5) = 1, y cell floor(1 * 0.5) = 0 -> 0 * 4 + 1 = 1. (17.99, 27.99) -> (3, 3)
    # -> 15. (10, 20) (top-left corner, on the grid) -> 0. (18, 28) on the right/bottom edges
    # -> forced to cell m - 1 = 3 each -> 15 (torchvision's boundary rule).
    kp = np.array([[[13, 21, 2], [17.99, 27.99, 2], [10, 20, 1], [18, 28, 2]]], np.float32)
    rois = np.array([[10, 20, 18, 28]], np.float32)
    t, v = keypoints_to_heatmap(kp, rois, 4, tier=tier)
    assert t.dtype == np.int64 and v.dtype == bool
    np.testing.assert_array_equal(t, [[1, 15, 0, 15]])
    np.testing.assert_array_equal(v, [[True, True, True, True]])


@cpu_tiers
def test_targets_outside_the_box_or_not_labelled_are_invalid(tier):
    # Left of the box (x = 9.99 -> cell -1), past the right edge (18.01 -> cell 4), above,
    # inside but v = 0 (COCO "not labelled"), and COCO's 0, 0, 0 placeholder: all invalid, with
    # target 0 (torchvision's lin_ind * valid).
    kp = np.array([[[9.99, 21, 2], [18.01, 21, 2], [12, 19.5, 2], [12, 22, 0], [0, 0, 0]]],
                  np.float32)
    t, v = keypoints_to_heatmap(kp, np.array([[10, 20, 18, 28]], np.float32), 4, tier=tier)
    np.testing.assert_array_equal(v, [[False] * 5])
    np.testing.assert_array_equal(t, [[0] * 5])


@cpu_tiers
def test_targets_float64_and_several_rois(tier):
    # The same keypoint in two RoIs lands in different cells. RoI 1 [0, 0, 56, 56] with m = 56:
    # 1 px cells, (30.5, 12.2) -> 12 * 56 + 30. RoI 2 [28, 0, 56, 28] (0.5 px cells):
    # x (30.5 - 28) * 2 = 5, y 12.2 * 2 = 24.4 -> 24 * 56 + 5.
    kp = np.array([[[30.5, 12.2, 2]], [[30.5, 12.2, 2]]], np.float64)
    rois = np.array([[0, 0, 56, 56], [28, 0, 56, 28]], np.float64)
    t, v = keypoints_to_heatmap(kp, rois, 56, tier=tier)
    np.testing.assert_array_equal(t[:, 0], [12 * 56 + 30, 24 * 56 + 5])
    assert v.all()


def _target_case(seed, R, K, m):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-5, 30, R)
    y1 = rng.uniform(-5, 30, R)
    rois = np.stack([x1, y1, x1 + rng.uniform(0.5, 40, R), y1 + rng.uniform(0.5, 40, R)], 1)
    kp = np.stack([rng.uniform(-10, 80, (R, K)), rng.uniform(-10, 80, (R, K)),
                   rng.integers(0, 3, (R, K))], 2)
    edge = rng.random((R, K)) < 0.2  # some keypoints exactly on the right/bottom edge
    kp[..., 0] = np.where(edge, rois[:, 2:3], kp[..., 0])
    kp[..., 1] = np.where(rng.random((R, K)) < 0.2, rois[:, 3:4], kp[..., 1])
    return kp.astype(np.float32), rois.astype(np.float32), m


@given(seed=st.integers(0, 2**32 - 1), R=st.integers(0, 4), K=st.integers(1, 5),
       m=st.integers(1, 12))
def test_targets_numba_equals_reference(seed, R, K, m):
    kp, rois, m = _target_case(seed, R, K, m)
    want = keypoints_to_heatmap(kp, rois, m, tier="numpy")
    got = keypoints_to_heatmap(kp, rois, m, tier="numba")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert (want[0][~want[1]] == 0).all() and (want[0] < m * m).all()


def test_targets_bad_input():
    kp = np.zeros((2, 3, 3), np.float32)
    rois = np.array([[0, 0, 4, 4], [0, 0, 4, 4]], np.float32)
    with pytest.raises(ValueError, match=r"keypoints must have last dimension 3"):
        keypoints_to_heatmap(kp[..., :2], rois, 4)
    with pytest.raises(ValueError, match=r"rois must have shape \(2, 4\)"):
        keypoints_to_heatmap(kp, rois[:1], 4)
    with pytest.raises(ValueError, match=r"rois\[1\].*zero or negative width"):
        keypoints_to_heatmap(kp, np.array([[0, 0, 4, 4], [2, 0, 2, 4]], np.float32), 4)
    bad = kp.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="keypoints contains NaN"):
        keypoints_to_heatmap(bad, rois, 4)
    with pytest.raises(TypeError, match="heatmap_size must be an int"):
        keypoints_to_heatmap(kp, rois, 4.0)
    with pytest.raises(TypeError, match="keypoints must be a floating"):
        keypoints_to_heatmap(kp.astype(np.int64), rois, 4)


# --------------------------------------------------------------------------------------------
# keypoint_loss
# --------------------------------------------------------------------------------------------


def _loss_case(seed, R, K, m, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (R, K, m, m)).astype(dtype)
    targets = rng.integers(0, m * m, (R, K))
    valid = rng.random((R, K)) < 0.7
    return logits, targets, valid


@cpu_tiers
def test_loss_by_hand(tier):
    # One map of 2 x 2 logits [0, 0; 0, log 3]: softmax = [1, 1, 1, 3] / 6. Target cell 3:
    # loss -log(1/2) = log 2; gradient p - onehot = [1/6, 1/6, 1/6, -1/2]. The second keypoint
    # (invalid) contributes nothing and gets a zero gradient; the mean is over 1 valid map.
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[0, 0, 1, 1] = math.log(3)
    logits[0, 1] = 5.0
    loss, grad = keypoint_loss(logits, np.array([[3, 0]]), np.array([[True, False]]), tier=tier)
    assert loss == pytest.approx(math.log(2), rel=1e-6)
    np.testing.assert_allclose(grad[0, 0].ravel(), [1 / 6, 1 / 6, 1 / 6, -0.5], rtol=1e-6)
    assert (grad[0, 1] == 0).all() and grad.dtype == np.float32
    # an explicit normaliser divides the sum instead: 2 valid maps' worth
    loss2, grad2 = keypoint_loss(logits, np.array([[3, 0]]), np.array([[True, False]]),
                                 normalizer=2.0, tier=tier)
    assert loss2 == pytest.approx(math.log(2) / 2, rel=1e-6)
    np.testing.assert_allclose(grad2, grad / 2, rtol=1e-6)


@cpu_tiers
def test_loss_no_visible_keypoint_is_zero_with_zero_gradient(tier):
    logits, targets, _ = _loss_case(0, 3, 2, 4)
    loss, grad = keypoint_loss(logits, targets, np.zeros((3, 2), bool), tier=tier)
    assert loss == 0.0 and grad.shape == logits.shape and not grad.any()
    loss, grad = keypoint_loss(np.zeros((0, 2, 4, 4), np.float32), np.zeros((0, 2), np.int64),
                               np.zeros((0, 2), bool), normalizer=5.0, tier=tier)
    assert loss == 0.0 and grad.shape == (0, 2, 4, 4)


@cpu_tiers
def test_loss_extreme_logits_are_stable(tier):
    logits = np.full((1, 1, 3, 3), -200.0, np.float32)
    logits[0, 0, 0, 0] = 200.0
    loss, grad = keypoint_loss(logits, np.array([[0]]), np.array([[True]]), tier=tier)
    assert loss == pytest.approx(0.0, abs=1e-6) and np.isfinite(grad).all()
    loss, grad = keypoint_loss(logits, np.array([[8]]), np.array([[True]]), tier=tier)
    assert loss == pytest.approx(400.0, rel=1e-6) and np.isfinite(grad).all()


@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 3), K=st.integers(1, 4),
       m=st.integers(1, 6))
def test_loss_numba_matches_reference(seed, R, K, m):
    logits, targets, valid = _loss_case(seed, R, K, m)
    want_loss, want_grad = keypoint_loss(logits, targets, valid, tier="numpy")
    loss, grad = keypoint_loss(logits, targets, valid, tier="numba")
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert grad.dtype == logits.dtype
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    assert not grad[~valid].any()
    if valid.any():  # each valid map's gradient sums to 0 (softmax minus a one-hot)
        np.testing.assert_allclose(grad[valid].reshape(int(valid.sum()), -1).sum(1), 0,
                                   atol=1e-6)


@cpu_tiers
def test_loss_gradient_numerically_float64(tier):
    logits, targets, valid = _loss_case(7, 3, 2, 3, dtype=np.float64)
    f = loss_function(keypoint_loss, targets, valid, tier=tier)
    gradcheck(f, [logits], eps=1e-6, atol=1e-8, rtol=1e-5)


def test_loss_bad_input():
    logits, targets, valid = _loss_case(0, 2, 3, 4)
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\) like keypoint_logits"):
        keypoint_loss(logits, targets[:, :2], valid[:, :2])  # wrong number of keypoint types
    with pytest.raises(ValueError, match=r"valid must have shape \(2, 3\)"):
        keypoint_loss(logits, targets, valid[:1])
    with pytest.raises(ValueError, match="square maps"):
        keypoint_loss(logits[..., :3], targets, valid)
    with pytest.raises(ValueError, match=r"valid targets must lie in \[0, m \* m\) = \[0, 16\)"):
        keypoint_loss(logits, np.full((2, 3), 16), np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        keypoint_loss(logits, targets.astype(np.float32), valid)
    with pytest.raises(ValueError, match="normalizer must be a positive finite number"):
        keypoint_loss(logits, targets, valid, normalizer=0.0)
    bad = logits.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="keypoint_logits contains NaN or inf"):
        keypoint_loss(bad, targets, valid)


# --------------------------------------------------------------------------------------------
# heatmaps_to_keypoints and the bicubic resize
# --------------------------------------------------------------------------------------------


def test_cubic_weights_by_hand():
    # Same size (scale 1): real = dst, t = 0 -> weights cc2(1), cc1(0), cc1(1), cc2(2) =
    # 0, 1, 0, 0: the identity. Upsampling 2x (scale 0.5), dst = 1: real = 0.5 * 1.5 - 0.5 =
    # 0.25, i = 0, t = 0.25: cc2(1.25) = ((-0.75 * 1.25 + 3.75) * 1.25 - 6) * 1.25 + 3
    # = -0.10546875; cc1(0.25) = (1.25 * 0.25 - 2.25) * 0.0625 + 1 = 0.87890625;
    # cc1(0.75) = (0.9375 - 2.25) * 0.5625 + 1 = 0.26171875; cc2(1.75) = -0.03515625.
    # Taps -1, 0, 1, 2 with -1 clamped to 0.
    i0, i1, i2, i3, *w = cubic_source(3, np.float32(1.0), 8)
    assert (i0, i1, i2, i3) == (2, 3, 4, 5) and [float(v) for v in w] == [0, 1, 0, 0]
    i0, i1, i2, i3, *w = cubic_source(1, np.float32(0.5), 4)
    assert (i0, i1, i2, i3) == (0, 0, 1, 2)
    assert [float(v) for v in w] == [-0.10546875, 0.87890625, 0.26171875, -0.03515625]
    assert all(v.dtype == np.float32 for v in w)
    # dst = 0 at scale 0.5: real = -0.25 (not clamped for cubic): i = -1, t = 0.75
    i0, i1, i2, i3, *w = cubic_source(0, np.float32(0.5), 4)
    assert (i0, i1, i2, i3) == (0, 0, 0, 1)
    assert float(sum(w)) == pytest.approx(1.0)


def test_bicubic_resize_keeps_constants_and_identity():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(bicubic_resize(maps, 5, 5), maps)  # weights 0, 1, 0, 0
    const = np.full((1, 4, 4), 2.5, np.float32)
    np.testing.assert_allclose(bicubic_resize(const, 9, 13), 2.5, rtol=1e-6)


@cpu_tiers
def test_decode_by_hand(tier):
    # RoI [10, 20, 14, 24] is 4 x 4 px and the maps are 4 x 4: the resize is the identity, so
    # keypoint k is the centre of its maximal cell, + 0.5, offset by the box corner; the score is
    # the map's value there. Map 0: maximum at (row 1, col 2) -> (12.5, 21.5), score 3. Map 1:
    # two equal maxima at (0, 3) and (2, 0): the first in row-major order wins -> (13.5, 20.5).
    maps = np.zeros((1, 2, 4, 4), np.float32)
    maps[0, 0, 1, 2] = 3.0
    maps[0, 1, 0, 3] = maps[0, 1, 2, 0] = 1.0
    kp, scores = heatmaps_to_keypoints(maps, np.array([[10, 20, 14, 24]], np.float32), tier=tier)
    np.testing.assert_array_equal(kp[0], [[12.5, 21.5, 1], [13.5, 20.5, 1]])
    np.testing.assert_array_equal(scores[0], [3.0, 1.0])
    assert kp.dtype == np.float32 and scores.dtype == np.float32


@cpu_tiers
def test_decode_fractional_box_and_upsampling(tier):
    # RoI [0, 0, 7.5, 3.2]: w = 7.5, ceil 8 (cells 7.5 / 8 = 0.9375 px), h = 3.2, ceil 4 (0.8 px).
    # A 2 x 2 map with its maximum at the top-left and a bicubic upsample to 4 x 8: the resized
    # maximum stays in the top-left output cell (0, 0) -> x = 0.5 * 0.9375, y = 0.5 * 0.8.
    maps = np.array([[[[4.0, 0.0], [0.0, 0.0]]]], np.float32)
    kp, scores = heatmaps_to_keypoints(maps, np.array([[0, 0, 7.5, 3.2]], np.float32), tier=tier)
    np.testing.assert_allclose(kp[0, 0], [0.46875, 0.4, 1], rtol=1e-6)
    want = bicubic_resize(maps[0], 4, 8)[0]
    assert want.argmax() == 0 and scores[0, 0] == want[0, 0]


@cpu_tiers
def test_decode_degenerate_box_counts_as_one_pixel(tier):
    # A zero-width box: w clamps to 1, a 1 x 1 resized map; keypoint at x1 + 0.5.
    maps = np.random.default_rng(1).normal(size=(1, 3, 5, 5)).astype(np.float32)
    kp, _ = heatmaps_to_keypoints(maps, np.array([[4, 6, 4, 6]], np.float32), tier=tier)
    np.testing.assert_allclose(kp[0, :, :2], [[4.5, 6.5]] * 3)


def test_decode_recovers_the_target_cell():
    # Encode then decode: a one-hot logit map at the target cell of a keypoint decodes to within
    # one RoI pixel of it (the cell centre, refined by the bicubic resize).
    rng = np.random.default_rng(3)
    m = 56
    rois = np.array([[10, 20, 70, 100], [0, 0, 30, 25]], np.float32)
    kp = np.stack([rng.uniform(rois[:, 0:1], rois[:, 2:3], (2, 4)),
                   rng.uniform(rois[:, 1:2], rois[:, 3:4], (2, 4)), np.full((2, 4), 2.0)], 2)
    kp = kp.astype(np.float32)
    targets, valid = keypoints_to_heatmap(kp, rois, m)
    assert valid.all()
    maps = np.zeros((2, 4, m * m), np.float32)
    np.put_along_axis(maps, targets[..., None], 10.0, axis=2)
    got, _ = heatmaps_to_keypoints(maps.reshape(2, 4, m, m), rois)
    assert np.abs(got[..., :2] - kp[..., :2]).max() < 1.0


@given(seed=st.integers(0, 2**32 - 1), R=st.integers(0, 3), K=st.integers(1, 3),
       m=st.integers(1, 8), dtype=st.sampled_from([np.float32, np.float64]))
def test_decode_numba_equals_reference(seed, R, K, m, dtype):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(R, K, m, m)).astype(dtype)
    x1 = rng.uniform(-3, 20, R)
    y1 = rng.uniform(-3, 20, R)
    rois = np.stack([x1, y1, x1 + rng.uniform(-1, 25, R), y1 + rng.uniform(-1, 25, R)],
                    1).astype(dtype)
    want = heatmaps_to_keypoints(maps, rois, tier="numpy")
    got = heatmaps_to_keypoints(maps, rois, tier="numba")
    np.testing.assert_array_equal(got[0], want[0])  # same arithmetic in the same order
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == dtype
    if R:
        assert (want[0][..., 0] >= rois[:, 0:1]).all() and (want[0][..., 2] == 1).all()


def test_decode_bad_input():
    maps = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"rois must have shape \(2, 4\)"):
        heatmaps_to_keypoints(maps, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="square, non-empty maps"):
        heatmaps_to_keypoints(maps[..., :3], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="maps must have 4 dimensions"):
        heatmaps_to_keypoints(maps[0], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="rois contains NaN"):
        heatmaps_to_keypoints(maps, np.full((2, 4), np.nan, np.float32))


# --------------------------------------------------------------------------------------------
# CUDA tier (the simulator in CI: NUMBA_ENABLE_CUDASIM=1 pytest -m cuda; a GPU where there is one)
# --------------------------------------------------------------------------------------------

cuda_tier = pytest.mark.parametrize("gpu_tier", tier_params(("cuda",)))


@cuda_tier
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_cuda_equals_reference(gpu_tier, seed):
    kp, rois, m = _target_case(seed, 3, 3, 7)
    want = keypoints_to_heatmap(kp, rois, m, tier="numpy")
    got = keypoints_to_heatmap(kp, rois, m, tier=gpu_tier)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@cuda_tier
def test_loss_cuda_matches_reference_and_gradient(gpu_tier):
    logits, targets, valid = _loss_case(3, 2, 3, 4)
    want = keypoint_loss(logits, targets, valid, tier="numpy")
    got = keypoint_loss(logits, targets, valid, normalizer=float(valid.sum()), tier=gpu_tier)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    logits64, targets, valid = _loss_case(7, 2, 2, 3, dtype=np.float64)
    f = loss_function(keypoint_loss, targets, valid, tier=gpu_tier)
    gradcheck(f, [logits64], eps=1e-6, atol=1e-8, rtol=1e-5, directions=2, seeds=(0,))


@cuda_tier
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_cuda_matches_reference(gpu_tier, dtype):
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 2, 5, 5)).astype(dtype)
    rois = np.array([[1, 2, 9.5, 7], [3, 3, 3, 4]], dtype)
    want = heatmaps_to_keypoints(maps, rois, tier="numpy")
    got = heatmaps_to_keypoints(maps, rois, tier=gpu_tier)
    # bitwise on the simulator; a GPU may fuse multiply-adds (an ulp), so compare to rounding
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-5)
