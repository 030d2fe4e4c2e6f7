"""Box ops and BoxCoder: every tier against the NumPy reference, properties, hand-worked cases."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.ops import BoxCoder, box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.testing.tiers import tier_params

# Two empty boxes have IoU 0 / 0 = NaN (as in torchvision); the simulator warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# box_iou has every tier; area / clip / remove_small have no CuPy kernel.
ELEMENTWISE_TIERS = tier_params(("numpy", "numba", "cuda"))
FLOATS = [np.float32, np.float64]


def random_boxes(rng, n, dtype=np.float32, scale=50.0):
    """``n`` boxes with positive size, some overlapping, in a ``scale``-pixel square."""
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(1, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


# ---------------------------------------------------------------- golden cases, worked by hand


def test_box_iou_golden(tier):
    a = [0, 0, 2, 2]  # area 4
    b = [1, 1, 3, 3]  # overlaps a in [1, 2] x [1, 2]: inter 1, union 4 + 4 - 1 = 7
    c = [0, 0, 1, 1]  # inside a: inter 1, union 4
    d = [2, 0, 4, 2]  # shares a's right edge: inter 0
    e = [10, 10, 12, 12]  # far away
    boxes1 = np.array([a, c], np.float32)
    boxes2 = np.array([a, b, d, e], np.float32)
    expected = [[1, 1 / 7, 0, 0], [1 / 4, 0, 0, 0]]
    iou = to_numpy(box_iou(boxes1, boxes2, tier=tier))
    assert iou.dtype == np.float32 and iou.shape == (2, 4)
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_box_iou_two_empty_boxes_is_nan_like_torchvision():
    point = np.array([[1, 1, 1, 1]], np.float64)
    assert np.isnan(box_iou(point, point, tier="numpy")[0, 0])
    assert np.isnan(box_iou(point, point, tier="numba")[0, 0])


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
def test_box_area_golden(tier):
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [2, 2, 1, 1], [0.5, 0, 1, 0.5]], np.float64)
    # 2 * 3; zero width; inverted box: (-1) * (-1) as torchvision computes it; 0.5 * 0.5
    np.testing.assert_array_equal(to_numpy(box_area(boxes, tier=tier)), [6, 0, 1, 0.25])


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
def test_clip_boxes_golden(tier):
    boxes = np.array([[-5, -1, 50, 30], [1, 2, 3, 4], [45, 25, 46, 26]], np.float32)
    h, w = 20, 40  # size is (H, W): x goes to [0, 40], y to [0, 20]
    expected = [[0, 0, 40, 20], [1, 2, 3, 4], [40, 20, 40, 20]]
    out = to_numpy(clip_boxes_to_image(boxes, (h, w), tier=tier))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
def test_clip_boxes_keeps_leading_shape(tier, rng):
    boxes = random_boxes(rng, 6).reshape(2, 3, 4) - 10  # (R, K, 4) like the box head's output
    out = to_numpy(clip_boxes_to_image(boxes, (30, 20), tier=tier))
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[..., 0::2], np.clip(boxes[..., 0::2], 0, 20))
    np.testing.assert_array_equal(out[..., 1::2], np.clip(boxes[..., 1::2], 0, 30))


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
def test_remove_small_boxes_golden(tier):
    boxes = np.array([[0, 0, 2, 2], [0, 0, 1, 3], [0, 0, 3, 1.5], [5, 5, 6.4, 9]], np.float32)
    # sizes (w, h): (2, 2), (1, 3), (3, 1.5), (1.4, 4); min_size 1.5 keeps >= on both axes
    keep = to_numpy(remove_small_boxes(boxes, 1.5, tier=tier))
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, [0, 2])


# ---------------------------------------------------------------- every tier vs the reference


@pytest.mark.parametrize("dtype", FLOATS)
def test_box_iou_matches_reference(fast_tier, dtype, rng):
    tier = fast_tier  # the reference against itself could not fail
    n, m = (11, 7) if tier == "cuda" else (60, 45)
    boxes1, boxes2 = random_boxes(rng, n, dtype), random_boxes(rng, m, dtype)
    boxes1[0] = boxes2[0]  # one exact match: IoU 1
    expected = box_iou(boxes1, boxes2, tier="numpy")
    got = to_numpy(box_iou(boxes1, boxes2, tier=tier))
    assert got.dtype == dtype and got.shape == (n, m)
    rtol = 1e-6 if dtype == np.float32 else 1e-12  # a GPU may fuse multiply-adds
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_elementwise_ops_match_reference(tier, dtype, rng):
    boxes = random_boxes(rng, 9 if tier == "cuda" else 100, dtype) - 5
    np.testing.assert_allclose(to_numpy(box_area(boxes, tier=tier)), box_area(boxes, tier="numpy"))
    clipped = to_numpy(clip_boxes_to_image(boxes, (30, 40), tier=tier))
    np.testing.assert_array_equal(clipped, clip_boxes_to_image(boxes, (30, 40), tier="numpy"))
    assert clipped.dtype == dtype
    keep = to_numpy(remove_small_boxes(boxes, 10, tier=tier))
    np.testing.assert_array_equal(keep, remove_small_boxes(boxes, 10, tier="numpy"))


def test_box_iou_empty(tier):
    some = np.ones((3, 4), np.float32)
    none = np.zeros((0, 4), np.float32)
    for b1, b2, shape in [(none, some, (0, 3)), (some, none, (3, 0)), (none, none, (0, 0))]:
        out = to_numpy(box_iou(b1, b2, tier=tier))
        assert out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("tier", ELEMENTWISE_TIERS)
def test_elementwise_ops_empty(tier):
    none = np.zeros((0, 4), np.float64)
    area = to_numpy(box_area(none, tier=tier))
    assert area.shape == (0,) and area.dtype == np.float64
    clipped = to_numpy(clip_boxes_to_image(none, (5, 5), tier=tier))
    assert clipped.shape == (0, 4) and clipped.dtype == np.float64
    keep = to_numpy(remove_small_boxes(none, 1.0, tier=tier))
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_box_iou_promotes_mixed_dtypes():
    out = box_iou(np.ones((1, 4), np.float32) * [0, 0, 1, 1], np.array([[0, 0, 1, 1.0]]))
    assert out.dtype == np.float64 and out[0, 0] == 1


# ---------------------------------------------------------------- properties


@st.composite
def positive_boxes(draw, max_n=8, min_side=0.5, max_side=100.0):
    """float64 boxes with width and height in ``[min_side, max_side]`` pixels."""
    n = draw(st.integers(1, max_n))
    coord = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
    side = st.floats(min_side, max_side, allow_nan=False, allow_infinity=False)
    xy = draw(arrays(np.float64, (n, 2), elements=coord))
    wh = draw(arrays(np.float64, (n, 2), elements=side))
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("tier", ["numpy", "numba"])
@given(a=positive_boxes(), b=positive_boxes())
def test_box_iou_properties(tier, a, b):
    iou_ab = box_iou(a, b, tier=tier)
    iou_ba = box_iou(b, a, tier=tier)
    np.testing.assert_array_equal(iou_ab, iou_ba.T)  # symmetric, exactly
    assert np.all((iou_ab >= 0) & (iou_ab <= 1))
    np.testing.assert_array_equal(np.diag(box_iou(a, a, tier=tier)), 1.0)  # IoU(a, a) = 1


@given(boxes=positive_boxes(20, 1, 50), proposals=positive_boxes(20, 1, 50),
       weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_decode_inverts_encode(boxes, proposals, weights):
    n = min(len(boxes), len(proposals))
    boxes, proposals = boxes[:n], proposals[:n]
    coder = BoxCoder(weights)
    # sizes in [1, 50]: size ratios <= 50 < 1000 / 16, so decoding never hits the clamp
    assert np.all(coder.encode(boxes, proposals)[:, 2:] / weights[2:] < coder.bbox_xform_clip)
    decoded = coder.decode(coder.encode(boxes, proposals), proposals)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- BoxCoder golden cases


def test_box_coder_golden():
    proposal = np.array([[0, 0, 10, 10]], np.float64)  # centre (5, 5), 10 x 10
    target = np.array([[5, 0, 15, 20]], np.float64)  # centre (10, 10), 10 x 20
    # dx = (10 - 5) / 10, dy = (10 - 5) / 10, dw = log(10 / 10), dh = log(20 / 10)
    np.testing.assert_allclose(BoxCoder((1, 1, 1, 1)).encode(target, proposal),
                               [[0.5, 0.5, 0.0, math.log(2)]], rtol=1e-12)
    np.testing.assert_allclose(BoxCoder((10, 10, 5, 5)).encode(target, proposal),
                               [[5.0, 5.0, 0.0, 5 * math.log(2)]], rtol=1e-12)


def test_box_coder_decode_several_classes_and_clamp():
    coder = BoxCoder((1, 1, 1, 1))
    proposal = np.array([[0, 0, 10, 10]], np.float32)
    codes = np.array([[0, 0, 0, 0, 0.5, 0.5, 0, math.log(2), 0, 0, 10, 0]], np.float32)
    # class 0: zero codes give the proposal back; class 1: the golden target above;
    # class 2: dw = 10 is clamped to log(1000 / 16), width 10 * 62.5 = 625 around centre x = 5
    expected = [[0, 0, 10, 10, 5, 0, 15, 20, 5 - 312.5, 0, 5 + 312.5, 10]]
    out = coder.decode(codes, proposal)
    assert out.shape == (1, 12) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_box_coder_keeps_float32_and_empty():
    coder = BoxCoder((10, 10, 5, 5))
    b = np.array([[0, 0, 4, 4]], np.float32)
    assert coder.encode(b, b).dtype == np.float32
    assert coder.decode(coder.encode(b, b), b).dtype == np.float32
    none = np.zeros((0, 4), np.float32)
    assert coder.encode(none, none).shape == (0, 4)
    assert coder.decode(np.zeros((0, 8), np.float32), none).shape == (0, 8)


# ---------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_argument():
    good = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"boxes2 .*\(N, 4\)"):
        box_iou(good, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="boxes1 must have 2 dimensions"):
        box_iou(np.zeros(4, np.float32), good)
    with pytest.raises(TypeError, match="boxes1 must be a floating"):
        box_iou(np.zeros((2, 4), np.int64), good)
    with pytest.raises(TypeError, match="boxes1 must be float32 or float64"):
        box_iou(np.zeros((2, 4), np.float16), good)
    with pytest.raises(TypeError, match="boxes must be an array"):
        box_area([[0, 0, 1, 1]])
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="boxes contains NaN or inf"):
        box_area(bad)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="boxes2 contains NaN or inf"):
        box_iou(good, bad)
    with pytest.raises(ValueError, match="min_size must be >= 0"):
        remove_small_boxes(good, -1)
    with pytest.raises(TypeError, match="size must be a pair"):
        clip_boxes_to_image(good, 10)
    with pytest.raises(ValueError, match="image height"):
        clip_boxes_to_image(good, (-1, 10))


def test_box_coder_bad_input():
    with pytest.raises(TypeError, match="weights"):
        BoxCoder((1, 1, 1))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1, 1, 0, 1))
    coder = BoxCoder((1, 1, 1, 1))
    b = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="same number of rows"):
        coder.encode(b, b[:1])
    with pytest.raises(ValueError, match="rel_codes must have a multiple of 4"):
        coder.decode(np.zeros((2, 6), np.float32), b)
    with pytest.raises(ValueError, match="same number of rows"):
        coder.decode(np.zeros((3, 4), np.float32), b)
    with pytest.raises(ValueError, match="rel_codes contains NaN"):
        coder.decode(np.full((2, 4), np.nan, np.float32), b)
