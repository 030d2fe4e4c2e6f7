"""AnchorGenerator: torchvision's cell anchors, order and strides, checked on hand-worked cases."""

import numpy as np
import pytest

from minimaskrcnn.ops import AnchorGenerator


def test_size8_ratio1_on_2x2_map_stride4_by_hand():
    gen = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    # cell anchor: w = h = 8 -> round([-8, -8, 8, 8] / 2) = [-4, -4, 4, 4]
    np.testing.assert_array_equal(gen.cell_anchors[0], [[-4, -4, 4, 4]])
    (anchors,) = gen.grid_anchors([(2, 2)], [(4, 4)])
    # locations row-major: (x, y) = (0, 0), (4, 0), (0, 4), (4, 4)
    expected = [[-4, -4, 4, 4], [0, -4, 8, 4], [-4, 0, 4, 8], [0, 0, 8, 8]]
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, expected)


def test_cell_anchors_by_hand():
    gen = AnchorGenerator(sizes=((8,), (32,), (5,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    # ratio h / w = 0.5, size 8: h = sqrt(0.5) * 8 = 5.657, w = 8 / sqrt(0.5) = 11.314;
    # halves 2.83 and 5.66 round to 3 and 6
    np.testing.assert_array_equal(gen.cell_anchors[0],
                                  [[-6, -3, 6, 3], [-4, -4, 4, 4], [-3, -6, 3, 6]])
    # size 32: w = 45.25, h = 22.63 -> halves 22.63, 11.31 -> 23, 11
    np.testing.assert_array_equal(gen.cell_anchors[1],
                                  [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    # size 5, ratio 1: halves 2.5 round half to even -> 2 (torch.round does the same)
    np.testing.assert_array_equal(gen.cell_anchors[2][1], [-2, -2, 2, 2])
    assert all(c.dtype == np.float32 for c in gen.cell_anchors)
    assert gen.num_anchors_per_location() == [3, 3, 3]


def test_several_sizes_per_level_ratio_outer_size_inner():
    gen = AnchorGenerator(sizes=((8, 16),), aspect_ratios=((1.0, 2.0),))
    # (r=1, s=8), (r=1, s=16), (r=2, s=8): w = 5.66, h = 11.31 -> 3, 6; (r=2, s=16) -> 6, 11
    np.testing.assert_array_equal(
        gen.cell_anchors[0],
        [[-4, -4, 4, 4], [-8, -8, 8, 8], [-3, -6, 3, 6], [-6, -11, 6, 11]],
    )
    assert gen.num_anchors_per_location() == [4]


def test_flat_sizes_and_ratios_like_torchvision():
    gen = AnchorGenerator(sizes=(8, 16), aspect_ratios=(1.0,))
    assert gen.sizes == ((8,), (16,)) and gen.aspect_ratios == ((1.0,), (1.0,))


def test_call_derives_strides_per_axis_and_orders_anchors():
    gen = AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    # image 64 x 96 (H x W); level 0 is 16 x 24 cells -> stride (4, 4); level 1 is 8 x 8 -> (8, 12)
    level0, level1 = gen((64, 96), [(16, 24), (8, 8)])
    assert level0.shape == (16 * 24 * 3, 4) and level1.shape == (8 * 8 * 3, 4)
    cell = gen.cell_anchors[1]
    # location (y=2, x=5) of level 1 is row 2 * 8 + 5 = 21; shifted by (5 * 12, 2 * 8)
    np.testing.assert_array_equal(level1[21 * 3:22 * 3], cell + [60, 16, 60, 16])
    # all anchors of one location are consecutive and share the centre
    centres = (level0[:, :2] + level0[:, 2:]) / 2
    np.testing.assert_array_equal(centres[0::3], centres[1::3])
    # the last anchor of level 0 sits at x = 23 * 4, y = 15 * 4
    np.testing.assert_array_equal(level0[-1], gen.cell_anchors[0][-1] + [92, 60, 92, 60])


def test_default_generator_has_five_levels():
    gen = AnchorGenerator()
    shapes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    levels = gen((64, 64), shapes)
    assert [a.shape[0] for a in levels] == [h * w * 3 for h, w in shapes]
    assert all(a.dtype == np.float32 for a in levels)


def test_bad_input():
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,),) * 3)
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(sizes=((-8,),), aspect_ratios=((1.0,),))
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(sizes=((8,),), aspect_ratios=((0.0,),))
    gen = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    with pytest.raises(ValueError, match="one \\(H, W\\) pair per level"):
        gen.grid_anchors([(2, 2), (1, 1)], [(4, 4), (8, 8)])
    with pytest.raises(ValueError, match="feature_shapes"):
        gen((8, 8), [(0, 2)])
