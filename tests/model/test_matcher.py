"""Matcher: torchvision's semantics on hand-worked matrices (thresholds, ties, low-quality)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minimaskrcnn.model.matcher import Matcher

BG, IGN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thresholds_exactly_at_the_boundaries(dtype):
    # RPN matcher: >= 0.7 match, [0.3, 0.7) ignored, < 0.3 background.
    q = np.array([[0.7, 0.69, 0.3, 0.29, 0.0, 1.0]], dtype=dtype)
    out = Matcher(0.7, 0.3)(q)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [0, IGN, IGN, BG, BG, 0])


def test_equal_thresholds_never_ignore():
    # RoI-heads matcher: high == low == 0.5, so nothing falls between.
    q = np.array([[0.5, 0.4999, 0.2], [0.1, 0.1, 0.6]])
    np.testing.assert_array_equal(Matcher(0.5, 0.5)(q), [0, BG, 1])


def test_ties_between_ground_truths_go_to_the_lowest_index():
    q = np.array([[0.8, 0.5, 0.75],
                  [0.8, 0.9, 0.75],
                  [0.1, 0.9, 0.75]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(q), [0, 1, 0])


def test_low_quality_matches_ties_and_argmax_reassignment():
    # GT0's best is 0.4, attained by predictions 1 and 2 (a tie); GT1's best is 0.6 at prediction 3.
    q = np.array([[0.1, 0.4, 0.4, 0.2],
                  [0.0, 0.5, 0.1, 0.6]])
    # argmax per prediction: GT0 (0.1), GT1 (0.5), GT0 (0.4), GT1 (0.6)
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(q), [BG, IGN, IGN, IGN])
    # Predictions 1, 2, 3 are some GT's best: each gets ITS OWN argmax back. Prediction 1 is GT0's
    # best but goes to GT1 (its argmax), as in torchvision.
    np.testing.assert_array_equal(Matcher(0.7, 0.3, allow_low_quality_matches=True)(q),
                                  [BG, 1, 0, 1])


def test_low_quality_does_not_touch_predictions_that_are_nobodys_best():
    q = np.array([[0.9, 0.2, 0.1],
                  [0.1, 0.5, 0.05]])
    # pred 0 -> GT0 (0.9 >= 0.7); pred 1 is GT1's best (0.5) -> 1; pred 2 -> background.
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(q), [0, 1, BG])


def test_ground_truth_overlapping_nothing_matches_every_zero_prediction():
    # torchvision quirk kept: GT0 overlaps nothing, its "best" quality 0 is attained by every
    # prediction, so all of them get their argmax back (pred 1 ties at 0 -> GT0).
    q = np.array([[0.0, 0.0, 0.0],
                  [0.9, 0.0, 0.2]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(q), [1, BG, BG])
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(q), [1, 0, 1])


def test_empty_ground_truths_give_all_background():
    for allow in (False, True):
        out = Matcher(0.7, 0.3, allow)(np.zeros((0, 5), np.float32))
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, [BG] * 5)


def test_empty_predictions_and_both_empty():
    for shape in [(3, 0), (0, 0)]:
        out = Matcher(0.5, 0.5, True)(np.zeros(shape, np.float32))
        assert out.shape == (0,) and out.dtype == np.int64


def test_bad_input():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(TypeError, match="high_threshold"):
        Matcher("0.7", 0.3)
    m = Matcher(0.7, 0.3)
    with pytest.raises(ValueError, match="match_quality_matrix"):
        m(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        m(np.array([[np.nan, 0.5]]))
    with pytest.raises(TypeError, match="match_quality_matrix"):
        m(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="match_quality_matrix"):
        m([[0.5]])


def _loop_matcher(q, high, low, allow):
    """The rule written out one element at a time (a second, independent transcription)."""
    num_gt, num_pred = q.shape
    out = []
    for n in range(num_pred):
        best_g = 0
        for g in range(1, num_gt):
            if q[g, n] > q[best_g, n]:
                best_g = g
        v = q[best_g, n]
        label = best_g if v >= high else (IGN if v >= low else BG)
        if allow and any(q[g, n] == max(q[g, :]) for g in range(num_gt)):
            label = best_g
        out.append(label)
    return np.array(out, dtype=np.int64)


@given(
    q=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 7)),
             elements=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])),
    allow=st.booleans(),
)
def test_matches_elementwise_transcription(q, allow):
    np.testing.assert_array_equal(Matcher(0.7, 0.3, allow)(q), _loop_matcher(q, 0.7, 0.3, allow))
