"""Mask-head ops: hand-worked cases, every tier against the NumPy reference, gradients, errors.

Simulator-friendly sizes throughout (at most 3 masks/RoIs, M <= 8, images <= 12 x 12).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimaskrcnn.ops.mask_ops import (
    expand_boxes_to_int,
    mask_loss,
    mask_loss_backward,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from minimaskrcnn.testing.gradcheck import gradcheck, loss_function
from minimaskrcnn.testing.tiers import tier_params

# Direct parametrisation (not the fast_tier fixture): hypothesis refuses function-scoped fixtures.
fast_tiers = pytest.mark.parametrize("fast_tier", tier_params(("numba", "cuda", "cupy")))

# --------------------------------------------------------------------------------------------
# project_masks_on_boxes: golden cases
# --------------------------------------------------------------------------------------------


def test_project_box_covering_all_ones_mask_gives_ones(tier):
    # Box [0, 0, 4, 4] over a 4x4 mask, M = 4: one sample per bin at the bin centre
    # (0.5, 1.5, 2.5, 3.5); every bilinear sample of an all-ones mask is 1.
    masks = np.ones((1, 4, 4), np.uint8)
    out = project_masks_on_boxes(masks, np.array([[0, 0, 4, 4]], np.float32),
                                 np.array([0]), 4, tier=tier)
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.ones((1, 4, 4)), atol=1e-6)


def test_project_half_mask_by_hand(tier):
    # Left two columns on. Box [0, 0, 4, 4], M = 2: bins 2 px wide, adaptive grid ceil(4/2) = 2,
    # samples at x = 0.5, 1.5 | 2.5, 3.5. Interpolated: x=0.5 -> 1, x=1.5 -> (1+0)/2 = 0.5,
    # x=2.5 -> 0, x=3.5 -> last column alone -> 0. Bin means: 0.75 and 0; rows are constant.
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, :, :2] = 1
    out = project_masks_on_boxes(mask, np.array([[0, 0, 4, 4]], np.float32), np.array([0]), 2,
                                 tier=tier)
    np.testing.assert_allclose(out[0], [[0.75, 0.0], [0.75, 0.0]], atol=1e-6)


def test_project_small_box_clamped_to_one_pixel_and_matched_index(tier):
    # Box [1, 1, 1.5, 1.5] is 0.5 px wide; aligned=False clamps it to 1 px, so M = 1 takes one
    # sample at (1.5, 1.5): rows 1, 2 and columns 1, 2 with weights 1/4 each. Mask 1 has
    # cells (1, 1) and (1, 2) on -> 0.5. Mask 0 (all zeros) is ignored by matched_idxs.
    masks = np.zeros((2, 3, 3), np.uint8)
    masks[1, 1, 1:] = 1
    boxes = np.array([[1, 1, 1.5, 1.5], [1, 1, 1.5, 1.5]], np.float32)
    out = project_masks_on_boxes(masks, boxes, np.array([1, 0]), 1, tier=tier)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 0.0], atol=1e-6)


def test_project_box_outside_the_mask_gives_zeros(tier):
    # Samples more than one pixel beyond the map (x > W) contribute 0.
    masks = np.ones((1, 4, 4), np.uint8)
    out = project_masks_on_boxes(masks, np.array([[6, 0, 10, 4]], np.float32), np.array([0]), 2,
                                 tier=tier)
    np.testing.assert_array_equal(out, np.zeros((1, 2, 2)))


def test_project_empty(tier):
    for masks in (np.ones((2, 5, 5), np.uint8), np.zeros((0, 5, 5), np.uint8)):
        out = project_masks_on_boxes(masks, np.zeros((0, 4), np.float32),
                                     np.zeros(0, np.int64), 6, tier=tier)
        assert out.shape == (0, 6, 6) and out.dtype == np.float32


def _project_case(seed, R, M):
    rng = np.random.default_rng(seed)
    G, H, W = int(rng.integers(1, 4)), int(rng.integers(1, 11)), int(rng.integers(1, 11))
    masks = (rng.random((G, H, W)) > 0.5).astype(np.uint8)
    xy = rng.uniform(-3, 12, size=(R, 2))
    wh = rng.exponential(4, size=(R, 2)) * (rng.random((R, 1)) > 0.2)  # some empty boxes
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return masks, boxes, rng.integers(0, G, R)


@fast_tiers
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 3), M=st.integers(1, 8))
def test_project_matches_reference(fast_tier, seed, R, M):
    masks, boxes, idx = _project_case(seed, R, M)
    want = project_masks_on_boxes(masks, boxes, idx, M, tier="numpy")
    got = project_masks_on_boxes(masks, boxes, idx, M, tier=fast_tier)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (want >= 0).all() and (want <= 1 + 1e-6).all()


def test_project_equals_roi_align_on_the_same_inputs(tier):
    # torchvision defines the targets as roi_align(masks[:, None], [idx, box], M, 1, -1, False);
    # every tier's target kernel must give exactly that (the reference calls roi_align itself).
    from minimaskrcnn.ops import roi_align

    for seed in range(5):
        masks, boxes, idx = _project_case(seed, 3, 5)
        rois = np.concatenate([idx[:, None].astype(np.float32), boxes], axis=1)
        want = roi_align(masks[:, None].astype(np.float32), rois, 5, 1.0, -1, False,
                         tier=tier)[:, 0]
        got = project_masks_on_boxes(masks, boxes, idx, 5, tier=tier)
        np.testing.assert_array_equal(got, want)


def test_project_accepts_bool_and_float_masks(tier):
    # uint8 is read as is by the kernels; bool is viewed as uint8; floats are converted.
    masks, boxes, idx = _project_case(11, 3, 4)
    want = project_masks_on_boxes(masks, boxes, idx, 4, tier="numpy")
    for m in (masks.astype(bool), masks.astype(np.float32), masks.astype(np.float64)):
        got = project_masks_on_boxes(m, boxes, idx, 4, tier=tier)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_project_float64_boxes_give_float64(tier):
    masks = np.ones((1, 4, 4), np.uint8)
    out = project_masks_on_boxes(masks, np.array([[0.5, 0.5, 3, 3]]), np.array([0]), 2, tier=tier)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, 1.0)


def test_project_bad_input():
    masks, boxes, idx = np.ones((2, 4, 4), np.uint8), np.ones((3, 4), np.float32), np.zeros(3, int)
    with pytest.raises(ValueError, match="gt_masks"):
        project_masks_on_boxes(masks[0], boxes, idx, 4)
    with pytest.raises(ValueError, match="boxes"):
        project_masks_on_boxes(masks, boxes[:, :3], idx, 4)
    with pytest.raises(TypeError, match="boxes"):
        project_masks_on_boxes(masks, boxes.astype(np.int64), idx, 4)
    with pytest.raises(ValueError, match="NaN"):
        project_masks_on_boxes(masks, np.full((3, 4), np.nan, np.float32), idx, 4)
    with pytest.raises(ValueError, match="matched_idxs"):
        project_masks_on_boxes(masks, boxes, idx[:2], 4)
    with pytest.raises(ValueError, match=r"matched_idxs must lie in \[0, G\)"):
        project_masks_on_boxes(masks, boxes, np.array([0, 2, 1]), 4)
    with pytest.raises(ValueError, match="matched_idxs"):
        project_masks_on_boxes(masks, boxes, np.array([0, -1, 1]), 4)
    with pytest.raises(TypeError, match="matched_idxs"):
        project_masks_on_boxes(masks, boxes, idx.astype(np.float32), 4)
    with pytest.raises(ValueError, match="M"):
        project_masks_on_boxes(masks, boxes, idx, 0)
    with pytest.raises(TypeError, match="M"):
        project_masks_on_boxes(masks, boxes, idx, 2.0)


# --------------------------------------------------------------------------------------------
# mask_loss
# --------------------------------------------------------------------------------------------


def test_sigmoid_loss_constant_logit_by_hand(tier):
    # x = 0 everywhere: BCE(0, t) = log 2 whatever t; gradient (sigmoid(0) - t) / (R M M)
    # = (0.5 - 0.25) / 32 on the label's channel, 0 on the two others.
    R, K, M = 2, 3, 4
    logits = np.zeros((R, K, M, M), np.float32)
    targets = np.full((R, M, M), 0.25, np.float32)
    loss, grad = mask_loss(logits, np.array([2, 3]), targets, tier=tier)
    assert isinstance(loss, float) and grad.dtype == np.float32 and grad.shape == (R, K, M, M)
    assert loss == pytest.approx(math.log(2), rel=1e-6)
    want = np.zeros((R, K, M, M))
    want[0, 1] = want[1, 2] = 0.25 / 32
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-9)


def test_sigmoid_loss_extreme_logits_are_stable(tier):
    # x = +100, t = 1: loss ~ exp(-100) ~ 0; x = -100, t = 1: loss = 100 (softplus form, no inf).
    logits = np.array([100.0, -100.0], np.float32).reshape(2, 1, 1, 1)
    targets = np.ones((2, 1, 1), np.float32)
    loss, grad = mask_loss(logits, np.array([1, 1]), targets, tier=tier)
    assert loss == pytest.approx(100 / 2, rel=1e-6)
    np.testing.assert_allclose(grad.ravel(), [0.0, -0.5], atol=1e-7)
    assert np.isfinite(grad).all()


def test_softmax_loss_constant_logit_by_hand(tier):
    # K = 3 logits 0 plus the background's 0: p = 1/4 each, per pixel loss = log 4 - t * 0;
    # gradient (1/4 - t [k == c]) / (R M M) with t = 0.6, R M M = 1 * 2 * 2.
    logits = np.zeros((1, 3, 2, 2), np.float32)
    targets = np.full((1, 2, 2), 0.6, np.float32)
    loss, grad = mask_loss(logits, np.array([2]), targets, mode="softmax", tier=tier)
    assert loss == pytest.approx(math.log(4), rel=1e-6)
    want = np.full((1, 3, 2, 2), 0.25 / 4)
    want[0, 1] = (0.25 - 0.6) / 4
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def _loss_case(seed, R, K, M, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((R, K, M, M)) * 3).astype(dtype)
    labels = rng.integers(1, K + 1, R)
    targets = rng.random((R, M, M)).astype(dtype)
    targets[rng.random((R, M, M)) < 0.3] = 0  # hard and soft targets mixed
    return logits, labels, targets


def test_softmax_with_one_class_equals_sigmoid(tier):
    # K = 1: p_1 = exp(x) / (1 + exp(x)) = sigmoid(x), so the two modes coincide (nuclei-mini).
    logits, labels, targets = _loss_case(3, 3, 1, 4)
    ls, gs = mask_loss(logits, labels, targets, mode="sigmoid", tier=tier)
    lm, gm = mask_loss(logits, labels, targets, mode="softmax", tier=tier)
    assert lm == pytest.approx(ls, rel=1e-6)
    np.testing.assert_allclose(gm, gs, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@fast_tiers
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 3), K=st.integers(1, 3),
       M=st.integers(1, 6))
def test_loss_matches_reference(fast_tier, mode, seed, R, K, M):
    logits, labels, targets = _loss_case(seed, R, K, M)
    want_loss, want_grad = mask_loss(logits, labels, targets, mode=mode, tier="numpy")
    loss, grad = mask_loss(logits, labels, targets, mode=mode, tier=fast_tier)
    # float32 per-pixel terms: the tiers' expf/log1pf differ from NumPy's by an ulp or two, and
    # log-sum-exp minus target * logit cancels, so compare on the loss's O(1) scale
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert grad.dtype == logits.dtype
    # gradients are O(1 / (R M M)); p_c - t cancels, so the tolerance is absolute on that scale
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6 / (R * M * M))
    if mode == "sigmoid":  # only the label's channel carries gradient
        other = np.ones(grad.shape, bool)
        other[np.arange(R), labels - 1] = False
        assert (grad[other] == 0).all()


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_loss_gradient_numerically_float64(tier, mode):
    logits, labels, targets = _loss_case(7, 2, 3, 3, dtype=np.float64)
    f = loss_function(mask_loss, labels, targets, mode=mode, tier=tier)
    # every element on the CPU tiers; two random directions on the (slow) CUDA simulator
    cheap = {"directions": 2, "seeds": (0,)} if tier in ("cuda", "cupy") else {}
    gradcheck(f, [logits], eps=1e-6, atol=1e-8, rtol=1e-5, **cheap)


def test_loss_empty(tier):
    loss, grad = mask_loss(np.zeros((0, 2, 5, 5), np.float32), np.zeros(0, np.int64),
                           np.zeros((0, 5, 5), np.float32), tier=tier)
    assert loss == 0.0 and grad.shape == (0, 2, 5, 5) and grad.dtype == np.float32


def test_mask_loss_backward_scales():
    logits, labels, targets = _loss_case(1, 2, 2, 3)
    _, grad = mask_loss(logits, labels, targets, tier="numpy")
    out = mask_loss_backward(0.5, grad)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, grad * 0.5)
    with pytest.raises(ValueError, match="grad"):
        mask_loss_backward(1.0, grad[0])


def test_loss_bad_input():
    logits, labels, targets = _loss_case(0, 2, 3, 4)
    with pytest.raises(ValueError, match="mask_logits"):
        mask_loss(logits[0], labels, targets)
    with pytest.raises(ValueError, match="square"):
        mask_loss(logits[..., :3], labels, targets)
    with pytest.raises(ValueError, match="labels"):
        mask_loss(logits, labels[:1], targets)
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.K"):
        mask_loss(logits, np.array([0, 1]), targets)
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.K"):
        mask_loss(logits, np.array([1, 4]), targets)
    with pytest.raises(TypeError, match="labels"):
        mask_loss(logits, labels.astype(np.float32), targets)
    with pytest.raises(ValueError, match="mask_targets"):
        mask_loss(logits, labels, targets[:, :3])
    with pytest.raises(TypeError, match="mask_targets"):
        mask_loss(logits, labels, targets.astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        mask_loss(np.full_like(logits, np.nan), labels, targets)
    with pytest.raises(ValueError, match="mode"):
        mask_loss(logits, labels, targets, mode="hinge")
    with pytest.raises(TypeError, match="mask_logits"):
        mask_loss(logits.astype(np.float16), labels, targets)


# --------------------------------------------------------------------------------------------
# paste_masks_in_image
# --------------------------------------------------------------------------------------------


def test_paste_2x2_mask_into_2x2_box_without_padding(tier):
    # padding 0: scale 1, integer box (0, 0, 1, 1) covers pixels 0..1 (torchvision's +1), so
    # w = h = 2 and the 2x2 resize is the identity.
    mask = np.array([[[0.1, 0.2], [0.3, 0.4]]], np.float32)
    out = paste_masks_in_image(mask, np.array([[0, 0, 1, 1]], np.float32), (3, 4), padding=0,
                               tier=tier)
    want = np.zeros((1, 3, 4))
    want[0, :2, :2] = mask[0]
    assert out.shape == (1, 3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-7)


# Padded 2x2 ones mask (4x4: ones in the middle) resized to 5 along each axis, scale 4/5:
# dst 0 -> src -0.1 -> 0 -> 0; dst 1 -> 0.7 -> 0.3*0 + 0.7*1; dst 2 -> 1.5 -> 1; dst 3 -> 2.3
# -> 0.7*1 + 0.3*0; dst 4 -> 3.1 -> last cell alone -> 0.
PROFILE = np.array([0.0, 0.7, 1.0, 0.7, 0.0])


def test_paste_with_padding_by_hand(tier):
    # Box [2, 2, 4, 4], M = 2, padding 1: scale (2 + 2)/2 = 2 about the centre 3 -> [1, 1, 5, 5],
    # w = h = 5 pixels at rows/columns 1..5; the patch is the outer product of PROFILE.
    out = paste_masks_in_image(np.ones((1, 2, 2), np.float32),
                               np.array([[2, 2, 4, 4]], np.float32), (8, 8), tier=tier)
    want = np.zeros((1, 8, 8))
    want[0, 1:6, 1:6] = np.outer(PROFILE, PROFILE)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_paste_clips_at_the_image_border(tier):
    masks = np.ones((2, 2, 2), np.float32)
    # box 0 as above in a 4x4 image: only patch rows/cols 0..2 land (image rows/cols 1..3).
    # box 1 [-2, -2, 0, 0] expands to [-3, -3, 1, 1]: image rows/cols 0..1 = patch 3..4.
    boxes = np.array([[2, 2, 4, 4], [-2, -2, 0, 0]], np.float32)
    out = paste_masks_in_image(masks, boxes, (4, 4), tier=tier)
    want = np.zeros((2, 4, 4))
    want[0, 1:4, 1:4] = np.outer(PROFILE, PROFILE)[:3, :3]
    want[1, 0:2, 0:2] = np.outer(PROFILE, PROFILE)[3:, 3:]
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_expand_boxes_truncates_toward_zero():
    # Box [-0.35, 0, 0.35, 2], M = 2, padding 1 (scale 2): x half-width 0.7 about 0 -> [-0.7, 0.7]
    # -> ints 0 and 0 (truncation, not floor); y [1 - 2, 1 + 2] = [-1, 3].
    out = expand_boxes_to_int(np.array([[-0.35, 0, 0.35, 2]], np.float32), 2, 1)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, -1, 0, 3]])


def test_paste_box_outside_the_image_pastes_nothing(tier):
    out = paste_masks_in_image(np.ones((1, 2, 2), np.float32),
                               np.array([[20, 20, 24, 24]], np.float32), (6, 6), tier=tier)
    np.testing.assert_array_equal(out, np.zeros((1, 6, 6)))


def test_paste_empty(tier):
    out = paste_masks_in_image(np.zeros((0, 4, 4), np.float32), np.zeros((0, 4), np.float32),
                               (5, 7), tier=tier)
    assert out.shape == (0, 5, 7) and out.dtype == np.float32
    out = paste_masks_in_image(np.ones((2, 4, 4), np.float32), np.ones((2, 4), np.float32),
                               (0, 7), tier=tier)
    assert out.shape == (2, 0, 7)


@fast_tiers
@given(seed=st.integers(0, 2**32 - 1), D=st.integers(1, 3), M=st.integers(1, 8),
       padding=st.integers(0, 2))
def test_paste_matches_reference(fast_tier, seed, D, M, padding):
    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    masks = rng.random((D, M, M)).astype(np.float32)
    xy = rng.uniform(-2, 12, size=(D, 2))
    boxes = np.concatenate([xy, xy + rng.exponential(4, size=(D, 2))], 1).astype(np.float32)
    want = paste_masks_in_image(masks, boxes, (H, W), padding, tier="numpy")
    got = paste_masks_in_image(masks, boxes, (H, W), padding, tier=fast_tier)
    assert got.dtype == np.float32 and got.shape == (D, H, W)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (want >= 0).all() and (want <= 1).all()


def test_paste_bad_input():
    masks, boxes = np.ones((2, 4, 4), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="masks"):
        paste_masks_in_image(masks[0], boxes, (5, 5))
    with pytest.raises(ValueError, match="square"):
        paste_masks_in_image(masks[:, :3], boxes, (5, 5))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(masks, boxes[:1], (5, 5))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(masks, np.full((2, 4), np.inf, np.float32), (5, 5))
    with pytest.raises(TypeError, match="image_shape"):
        paste_masks_in_image(masks, boxes, 5)
    with pytest.raises(TypeError, match=r"image_shape\[0\]"):
        paste_masks_in_image(masks, boxes, (5.0, 5))
    with pytest.raises(ValueError, match="padding"):
        paste_masks_in_image(masks, boxes, (5, 5), padding=-1)
    with pytest.raises(TypeError, match="masks"):
        paste_masks_in_image(masks.astype(np.uint8), boxes, (5, 5))


def test_paste_binary_masks_in_chunks_equals_pasting_at_once(monkeypatch):
    """A 3000 x 3000 image with 500 detections would need a (500, 3000, 3000) float32 array if
    pasted at once (16.8 GiB): paste_binary_masks pastes a few masks at a time, so the float
    scratch stays under chunk_bytes, and gives exactly the thresholded one-shot paste (dense
    bool, or COCO RLEs that decode to it)."""
    from pycocotools import mask as mask_utils

    import minimaskrcnn.ops.mask_ops as mo
    from minimaskrcnn.ops import paste_binary_masks

    rng = np.random.default_rng(0)
    D, H, W = 7, 40, 50
    masks = rng.random((D, 28, 28)).astype(np.float32)
    xy = rng.uniform(0, 30, (D, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 20, (D, 2))], axis=1).astype(np.float32)
    want = paste_masks_in_image(masks, boxes, (H, W)) >= 0.5
    sizes = []
    real = mo.paste_masks_in_image

    def spy(m, *args, **kwargs):
        sizes.append(m.shape[0])
        return real(m, *args, **kwargs)

    monkeypatch.setattr(mo, "paste_masks_in_image", spy)
    chunk = 2 * 4 * H * W  # room for two float32 masks of the image
    dense = paste_binary_masks(masks, boxes, (H, W), 0.5, chunk_bytes=chunk)
    assert sizes == [2, 2, 2, 1]  # never more than two masks of float scratch at once
    np.testing.assert_array_equal(dense, want)
    assert dense.dtype == bool and dense.shape == (D, H, W)
    rles = paste_binary_masks(masks, boxes, (H, W), 0.5, chunk_bytes=chunk, rle=True)
    assert len(rles) == D
    np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1).astype(bool), want)
    empty = paste_binary_masks(masks[:0], boxes[:0], (H, W), 0.5, rle=True)
    assert empty == []
    with pytest.raises(ValueError, match="threshold must"):
        paste_binary_masks(masks, boxes, (H, W), float("nan"))
