"""Chapter 4 (RoIPool, RoIWarp, RoIAlign), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/04_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn.ops.poolers import map_levels


def exercise_1():
    """RoIAlign of the ramp f(y, x) = 5y + x (5 x 5 map), box [0, 0, 4, 4], 2 x 2 output, 1 sample per bin.

    Bins are 2 cells wide; with ``aligned=False`` the samples sit at index coordinates 1 and 3 on
    each axis, so the output is [[5+1, 5+3], [15+1, 15+3]] = [[6, 8], [16, 18]]. ``aligned=True``
    moves every sample by -0.5 on both axes: 5 (0.5) + 0.5 = 3 less, [[3, 5], [13, 15]].
    """
    ramp = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    box = np.array([[0, 0.0, 0.0, 4.0, 4.0]])
    out_false = ops.roi_align(ramp, box, 2, 1.0, 1, aligned=False)[0, 0]
    out_true = ops.roi_align(ramp, box, 2, 1.0, 1, aligned=True)[0, 0]
    np.testing.assert_allclose(out_false, [[6, 8], [16, 18]])
    np.testing.assert_allclose(out_true, [[3, 5], [13, 15]])
    return out_false, out_true


def exercise_2():
    """The chapter's gradient figure: why does RoIWarp's gradient hit 63 cells and RoIAlign's 56?

    Box [37, 45, 139, 121] px at stride 16 is x 2.31..8.69, y 2.81..7.56 in cells. RoIWarp rounds
    it to x 2..9 and y 3..8 inclusive, i.e. cells [2, 10) x [3, 9); its samples lie strictly inside
    and bilinear interpolation also touches the next cell: columns 2..10 (9) x rows 3..9 (7) = 63.
    RoIAlign (aligned=False) samples the box itself: the first and last samples of each axis are a
    quarter bin inside the edges (x 2.54..8.46, y 2.98..7.39), touching columns 2..9 (8) x rows
    2..8 (7) = 56. Dense both, but RoIWarp's sits on the rounded box.
    """
    shape = (1, 1, 16, 16)
    box = np.array([[0, 37.0, 45.0, 139.0, 121.0]])
    g = np.ones((1, 1, 7, 7))
    warp = ops.roi_warp_backward(g, box, shape, 7, spatial_scale=1 / 16, sampling_ratio=2, mode="avg")[0, 0]
    align = ops.roi_align_backward(g, box, shape, 7, spatial_scale=1 / 16, sampling_ratio=2, aligned=False)[0, 0]
    counts = {}
    for name, grad, (rows, cols) in (("RoIWarp", warp, ((3, 9), (2, 10))), ("RoIAlign", align, ((2, 8), (2, 9)))):
        ys, xs = np.nonzero(grad)
        assert (ys.min(), ys.max()) == rows and (xs.min(), xs.max()) == cols, name
        counts[name] = int(np.count_nonzero(grad))
    assert counts == {"RoIWarp": 63, "RoIAlign": 56}
    return counts


def exercise_3():
    """Which FPN level pools a 64 x 64 box, a 300 x 150 box, a 447 x 447 and a 448 x 448 box?

    k = floor(4 + log2(sqrt(w h) / 224) + 1e-6), clamped to 2..5: sqrt = 64 -> 2.19 -> P2;
    212.1 -> 3.92 -> P3; 447 -> 4.997 -> P4; 448 -> 5 -> P5.
    """
    boxes = np.array([[0, 0, 64, 64], [0, 0, 300, 150], [0, 0, 447, 447], [0, 0, 448, 448]], np.float64)
    levels = map_levels(boxes, 2, 5) + 2
    np.testing.assert_array_equal(levels, [2, 3, 4, 5])
    return levels


def exercise_4():
    """How many samples per bin does the adaptive grid (``sampling_ratio=-1``) take, 7 x 7
    output at stride 16, for a 100 px and a 400 px square box?

    ceil(size in cells / 7) per axis: 100 / 16 = 6.25 cells, / 7 = 0.89 -> 1, one sample per bin
    (the same as ``sampling_ratio=1``); 400 / 16 = 25 cells, / 7 = 3.57 -> 4, a 4 x 4 grid,
    16 samples per bin (the same as ``sampling_ratio=4``). The adaptive grid keeps about one
    sample per feature cell, whatever the box's size.
    """
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(1, 2, 40, 40))
    out = {}
    for side, g in ((100.0, 1), (400.0, 4)):
        box = np.array([[0, 30.0, 30.0, 30.0 + side, 30.0 + side]])
        adaptive = ops.roi_align(feat, box, 7, 1 / 16, -1)
        np.testing.assert_allclose(adaptive, ops.roi_align(feat, box, 7, 1 / 16, g), rtol=1e-12)
        assert not np.allclose(adaptive, ops.roi_align(feat, box, 7, 1 / 16, g + 1))
        out[side] = g * g
    assert out == {100.0: 1, 400.0: 16}
    return out


def main():
    f, t = exercise_1()
    print("1. aligned=False", f.tolist(), " aligned=True", t.tolist())
    print("2. cells reached by the gradient:", exercise_2())
    print("3. FPN levels:", exercise_3().tolist())
    print("4. adaptive samples per bin (100 px, 400 px boxes):", exercise_4())


if __name__ == "__main__":
    main()
