"""Chapter 3 (the RPN), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/03_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import nn
from minimaskrcnn.config import get_preset

CFG = get_preset("nuclei-mini").model
STRIDES = [2 ** (level + 2) for level in range(len(CFG.anchor_sizes))]


def exercise_1():
    """At inference on a 256 x 256 image, how many boxes enter the RPN's NMS (before the size filter)?

    Each level keeps its top 1000 anchors (``rpn_pre_nms_top_n_test``) or all of them if it has
    fewer: P2 64x64x3 = 12,288 -> 1000, P3 3,072 -> 1000, P4 768, P5 192, P6 48: 3,008 boxes.
    """
    gen = ops.AnchorGenerator(sizes=tuple((s,) for s in CFG.anchor_sizes),
                              aspect_ratios=(CFG.aspect_ratios,) * len(CFG.anchor_sizes))
    shapes = [(256 // s, 256 // s) for s in STRIDES]
    per_level = gen.grid_anchors(shapes, [(s, s) for s in STRIDES])
    n = sum(min(CFG.rpn_pre_nms_top_n_test, len(a)) for a in per_level)
    assert n == 1000 + 1000 + 768 + 192 + 48 == 3008
    return n


def exercise_2():
    """Smooth L1 with beta 1/9 (torchvision's RPN) and beta 1 (Fast R-CNN) at errors 0.05 and 0.5.

    0.5 d^2 / beta if |d| < beta, else |d| - beta / 2:
    beta 1/9: 0.01125 and 0.4444 (gradient 0.45 and 1); beta 1: 0.00125 and 0.125 (gradient 0.05
    and 0.5). The small beta keeps a strong gradient on small errors: fine localisation pays.
    """
    d = np.array([0.05, 0.5])
    expected = {1 / 9: ([0.01125, 0.5 - 1 / 18], [0.45, 1.0]), 1.0: ([0.00125, 0.125], [0.05, 0.5])}
    for beta, (loss_h, grad_h) in expected.items():
        loss, grad = nn.losses.smooth_l1_loss(d, np.zeros_like(d), beta=beta, reduction="none")
        np.testing.assert_allclose(loss, loss_h, rtol=1e-12)
        np.testing.assert_allclose(grad, grad_h, rtol=1e-12)
    return expected


def exercise_3():
    """The objectness loss of an untrained head (all logits 0), whatever the labels?

    sigmoid(0) = 1/2 for every anchor, so the binary cross-entropy is log 2 = 0.6931 for
    foreground and background alike: the number the RPN's loss starts from.
    """
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0], np.float64)
    loss, _ = nn.losses.binary_cross_entropy_with_logits(np.zeros_like(labels), labels)
    np.testing.assert_allclose(loss, np.log(2), rtol=1e-12)
    return float(loss)


def main():
    print("1. boxes entering NMS on a 256 x 256 image:", exercise_1())
    print("2. smooth L1 (loss, gradient) per beta:", exercise_2())
    print(f"3. untrained objectness loss: {exercise_3():.4f}")


if __name__ == "__main__":
    main()
