"""Chapter 6 (backward by hand): the exercises' experiments, checked by asserts.

Each ``exercise_k()`` runs its experiment and returns the answer the chapter's stub cell
``check("06.k", answer)`` compares with. Run: ``python notebooks/solutions/06_solutions.py``.
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import load_model
from minimaskrcnn.data import load_sample, standardize

TOLERANCE = {3: 1e-9}

BOX = [40.0, 60.0, 200.0, 180.0]
"""Exercise 1's RoI, input pixels: 160 x 120, sqrt(area) 139 px, so level floor(4 + log2(139 /
224)) = 3 (P3, stride 8)."""


def exercise_1():
    """The gradient w.r.t. P3 of one RoI pooled there: the number of P3 cells (one channel) that
    receive a non-zero gradient when a gradient of ones comes back through the trained model's
    box pooler (7 x 7 RoIAlign, sampling_ratio 2, aligned=False).

    The box covers x 5..25 and y 7.5..22.5 in P3 cells (stride 8). Its 14 x 14 bilinear samples
    sit 20/14 = 1.43 cells apart along x and 15/14 = 1.07 along y, and each touches the cell it
    falls in and the next one: columns 5..25 (21) and rows 8..22 (15), 315 cells. Every sample's
    four weights sum to 1 and each bin averages its 4 samples, so each channel's gradient sums to
    49 (one per output bin); along x the samples land at uneven offsets inside the cells, which
    makes the weights uneven (0.07 to 0.24), along y nearly flat. P2, P4 and P5 get nothing: a
    RoI is pooled from one level only. (The level mapper keeps a RoI 14 to 28 cells wide on its
    level, so its 14 samples per side are 1 to 2 cells apart and no cell of the footprint is
    skipped.)
    """
    model = load_model("nuclei-mini-dsb2018")
    pool = model.roi_heads.box_roi_pool
    feats = [np.zeros((1, 64, 256 // s, 256 // s), np.float32) for s in (4, 8, 16, 32)]
    out, cache = pool.forward(feats, [np.array([BOX], np.float32)], (256, 256))
    grads = pool.backward(np.ones_like(out), cache)
    nonzero = [int(np.count_nonzero(g[0, 0])) for g in grads]
    assert nonzero[0] == nonzero[2] == nonzero[3] == 0, nonzero
    np.testing.assert_allclose(grads[1][0].sum(axis=(1, 2)), 49.0, rtol=1e-5)
    ys, xs = np.nonzero(grads[1][0, 0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 25, 8, 22)
    assert nonzero[1] == 21 * 15
    return nonzero[1]


def exercise_2():
    """Which of the five losses sends the largest gradient into the backbone (the L2 norm over
    all backbone parameters), for the trained model on the first training image of the embedded
    sample (its whole 256 x 256, sampling rng seeded 0)?

    One ``forward_train``, then ``backward`` five times on the same cache with
    ``loss_weights`` 1 for one loss and 0 for the others. The box regression loss: 0.996, twice
    the classifier's 0.53; the mask loss 0.29, objectness 0.14, RPN box 0.09 (the trained model
    has little left to learn about objectness). The parts a loss does not pass through get an
    exactly zero gradient (the RPN losses never reach the RoI heads, the mask loss never the box
    head), and the norm of the sum (1.62) is less than the sum of the norms: the terms partly
    cancel.
    """
    model = load_model("nuclei-mini-dsb2018")
    image, target = load_sample("train")[0]
    _, losses, cache = model.forward_train([standardize(image)], [target], np.random.default_rng(0))
    keys = list(losses)
    norms = {}
    for key in keys:
        model.zero_grad()
        model.backward(None, cache, loss_weights={k: float(k == key) for k in keys})
        grads = {n: p.grad for n, p in model.named_parameters()}
        norms[key] = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                 for n, g in grads.items() if n.startswith("backbone.")))
        if key.startswith("loss_rpn") or key == "loss_objectness":
            assert all(not np.any(g) for n, g in grads.items() if n.startswith("roi_heads."))
        if key == "loss_mask":
            assert all(not np.any(g) for n, g in grads.items() if n.startswith("roi_heads.box"))
    ranked = sorted(norms, key=norms.get, reverse=True)
    assert norms[ranked[0]] > 1.5 * norms[ranked[1]], norms  # a clear winner
    return ranked[0]


def exercise_3():
    """The adjoint test of section 5 run on the buggy backward of section 4 (the RoIAlign
    backward multiplied by 4): its relative error |<Ax, g> - <x, 4 A^T g>| / |<Ax, g>|.

    <x, 4 A^T g> = 4 <Ax, g>, so the error is |1 - 4| = 3 for every x and g: one pair of random
    arrays finds the bug and says by how much the backward is off (a missing 1/count, a wrong
    scale); a bug that is not a constant factor shows up as a data-dependent error instead.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 16, 16))
    boxes = np.array([[0, 1.5, 2.0, 13.0, 9.5], [1, 0.0, 0.0, 16.0, 16.0], [1, 7.2, 3.3, 7.9, 14.0]])
    g = rng.normal(size=(3, 4, 7, 7))
    lhs = np.sum(ops.roi_align(x, boxes, 7, 1.0, 2, False) * g)
    rhs = np.sum(x * 4 * ops.roi_align_backward(g, boxes, x.shape, 7, 1.0, 2, False))
    err = abs(lhs - rhs) / abs(lhs)
    np.testing.assert_allclose(err, 3.0, rtol=1e-9)
    return float(err)


def main():
    print("1. P3 cells with a non-zero gradient:", exercise_1())
    print("2. the loss with the largest backbone gradient:", exercise_2())
    print(f"3. adjoint test's relative error with the backward x4: {exercise_3():.12f}")


if __name__ == "__main__":
    main()
