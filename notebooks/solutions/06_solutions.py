"""Chapter 6 (backward by hand), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/06_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import nn


def exercise_1():
    """The adjoint test for RoIAlign: <roi_align(x), g> == <x, roi_align_backward(g)>, both values
    of ``aligned``, random x and g in float64 (boxes partly outside the map included).
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 10, 12))
    xy = rng.uniform(-4, 20, (6, 2))
    rois = np.concatenate([rng.integers(0, 2, (6, 1)), xy, xy + rng.uniform(1, 15, (6, 2))], 1)
    g = rng.normal(size=(6, 3, 4, 4))
    out = {}
    for aligned in (False, True):
        lhs = np.sum(ops.roi_align(x, rois, 4, 0.5, 2, aligned) * g)
        rhs = np.sum(x * ops.roi_align_backward(g, rois, x.shape, 4, 0.5, 2, aligned))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
        out[aligned] = (lhs, rhs)
    return out


def exercise_2():
    """GroupNorm's input gradient (gamma = 1) has no component along the two directions that
    normalisation cannot see: per group, sum(dx) = 0 and sum(dx * x_hat) = 0.

    The first holds for any eps. The second is exact with eps = 0; with eps > 0, x_hat's squares
    sum to m var / (var + eps) instead of m, and the sum is off by about eps / var relative.
    """
    rng = np.random.default_rng(1)
    groups = 2
    gn = nn.GroupNorm(groups, 4, eps=0.0).astype(np.float64)
    x = rng.normal(2.0, 3.0, size=(2, 4, 5, 5))
    _, cache = gn.forward(x)
    dx = gn.backward(rng.normal(size=x.shape), cache).reshape(2, groups, -1)
    xg = x.reshape(2, groups, -1)
    xhat = (xg - xg.mean(2, keepdims=True)) / np.sqrt(xg.var(2, keepdims=True))
    np.testing.assert_allclose(dx.sum(2), 0, atol=1e-12)
    np.testing.assert_allclose((dx * xhat).sum(2), 0, atol=1e-12)
    return np.abs(dx.sum(2)).max(), np.abs((dx * xhat).sum(2)).max()


def exercise_3():
    """Add 1e8, 1 and -1e8 in float32 in two orders. Does float64 accumulation make the order
    irrelevant?

    float32: (1e8 + 1) - 1e8 = 0 (1e8 + 1 rounds back to 1e8; float32 has 24 bits) but
    (1e8 - 1e8) + 1 = 1. float64 gets both right here, yet the same thing happens with 1e17:
    float64 only moves the problem to larger ratios. A fixed order (a gather, a fixed-order
    reduction) gives the same bits every run whatever the precision.
    """
    def ordered_sum(values, dtype):
        acc = dtype(0)
        for v in values:
            acc = dtype(acc + dtype(v))
        return float(acc)

    f32 = (ordered_sum([1e8, 1, -1e8], np.float32), ordered_sum([1e8, -1e8, 1], np.float32))
    f64 = (ordered_sum([1e8, 1, -1e8], np.float64), ordered_sum([1e8, -1e8, 1], np.float64))
    f64_big = (ordered_sum([1e17, 1, -1e17], np.float64), ordered_sum([1e17, -1e17, 1], np.float64))
    assert f32 == (0.0, 1.0) and f64 == (1.0, 1.0) and f64_big == (0.0, 1.0)
    return f32, f64, f64_big


def main():
    print("1. adjoint test:", {k: f"{a:.10f} = {b:.10f}" for k, (a, b) in exercise_1().items()})
    print("2. GroupNorm dx: max |sum| {:.1e}, max |sum dx x_hat| {:.1e}".format(*exercise_2()))
    f32, f64, f64_big = exercise_3()
    print("3. two orders: float32", f32, "float64", f64, "float64 with 1e17", f64_big)


if __name__ == "__main__":
    main()
