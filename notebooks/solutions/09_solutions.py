"""Chapter 9 (kernels on the GPU), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/09_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

import minimaskrcnn.ops as ops


def exercise_1():
    """A grid-stride loop: thread t of T handles t, t + T, t + 2T, ... Show that every element of
    n is handled exactly once for any launch, and how many elements the busiest thread gets.

    The residues mod T partition 0..n-1, so every element has exactly one thread; the busiest
    thread gets ceil(n / T) elements (T = blocks x threads per block).
    """
    for n in (1, 63, 64, 1000, 4097):
        for blocks, threads in ((1, 1), (2, 32), (3, 64), (80, 128)):
            total = blocks * threads
            hits = np.zeros(n, np.int64)
            per_thread = [len(range(t, n, total)) for t in range(total)]
            for t in range(total):
                hits[t::total] += 1
            assert np.all(hits == 1)
            assert max(per_thread) == -(-n // total)
    return True


def exercise_2():
    """The bitmask NMS: how large is the suppression mask for 10,000 boxes? Then write the host
    scan and check it against ``ops.nms``.

    ceil(10000 / 64) = 157 words of 8 bytes per box: 10,000 x 157 x 8 = 12,560,000 bytes (12.6 MB),
    against 100 MB for a bool matrix. The scan: walk the score-sorted boxes; keep box i unless
    its bit is set in ``removed``; when keeping it, OR its row into ``removed``.
    """
    assert 10_000 * -(-10_000 // 64) * 8 == 12_560_000
    rng = np.random.default_rng(0)
    n = 200
    xy = rng.uniform(0, 80, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (n, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    iou = ops.box_iou(boxes[order], boxes[order], tier="numpy")
    over = (iou > 0.5) & np.triu(np.ones((n, n), bool), 1)
    words = -(-n // 64)
    padded = np.zeros((n, words * 64), bool)
    padded[:, :n] = over
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    mask = (padded.reshape(n, words, 64) * bits).sum(axis=2, dtype=np.uint64)
    removed = np.zeros(words, np.uint64)
    keep = []
    for i in range(n):
        if not (removed[i // 64] >> np.uint64(i % 64)) & np.uint64(1):
            keep.append(i)
            removed |= mask[i]
    keep = order[np.array(keep, np.int64)]
    np.testing.assert_array_equal(keep, ops.nms(boxes, scores, 0.5))
    return len(keep)


def main():
    print("1. grid-stride loops cover every element once:", exercise_1())
    print("2. bitmask NMS keeps", exercise_2(), "of 200 boxes, as ops.nms does")


if __name__ == "__main__":
    main()
