"""Chapter 10 (the backbone and the FPN), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/10_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

from minimaskrcnn import build_model
from minimaskrcnn.ops.poolers import map_levels

MODEL = build_model("nuclei-mini", np.random.default_rng(0))  # shapes do not depend on the weights


def exercise_1():
    """Sizes of C2..C5 and P2..P6 for a 520 x 696 image.

    The batch is padded to multiples of 32: 544 x 704. C_l and P_l have stride 2**l: C2/P2
    136 x 176, C3/P3 68 x 88, C4/P4 34 x 44, C5/P5 17 x 22; P6 = P5[::2, ::2] takes rows and
    columns 0, 2, ..., so 9 x 11 (ceil(17 / 2), ceil(22 / 2)): an odd size rounds up.
    """
    batch, sizes = MODEL.transform([np.zeros((3, 520, 696), np.float32)])[0]  # the ImageList
    assert batch.shape[-2:] == (544, 704) and sizes == [(520, 696)]
    C, _ = MODEL.backbone.forward(batch)
    P, _ = MODEL.fpn.forward(C)
    expected = [(136, 176), (68, 88), (34, 44), (17, 22)]
    assert [c.shape[-2:] for c in C] == expected
    assert [p.shape[-2:] for p in P] == expected + [(9, 11)]
    return [p.shape[-2:] for p in P]


def exercise_2():
    """The FPN's parameters from the widths.

    Lateral 1x1 convs: (32 + 64 + 128 + 256) x 64 weights + 4 x 64 biases = 30,976.
    Output 3x3 convs: 4 x (64 x 64 x 9 + 64) = 147,712. Total 178,688 (docs/model.md).
    """
    lateral = (32 + 64 + 128 + 256) * 64 + 4 * 64
    output = 4 * (64 * 64 * 9 + 64)
    by_hand = lateral + output
    counted = sum(p.data.size for _, p in MODEL.fpn.named_parameters())
    assert (lateral, output, by_hand) == (30_976, 147_712, 178_688) and counted == by_hand
    return by_hand


def exercise_3():
    """Pooling levels.

    k = floor(4 + log2(s / 224) + 1e-6) reaches 3 when log2(s / 224) >= -1 - 1e-6, i.e.
    s >= 112 (up to the 1e-6): the smallest square pooled from P3 is 112 px (111 px goes to P2).
    With canonical_scale 56: 12 px -> 4 + log2(12/56) = 1.78 -> clamped to 2; 24 px -> 2.78 -> 2;
    48 px -> 3.78 -> 3; 96 px -> 4.78 -> 4. A canonical scale four times smaller moves every box
    two levels up: nuclei would be spread over P2..P4.
    """
    def sq(sides):
        return np.array([[0.0, 0.0, s, s] for s in sides])

    assert (map_levels(sq([111.0, 112.0]), 2, 5) + 2).tolist() == [2, 3]
    small = map_levels(sq([12.0, 24.0, 48.0, 96.0]), 2, 5, canonical_scale=56) + 2
    assert small.tolist() == [2, 2, 3, 4]
    return small.tolist()


def main():
    print("1. P2..P6 sizes of a 520 x 696 image:", exercise_1())
    print("2. FPN parameters:", exercise_2())
    print("3. levels of 12, 24, 48, 96 px boxes at canonical scale 56:", exercise_3())


if __name__ == "__main__":
    main()
