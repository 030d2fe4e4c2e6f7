"""Bilinear 2x upsampling (the keypoint head's, torchvision ``KeypointRCNNPredictor``):
hand-worked values, torch's border rule, the gradient."""

import numpy as np
import pytest

from minimaskrcnn.nn import Upsample
from minimaskrcnn.nn.upsample import bilinear_matrix
from minimaskrcnn.testing.gradcheck import check_layer


def test_bilinear_2x_by_hand():
    # F.interpolate([a, b], scale_factor=2, mode="bilinear", align_corners=False): output cell d
    # reads src = 0.5 (d + 0.5) - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last cell
    # repeated): a, 0.75 a + 0.25 b, 0.25 a + 0.75 b, b. For [0, 1]: 0, 0.25, 0.75, 1.
    x = np.array([[[[0.0, 1.0]]]], np.float32)
    y, _ = Upsample(scale_factor=2, mode="bilinear").forward(x)
    assert y.shape == (1, 1, 2, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y[0, 0], [[0, 0.25, 0.75, 1]] * 2)


def test_bilinear_matrix_rows_sum_to_one_and_match_torch_3_to_7():
    a = bilinear_matrix(3, 7)  # scale 3/7: src = 3/7 (d + 0.5) - 0.5
    np.testing.assert_allclose(a.sum(1), 1)
    src = np.maximum(3 / 7 * (np.arange(7) + 0.5) - 0.5, 0)
    np.testing.assert_allclose(a @ np.arange(3.0), np.minimum(src, 2), atol=1e-6)


def test_bilinear_constant_stays_constant_and_gradient_sums():
    x = np.full((2, 3, 5, 4), 1.5, np.float32)
    layer = Upsample(scale_factor=2, mode="bilinear")
    y, cache = layer.forward(x)
    np.testing.assert_allclose(y, 1.5, rtol=1e-6)
    dx = layer.backward(np.ones_like(y), cache)
    assert dx.shape == x.shape
    assert dx.sum() == pytest.approx(y.size)  # each output distributes weight 1


def test_bilinear_gradient_float64():
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 5))
    check_layer(Upsample(scale_factor=2, mode="bilinear"), x, check_params=False)


def test_upsample_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'nearest' or 'bilinear'"):
        Upsample(scale_factor=2, mode="bicubic")
