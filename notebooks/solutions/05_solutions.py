"""Chapter 5 (the heads), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/05_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops


def exercise_1():
    """The sigmoid mask loss of one RoI of class 2 (K = 3) on a 2 x 2 mask, by hand; then change
    the logits of class 1. Which loss moves?

    Sigmoid: the mean over the 4 pixels of max(x, 0) - x t + log(1 + exp(-|x|)) on channel 2 only,
    so class 1's logits do not enter it at all. Softmax: class 1's logits are in the normaliser
    of every pixel, so raising them raises the loss of the class-2 RoI.
    """
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 3, 2, 2))
    labels = np.array([2])
    targets = np.array([[[1.0, 0.0], [1.0, 1.0]]])
    x = logits[0, 1]
    by_hand = np.mean(np.maximum(x, 0) - x * targets[0] + np.log1p(np.exp(-np.abs(x))))
    sig, _ = ops.mask_loss(logits, labels, targets, mode="sigmoid")
    np.testing.assert_allclose(sig, by_hand, rtol=1e-12)
    other = logits.copy()
    other[0, 0] += 3.0                                   # class 1's mask, much more confident
    sig2, _ = ops.mask_loss(other, labels, targets, mode="sigmoid")
    soft, _ = ops.mask_loss(logits, labels, targets, mode="softmax")
    soft2, _ = ops.mask_loss(other, labels, targets, mode="softmax")
    assert sig2 == sig and soft2 > soft
    return float(sig), float(soft), float(soft2)


def exercise_2():
    """Which pixels can a 28 x 28 mask pasted on the box [10, 10, 38, 38] reach?

    The mask is padded to 30 x 30 and the box enlarged about its centre (24, 24) by 30/28: half
    side 14 x 30/28 = 15, so [9, 9, 39, 39], truncated to integers and inclusive: pixels 9..39,
    31 on a side. The padded border is zero, so the outermost pixels 9 and 39 get 0, and a mask
    of ones thresholded at 0.5 covers pixels 10..38: 29 pixels for a box 28 pixels wide (10..37),
    one more at the right and at the bottom, from the inclusive end of the truncated box
    (torchvision's paste does the same).
    """
    box = np.array([[10.0, 10.0, 38.0, 38.0]], np.float32)
    pasted = ops.paste_masks_in_image(np.ones((1, 28, 28), np.float32), box, (64, 64), padding=1)[0]
    ys, xs = np.nonzero(pasted)
    assert ys.min() >= 9 and ys.max() <= 39 and xs.min() >= 9 and xs.max() <= 39
    ys, xs = np.nonzero(pasted >= 0.5)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 38, 10, 38)
    return pasted


def exercise_3():
    """All mask logits 0 (an untrained head, roughly): the probability of the RoI's class at a
    pixel, for K = 3, with each loss, and whether the pixel is in the mask at threshold 0.5.

    Sigmoid: sigmoid(0) = 0.5, on the threshold: the pixel is in (>= 0.5), the whole box is mask.
    Softmax: the class competes with the other K - 1 = 2 classes and the background logit 0:
    1 / (K + 1) = 0.25, under 0.5: the mask is empty. That is why chapter 5's barely trained
    softmax model (quick mode) has a mask IoU near 0: a class must beat all the others together
    before its mask appears.
    """
    from minimaskrcnn.model.mask_head import mask_probabilities

    logits = np.zeros((1, 4, 2, 2))  # (R, K + 1, M, M), channel 0 unused
    sig = mask_probabilities(logits, np.array([2]), "sigmoid")
    soft = mask_probabilities(logits, np.array([2]), "softmax")
    np.testing.assert_allclose(sig, 0.5)
    np.testing.assert_allclose(soft, 0.25)
    assert (sig >= 0.5).all() and not (soft >= 0.5).any()
    return float(sig[0, 0, 0]), float(soft[0, 0, 0])


def main():
    sig, soft, soft2 = exercise_1()
    print(f"1. sigmoid loss {sig:.4f} (unchanged); softmax loss {soft:.4f} -> {soft2:.4f}")
    p = exercise_2()
    print("2. pasted support rows/cols", np.nonzero(p.any(1))[0][[0, -1]].tolist(), "; >= 0.5: 10..38")
    print("3. probability at logits 0 (sigmoid, softmax):", exercise_3())


if __name__ == "__main__":
    main()
