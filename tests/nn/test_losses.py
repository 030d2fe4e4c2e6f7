"""Losses: values worked out by hand, torch's reductions, extreme logits, gradient checks."""

import math

import numpy as np
import pytest

from minimaskrcnn.nn.losses import binary_cross_entropy_with_logits, cross_entropy, smooth_l1_loss
from minimaskrcnn.testing.gradcheck import gradcheck, loss_function

LOG2 = math.log(2.0)


def test_bce_golden():
    x = np.array([0.0, 0.0, 100.0, -100.0, 100.0], dtype=np.float32)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    loss, grad = binary_cross_entropy_with_logits(x, t, reduction="none")
    # sigmoid(0) = 1/2: -log(1/2) either way; +-100 logits: ~0 when right, 100 when wrong
    np.testing.assert_allclose(loss, [LOG2, LOG2, 0.0, 100.0, 100.0], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(grad, [-0.5, 0.5, 0.0, -1.0, 1.0], atol=1e-30)
    assert loss.dtype == grad.dtype == np.float32
    mean, gmean = binary_cross_entropy_with_logits(x, t)
    np.testing.assert_allclose(mean, (2 * LOG2 + 200.0) / 5, rtol=1e-6)
    np.testing.assert_allclose(gmean, grad / 5, rtol=1e-6)
    total, gsum = binary_cross_entropy_with_logits(x, t, reduction="sum")
    np.testing.assert_allclose(total, 2 * LOG2 + 200.0, rtol=1e-6)
    np.testing.assert_array_equal(gsum, grad)


def test_bce_weight_and_soft_targets():
    x = np.array([0.0, 2.0])
    t = np.array([0.5, 0.25])
    w = np.array([2.0, 0.0])
    loss, grad = binary_cross_entropy_with_logits(x, t, reduction="sum", weight=w)
    np.testing.assert_allclose(loss, 2 * LOG2)            # the second element has weight 0
    np.testing.assert_allclose(grad, [0.0, 0.0], atol=1e-15)  # sigmoid(0) - 0.5 = 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_gradcheck(reduction, rng):
    x = rng.standard_normal((3, 4, 4)) * 4
    t = rng.uniform(0, 1, (3, 4, 4))
    w = rng.uniform(0.5, 2, (3, 4, 4))
    gradcheck(loss_function(binary_cross_entropy_with_logits, t, reduction, w), [x])
    x_ext = np.array([100.0, -100.0, 30.0, -30.0])
    gradcheck(loss_function(binary_cross_entropy_with_logits, np.array([1.0, 0.0, 0.0, 1.0]),
                            reduction), [x_ext], seeds=(0,))


def test_cross_entropy_golden():
    logits = np.array([[0.0, 0.0], [100.0, -100.0]], dtype=np.float32)
    labels = np.array([0, 1])
    loss, grad = cross_entropy(logits, labels, reduction="none")
    # row 0: log(e^0 + e^0) - 0 = log 2; row 1: logsumexp ~ 100, minus -100 = 200
    np.testing.assert_allclose(loss, [LOG2, 200.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.5, 0.5], [1.0, -1.0]], atol=1e-30)
    assert np.isfinite(loss).all() and loss.dtype == np.float32
    mean, gmean = cross_entropy(logits, labels)
    np.testing.assert_allclose(mean, (LOG2 + 200.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(gmean, grad / 2, rtol=1e-6)


def test_cross_entropy_ignore_index_mean_counts_valid_rows():
    logits = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    loss, grad = cross_entropy(logits, np.array([2, -100, 1]))
    np.testing.assert_allclose(loss, math.log(3.0))       # two rows of log 3, divided by 2
    np.testing.assert_array_equal(grad[1], 0.0)
    np.testing.assert_allclose(grad[0], [1 / 6, 1 / 6, -1 / 3])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(reduction, rng):
    logits = rng.standard_normal((5, 4)) * 3
    logits[0] = [100.0, -100.0, 0.0, 50.0]
    labels = np.array([1, 0, 3, -100, 2])
    gradcheck(loss_function(cross_entropy, labels, reduction), [logits])


def test_smooth_l1_golden():
    x = np.array([0.5, 2.0, -3.0, 0.0])
    t = np.zeros(4)
    loss, grad = smooth_l1_loss(x, t, beta=1.0, reduction="none")
    np.testing.assert_allclose(loss, [0.125, 1.5, 2.5, 0.0])   # 0.5 d^2 inside, |d| - 0.5 out
    np.testing.assert_allclose(grad, [0.5, 1.0, -1.0, 0.0])
    l1, g1 = smooth_l1_loss(x, t, beta=0.0, reduction="sum")   # beta 0: plain L1
    np.testing.assert_allclose(l1, 5.5)
    np.testing.assert_allclose(g1, [1.0, 1.0, -1.0, 0.0])
    m, gm = smooth_l1_loss(x, t, beta=1 / 9)                     # all outside except 0
    np.testing.assert_allclose(m, (0.5 + 2 + 3 - 3 * 0.5 / 9) / 4)
    np.testing.assert_allclose(gm, [0.25, 0.25, -0.25, 0.0])


@pytest.mark.parametrize("beta", [0.0, 1 / 9, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_gradcheck(beta, reduction, rng):
    x = rng.standard_normal((6, 4))
    x[np.abs(np.abs(x) - beta) < 1e-3] += 0.01                  # away from the kinks
    x[np.abs(x) < 1e-3] += 0.01
    gradcheck(loss_function(smooth_l1_loss, np.zeros((6, 4)), beta, reduction), [x])


def test_empty_mean_is_nan_like_torch():
    loss, grad = binary_cross_entropy_with_logits(np.zeros((0, 28, 28), np.float32),
                                                  np.zeros((0, 28, 28), np.float32))
    assert np.isnan(loss) and grad.shape == (0, 28, 28)
    loss, grad = cross_entropy(np.zeros((0, 3), np.float32), np.zeros(0, np.int64),
                               reduction="sum")
    assert loss == 0 and grad.shape == (0, 3)


def test_loss_errors():
    with pytest.raises(ValueError, match="targets"):
        binary_cross_entropy_with_logits(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(np.zeros(2), np.zeros(2), reduction="avg")
