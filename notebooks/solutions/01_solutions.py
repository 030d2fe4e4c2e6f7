"""Chapter 1 (anchors), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/01_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn.config import get_preset

CFG = get_preset("nuclei-mini").model
STRIDES = [2 ** (level + 2) for level in range(len(CFG.anchor_sizes))]  # P2..P6: 4..64


def exercise_1():
    """The cell anchor of size 32 and aspect ratio h/w = 0.25, by hand.

    Keeping the area 32^2: h = 32 sqrt(0.25) = 16, w = 32 / sqrt(0.25) = 64, so the anchor is
    round([-w, -h, w, h] / 2) = [-32, -8, 32, 8].
    """
    size, ratio = 32, 0.25
    h, w = size * np.sqrt(ratio), size / np.sqrt(ratio)
    mine = np.round(np.array([-w, -h, w, h]) / 2)
    np.testing.assert_array_equal(mine, [-32, -8, 32, 8])
    gen = ops.AnchorGenerator(sizes=((size,),), aspect_ratios=((ratio,),))
    np.testing.assert_array_equal(gen.cell_anchors[0], mine[None])
    return mine


def exercise_2():
    """How many anchors does nuclei-mini score on a 256 (high) x 320 (wide) image?

    Per level ceil(256 / s) x ceil(320 / s) cells x 3 anchors: 64x80 + 32x40 + 16x20 + 8x10 + 4x5
    = 6,820 cells, 20,460 anchors; three quarters of them on P2.
    """
    h, w = 256, 320
    by_hand = sum(-(-h // s) * -(-w // s) * len(CFG.aspect_ratios) for s in STRIDES)
    assert by_hand == 20_460
    gen = ops.AnchorGenerator(sizes=tuple((s,) for s in CFG.anchor_sizes),
                              aspect_ratios=(CFG.aspect_ratios,) * len(CFG.anchor_sizes))
    shapes = [(-(-h // s), -(-w // s)) for s in STRIDES]
    per_level = gen.grid_anchors(shapes, [(s, s) for s in STRIDES])
    assert sum(len(a) for a in per_level) == by_hand
    return by_hand


def exercise_3():
    """A square nucleus of side s centred on the square 16-pixel anchor: for which s is IoU >= 0.7?

    Nested centred squares: IoU = min(s, 16)^2 / max(s, 16)^2 >= 0.7 for
    16 sqrt(0.7) = 13.39 <= s <= 16 / sqrt(0.7) = 19.12 pixels: a factor 1.43 of sizes, less than
    the factor 2 between the levels' sizes, so some nuclei match no anchor even when centred.
    """
    lo, hi = 16 * np.sqrt(0.7), 16 / np.sqrt(0.7)
    sides = np.arange(8.0, 32.0, 0.01)
    boxes = np.stack([-sides / 2, -sides / 2, sides / 2, sides / 2], 1)
    iou = ops.box_iou(np.array([[-8.0, -8.0, 8.0, 8.0]]), boxes)[0]
    ok = sides[iou >= 0.7 - 1e-9]
    np.testing.assert_allclose([ok.min(), ok.max()], [lo, hi], atol=0.011)
    return lo, hi


def main():
    print("1. cell anchor, size 32, h/w 0.25:", exercise_1().tolist())
    print("2. anchors on a 256 x 320 image:", exercise_2())
    print("3. sides with IoU >= 0.7 on the 16 px anchor: {:.2f} .. {:.2f} px".format(*exercise_3()))


if __name__ == "__main__":
    main()
