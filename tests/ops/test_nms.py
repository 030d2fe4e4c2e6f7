"""nms and batched_nms: every tier against the reference, the greedy rule as properties,
hand-worked keep lists (including one that crosses a 64-box mask word), bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.ops import batched_nms, box_iou, nms
from minimaskrcnn.ops.nms.numba_cpu import greedy_scan_bitmask
from minimaskrcnn.ops.nms.reference import threshold_in_dtype

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# the `tier` fixture is a constant string: sharing it between hypothesis examples is fine
tier_settings = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def random_boxes(rng, n, dtype=np.float32, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(5, scale / 3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(dtype)
    return boxes, rng.random(n).astype(dtype)


def rank_of(scores):
    """Position of each box in the greedy order (decreasing score, then increasing index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    rank = np.empty(len(scores), np.int64)
    rank[order] = np.arange(len(scores))
    return rank


# ---------------------------------------------------------------- golden cases, worked by hand

GOLDEN_BOXES = np.array(
    [
        [0, 0, 10, 10],  # 0: score 0.9
        [1, 1, 11, 11],  # 1: score 0.8; IoU with 0: 81 / (100 + 100 - 81) = 0.68
        [0, 0, 10, 5],  # 2: score 0.95; IoU with 0: 50 / 100 = 0.5 exactly; with 1: 36 / 114
        [20, 20, 30, 30],  # 3: score 0.3
        [20, 20, 30, 29],  # 4: score 0.3, a tie with 3; IoU with 3: 90 / 100 = 0.9
    ],
    np.float32,
)
GOLDEN_SCORES = np.array([0.9, 0.8, 0.95, 0.3, 0.3], np.float32)


@pytest.mark.parametrize(
    "threshold, expected",
    [
        (0.5, [2, 0, 3]),  # IoU(2, 0) = 0.5 is not > 0.5: 0 stays and drops 1; 3 drops 4
        (0.49, [2, 1, 3]),  # now 2 drops 0, and 1 (IoU 0.32 with 2) survives
        (0.7, [2, 0, 1, 3]),  # 0.68 < 0.7: 1 survives 0
        (0.95, [2, 0, 1, 3, 4]),  # nothing overlaps that much
        (0.0, [2, 3]),  # any overlap suppresses
    ],
)
def test_nms_golden(tier, threshold, expected):
    keep = to_numpy(nms(GOLDEN_BOXES, GOLDEN_SCORES, threshold, tier=tier))
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, expected)


def test_nms_equal_scores_keep_lower_index(tier):
    a, b = [20, 20, 30, 29], [20, 20, 30, 30]  # IoU 0.9
    scores = np.array([0.3, 0.3], np.float64)
    for boxes in (np.array([a, b], np.float64), np.array([b, a], np.float64)):
        np.testing.assert_array_equal(to_numpy(nms(boxes, scores, 0.5, tier=tier)), [0])


def cross_word_case():
    """70 disjoint 5 x 5 boxes, scores decreasing with the index, plus two planted overlaps."""
    boxes = np.array([[10 * k, 0, 10 * k + 5, 5] for k in range(70)], np.float64)
    scores = 1 - np.arange(70) / 100
    boxes[66] = [10, 0, 15, 5.5]  # IoU with box 1: 25 / 27.5 = 0.91 -> dropped (word 1 by word 0)
    # a chain A (3) > B (65) > C (68): IoU(A, B) = IoU(B, C) = 80 / 120, IoU(A, C) = 60 / 140
    boxes[3] = [1000, 0, 1010, 10]
    boxes[65] = [1002, 0, 1012, 10]
    boxes[68] = [1004, 0, 1014, 10]
    # at 0.5, A drops B; B is dropped so it cannot drop C; C (IoU 0.43 with A) is kept
    expected = [k for k in range(70) if k not in (65, 66)]
    return boxes, scores, expected


def test_nms_across_mask_words(tier):
    boxes, scores, expected = cross_word_case()
    np.testing.assert_array_equal(to_numpy(nms(boxes, scores, 0.5, tier=tier)), expected)


def test_greedy_scan_bitmask_by_hand():
    # box 0 overlaps 1, box 1 overlaps 2; 1 is suppressed, so it does not suppress 2
    mask = np.array([[0b010], [0b100], [0]], np.uint64)
    keep = np.empty(3, np.int64)
    n = greedy_scan_bitmask(mask, keep)
    np.testing.assert_array_equal(keep[:n], [0, 2])


def test_batched_nms_golden(tier):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.6, 0.7, 0.1], np.float32)
    idxs = np.array([0, 1, 0, 1])
    # category 0: 2 (0.7) drops 0 (IoU 0.9); category 1: 1 and 3 do not overlap
    keep = to_numpy(batched_nms(boxes, scores, idxs, 0.5, tier=tier))
    np.testing.assert_array_equal(keep, [2, 1, 3])


# ---------------------------------------------------------------- every tier vs the reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_reference(fast_tier, dtype, threshold, rng):
    tier = fast_tier  # the reference against itself could not fail
    boxes, scores = random_boxes(rng, 70 if tier == "cuda" else 500, dtype)
    expected = nms(boxes, scores, threshold, tier="numpy")
    got = to_numpy(nms(boxes, scores, threshold, tier=tier))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_nms_default_tier(rng):
    boxes, scores = random_boxes(rng, 200)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), nms(boxes, scores, 0.5, tier="numpy"))


def test_nms_empty(tier):
    for dtype in (np.float32, np.float64):
        none = np.zeros((0, 4), dtype)
        keep = to_numpy(nms(none, np.zeros(0, dtype), 0.5, tier=tier))
        assert keep.shape == (0,) and keep.dtype == np.int64
        keep = to_numpy(batched_nms(none, np.zeros(0, dtype), np.zeros(0, np.int64), 0.5, tier=tier))
        assert keep.shape == (0,) and keep.dtype == np.int64


# ---------------------------------------------------------------- properties


@st.composite
def boxes_and_scores(draw, max_n=70):
    """Positive-size boxes on a small canvas (so many overlap) and scores with many ties."""
    n = draw(st.integers(1, max_n))
    xy = draw(arrays(np.float32, (n, 2), elements=st.integers(0, 40).map(float)))
    wh = draw(arrays(np.float32, (n, 2), elements=st.floats(1, 20, width=32)))
    scores = draw(arrays(np.float32, (n,), elements=st.integers(0, 9).map(lambda s: s / 10)))
    return np.concatenate([xy, xy + wh], axis=1), scores


@tier_settings
@given(data=boxes_and_scores(), threshold=st.sampled_from([0.0, 0.25, 0.5, 0.7]))
def test_nms_greedy_properties(tier, data, threshold):
    boxes, scores = data
    keep = to_numpy(nms(boxes, scores, threshold, tier=tier))
    np.testing.assert_array_equal(keep, nms(boxes, scores, threshold, tier="numpy"))
    rank = rank_of(scores)
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(rank[keep]) > 0)  # decreasing score, ties by index
    iou = box_iou(boxes, boxes, tier="numpy").astype(np.float64)
    kept_iou = iou[np.ix_(keep, keep)]
    assert np.all(kept_iou[~np.eye(len(keep), dtype=bool)] <= threshold)
    for d in np.setdiff1d(np.arange(len(boxes)), keep):
        earlier = keep[rank[keep] < rank[d]]
        assert np.any(iou[earlier, d] > threshold), f"box {d} dropped without a reason"


@tier_settings
@given(data=boxes_and_scores(), idx_seed=st.integers(0, 2**32 - 1))
def test_batched_nms_is_nms_per_category(tier, data, idx_seed):
    boxes, scores = data
    idxs = np.random.default_rng(idx_seed).integers(0, 3, len(boxes))
    kept = []
    for c in np.unique(idxs):
        members = np.flatnonzero(idxs == c)
        kept.extend(members[nms(boxes[members], scores[members], 0.5, tier="numpy")])
    kept = np.array(kept, np.int64)
    expected = kept[np.lexsort((kept, -scores[kept]))]
    got = to_numpy(batched_nms(boxes, scores, idxs, 0.5, tier=tier))
    np.testing.assert_array_equal(got, expected)


@given(x=st.floats(0, 1, width=32), t=st.floats(0, 1))
def test_threshold_in_float32_decides_like_float64(x, t):
    t32 = threshold_in_dtype(t, np.float32)
    for v in (np.float32(x), np.float32(t), np.nextafter(np.float32(t), np.float32(2))):
        assert (v > t32) == (float(v) > t)


# ---------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_argument():
    boxes = np.zeros((3, 4), np.float32)
    scores = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"boxes must have last dimension 4 \(expected \(N, 4\)"):
        nms(np.zeros((3, 5), np.float32), scores, 0.5)
    with pytest.raises(TypeError, match="boxes must be a floating"):
        nms(boxes.astype(np.int32), scores, 0.5)
    with pytest.raises(ValueError, match="scores must have 1 dimensions"):
        nms(boxes, scores[:, None], 0.5)
    with pytest.raises(ValueError, match="scores must have one entry per box"):
        nms(boxes, scores[:2], 0.5)
    with pytest.raises(TypeError, match="scores must be a floating"):
        nms(boxes, np.zeros(3, np.int64), 0.5)
    bad = boxes.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="boxes contains NaN or inf"):
        nms(bad, scores, 0.5)
    with pytest.raises(ValueError, match="scores contains NaN or inf"):
        nms(boxes, np.array([0, np.inf, 1], np.float32), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be >= 0"):
        nms(boxes, scores, -0.1)
    with pytest.raises(TypeError, match="iou_threshold must be a real number"):
        nms(boxes, scores, "0.5")
    with pytest.raises(TypeError, match="idxs must be an integer array"):
        batched_nms(boxes, scores, np.zeros(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="idxs must have one entry per box"):
        batched_nms(boxes, scores, np.zeros(4, np.int64), 0.5)
