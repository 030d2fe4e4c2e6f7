"""Chapter 2 (IoU, box coding, NMS), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/02_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import backend


def exercise_1():
    """Tied scores: which of two identical boxes with the same score does NMS keep?

    The lower index: the sort by score is stable (as torchvision's kernels sort), so among equal
    scores the earlier box comes first, is kept, and suppresses the other. A third box with a
    higher score placed last is still visited first.
    """
    b = [10.0, 10.0, 40.0, 40.0]
    boxes = np.array([b, b, [100.0, 100.0, 120.0, 120.0]], np.float32)
    scores = np.array([0.7, 0.7, 0.9], np.float32)
    for tier in ("numpy", "numba"):
        if backend.tier_unavailable_reason(tier) is not None:
            continue
        keep = ops.nms(boxes, scores, 0.5, tier=tier)
        np.testing.assert_array_equal(keep, [2, 0])
    return ops.nms(boxes, scores, 0.5)


def exercise_2():
    """Encode the box [14, 8, 62, 32] relative to the proposal [10, 10, 50, 30], weights (10, 10, 5, 5).

    Proposal: centre (30, 20), size 40 x 20; box: centre (38, 20), size 48 x 24. So
    dx = 10 (38 - 30) / 40 = 2, dy = 10 (20 - 20) / 20 = 0, dw = dh = 5 log(1.2) = 0.9116.
    Decoding the deltas gives the box back.
    """
    proposal = np.array([[10.0, 10.0, 50.0, 30.0]], np.float32)
    box = np.array([[14.0, 8.0, 62.0, 32.0]], np.float32)
    by_hand = np.array([2.0, 0.0, 5 * np.log(1.2), 5 * np.log(1.2)])
    coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(box, proposal)
    np.testing.assert_allclose(deltas.reshape(-1), by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(coder.decode(deltas, proposal).reshape(-1, 4), box, rtol=1e-5)
    return by_hand


def exercise_3():
    """By how much may a 30 x 30 box shift along one axis before IoU falls to 0.5? To 0.7?

    IoU = (s - d) / (s + d) = t  =>  d = s (1 - t) / (1 + t): 10 px for 0.5, 5.29 px for 0.7
    (the RPN's positive threshold tolerates a shift of only about a sixth of the side).
    """
    s = 30.0
    out = {}
    for t in (0.5, 0.7):
        d = s * (1 - t) / (1 + t)
        iou = ops.box_iou(np.array([[0.0, 0.0, s, s]]), np.array([[d, 0.0, s + d, s]]))[0, 0]
        np.testing.assert_allclose(iou, t, rtol=1e-6)
        out[t] = d
    assert out[0.5] == 10.0
    return out


def main():
    print("1. NMS with tied scores keeps", exercise_1().tolist())
    print("2. deltas", np.round(exercise_2(), 4).tolist())
    print("3. shifts for IoU 0.5 and 0.7 of a 30 px box:", {k: round(v, 2) for k, v in exercise_3().items()})


if __name__ == "__main__":
    main()
