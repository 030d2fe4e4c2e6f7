"""Chapter 11 (a trained model, taken apart), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/11_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import itertools

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn.model.box_head import postprocess_detections

CODER = ops.BoxCoder((10.0, 10.0, 5.0, 5.0), np.log(1000 / 16))


def exercise_1():
    """Decode ``(0.5, -1.0, 0.5, -0.5)`` on the proposal ``[10, 20, 30, 60]``.

    w = 20, h = 40, centre (20, 40). dx = 0.5 / 10 = 0.05 -> cx = 20 + 0.05 x 20 = 21;
    dy = -1 / 10 -> cy = 40 - 0.1 x 40 = 36; dw = 0.5 / 5 = 0.1 -> w = 20 e^0.1 = 22.10;
    dh = -0.1 -> h = 40 e^-0.1 = 36.19. Box [21 - 11.05, 36 - 18.10, 21 + 11.05, 36 + 18.10]
    = [9.95, 17.90, 32.05, 54.10].
    """
    w, h = 20 * np.exp(0.1), 40 * np.exp(-0.1)
    by_hand = np.array([21 - w / 2, 36 - h / 2, 21 + w / 2, 36 + h / 2])
    got = CODER.decode(np.array([[0.5, -1.0, 0.5, -0.5]]), np.array([[10.0, 20.0, 30.0, 60.0]]))[0]
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)
    return got


def exercise_2():
    """Softmax, threshold 0.05, per-class NMS.

    Row 0 [2, 1, 0] -> (0.665, 0.245, 0.090): both classes pass. Row 1 [0, 3, 3] -> (0.025,
    0.488, 0.488): both pass. Row 2 [5, -5, -5] -> classes at 4.5e-5: neither. Four candidates.
    With one box for all, NMS per class keeps the best of each class: RoI 1 for class 1 (0.488
    > 0.245) and RoI 1 for class 2 (0.488 > 0.090). Two detections on the same box, one per
    class: per-class NMS never compares two classes.
    """
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 3.0], [5.0, -5.0, -5.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    passing = [(int(r), int(c) + 1) for r, c in zip(*np.nonzero(p[:, 1:] > 0.05), strict=True)]
    assert passing == [(0, 1), (0, 2), (1, 1), (1, 2)]
    boxes = np.tile(np.array([[10.0, 10.0, 40.0, 40.0]]), (3, 1))
    out = postprocess_detections(logits, np.zeros((3, 12)), [boxes], [(64, 64)], CODER, 0.05, 0.01, 0.5,
                                 100)[0]
    assert sorted(out["labels"].tolist()) == [1, 2]
    np.testing.assert_allclose(out["scores"], [p[1, 1], p[1, 2]], rtol=1e-6)
    return passing, out["labels"].tolist()


def greedy_match(iou, scores, thr=0.5):
    """Section 4's matching on an IoU matrix (detections x nuclei): best score first, each nucleus
    at most once. Returns the nucleus of each detection (-1: a false detection)."""
    taken = np.zeros(iou.shape[1], bool)
    out = np.full(iou.shape[0], -1)
    for d in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[d])
        if cand.max() >= thr:
            out[d] = int(cand.argmax())
            taken[out[d]] = True
    return out


def exercise_3():
    """Greedy: detection 1 (0.9) takes B (0.6 > 0.55); detection 2 (0.6) finds B taken and A at
    IoU 0: unmatched. One miss (A), one false detection. The best assignment (1 -> A at 0.55,
    2 -> B at 0.7) matches both: greedy matching by score, which COCO also uses, is not a
    maximum matching; it rewards the confident detection with its best nucleus.
    """
    iou = np.array([[0.55, 0.6], [0.0, 0.7]])  # rows: detections, columns: A, B
    m = greedy_match(iou, np.array([0.9, 0.6]))
    assert m.tolist() == [1, -1]
    misses, false = int(iou.shape[1] - (m >= 0).sum()), int((m < 0).sum())
    best = max(int(sum(iou[d, g] >= 0.5 for d, g in enumerate(perm)))
               for perm in itertools.permutations(range(iou.shape[1])))
    assert (misses, false, best) == (1, 1, 2)
    return misses, false, best


def main():
    print("1. decoded box:", np.round(exercise_1(), 3).tolist())
    print("2. candidates (RoI, class) passing 0.05, labels kept by NMS:", exercise_2())
    print("3. greedy misses, false detections; best possible matches:", exercise_3())


if __name__ == "__main__":
    main()
