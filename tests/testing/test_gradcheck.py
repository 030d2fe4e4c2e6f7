"""The gradient checker itself: it passes correct gradients and catches wrong ones in both
modes, with a message naming the seed, the input and both values."""

import numpy as np
import pytest

from minimaskrcnn.testing import GradcheckError, gradcheck


def square(x):
    return x * x, lambda dy: 2 * x * dy


def wrong_square(x):
    return x * x, lambda dy: 2.1 * x * dy


def product(a, b):
    return a * b, lambda dy: (dy * b, dy * a)


def test_correct_gradients_pass(rng):
    x = rng.standard_normal((3, 4))
    res = gradcheck(square, [x])
    assert res.n_checks == 3 * 12 and res.max_abs_err < 1e-8
    gradcheck(square, [x], directions=5)
    gradcheck(product, [rng.standard_normal(5), rng.standard_normal(5)], directions=3)


@pytest.mark.parametrize("directions", [None, 4])
def test_wrong_gradient_is_caught(rng, directions):
    x = rng.standard_normal((2, 3)) + 3
    with pytest.raises(GradcheckError, match=r"seed 0.*analytic .* vs numeric"):
        gradcheck(wrong_square, [x], directions=directions)
    res = gradcheck(wrong_square, [x], directions=directions, raise_exception=False)
    assert res.max_rel_err > 0.01


def test_inputs_restored_and_float64_required(rng):
    x = rng.standard_normal(4)
    before = x.copy()
    gradcheck(square, [x], directions=2)
    gradcheck(square, [x])
    np.testing.assert_allclose(x, before, rtol=0, atol=1e-15)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(square, [x.astype(np.float32)])
