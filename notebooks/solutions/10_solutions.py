"""Chapter 10 (the backbone and the FPN), the exercises' experiments, checked by asserts.

Run: ``python notebooks/solutions/10_solutions.py`` (prints every answer). In the chapter, the
stub cells' ``check("10.k", answer)`` compares your answer with what ``exercise_k()`` returns.
"""

import numpy as np

import minimaskrcnn.nn as mnn
from minimaskrcnn import build_model, load_model
from minimaskrcnn.data import load_sample, standardize

TOLERANCE = {3: 0.02}  # exercise 3: measured correlations and norms, 2 % relative


def exercise_1():
    """Sizes of P2..P6 for a 520 x 696 image.

    The batch is padded to multiples of 32: 544 x 704. C_l and P_l have stride 2**l: C2/P2
    136 x 176, C3/P3 68 x 88, C4/P4 34 x 44, C5/P5 17 x 22; P6 = P5[::2, ::2] takes rows and
    columns 0, 2, ..., so 9 x 11 (ceil(17 / 2), ceil(22 / 2)): an odd size rounds up.
    """
    model = build_model("nuclei-mini", np.random.default_rng(0))  # shapes do not depend on the weights
    batch, sizes = model.transform([np.zeros((3, 520, 696), np.float32)])[0]  # the ImageList
    assert batch.shape[-2:] == (544, 704) and sizes == [(520, 696)]
    C, _ = model.backbone.forward(batch)
    P, _ = model.fpn.forward(C)
    expected = [(136, 176), (68, 88), (34, 44), (17, 22)]
    assert [c.shape[-2:] for c in C] == expected
    assert [p.shape[-2:] for p in P] == expected + [(9, 11)]
    return [tuple(p.shape[-2:]) for p in P]


def _convs(module, prefix=""):
    """``(name, Conv2d)`` of every convolution under ``module``, in forward order."""
    kids = list(module.named_children())
    if not kids and isinstance(module, mnn.Conv2d):
        yield prefix, module
    for name, child in kids:
        yield from _convs(child, f"{prefix}.{name}" if prefix else name)


def exercise_2():
    """The receptive field of one cell of C2, C3, C4, C5, in input pixels (along one axis).

    Walking the convolutions in order, a k x k convolution of stride s adds (k - 1) x jump pixels
    to the receptive field, where jump is the product of the strides before it; the 1x1 shortcuts
    add nothing, so the longest path is the main one. Stem 3x3 s2: 3 (jump 2). Each stage: a 3x3
    s2 conv (+2 x jump) then a 3x3 conv (+2 x 2 jump): C2 15, C3 39, C4 87, C5 183 px. A C2 cell
    sees 15 pixels, less than a median DSB2018 nucleus (17.3 px, sqrt of its mask area) and far
    less than a 95th-percentile one (43.2 px); C3's 39 px covers most nuclei, C4's 87 px all but
    the largest. The top-down path is how P2 sees further than 15 px.

    (GroupNorm normalises each map over all its pixels, so in the trained network every output
    depends a little on every input pixel; the receptive field counts the pixels a cell's
    convolutions reach.) Checked by brute force on one axis: an impulse at each input position,
    pushed through 1-D convolutions of ones with each layer's kernel, stride and padding (main
    path + shortcut of each block); the receptive field is the number of positions that reach
    the centre cell.
    """
    model = build_model("nuclei-mini", np.random.default_rng(0))
    bb = model.backbone
    stem = [c for _, c in _convs(bb.conv1)]
    fields, rf, jump = [], 1, 1
    for conv in stem:
        rf, jump = rf + (conv.kernel_size[0] - 1) * jump, jump * conv.stride[0]
    for stage in bb.layers:
        for block in stage:
            for conv in (block.conv1, block.conv2):      # the main path; the shortcut is 1x1
                rf, jump = rf + (conv.kernel_size[0] - 1) * jump, jump * conv.stride[0]
        fields.append(rf)
    assert fields == [15, 39, 87, 183]

    def conv1d(x, conv):  # x (positions, width): ones of the layer's kernel, stride, padding
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        xp = np.pad(x, ((0, 0), (p, p)))
        n = (xp.shape[1] - k) // s + 1
        return sum(xp[:, t: t + s * (n - 1) + 1: s] for t in range(k))

    width = 512
    h = np.eye(width)  # row i: an impulse at input position i
    for conv in stem:
        h = conv1d(h, conv)
    brute = []
    for stage in bb.layers:
        for block in stage:
            main = conv1d(conv1d(h, block.conv1), block.conv2)
            short = h if isinstance(block.downsample, mnn.Identity) else conv1d(h, block.downsample[0])
            h = main + short
        brute.append(int(np.count_nonzero(h[:, h.shape[1] // 2])))
    assert brute == fields, brute
    return fields


def _best_abs_r(f, fg_cells):
    """The largest |correlation| between one channel of ``f`` (1, C, h, w) and ``fg_cells``."""
    t = fg_cells.ravel()
    v = f[0].reshape(f.shape[1], -1).astype(np.float64)
    v = (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-12)
    return float(np.abs(v @ ((t - t.mean()) / t.std()) / t.size).max())


def exercise_3():
    """Remove the FPN's top-down path: P2 = output_2(lateral_2(C2)). On val image 0, what is
    the best |r| of one channel of P2 with the nuclei (section 4's measure), and how much of
    P2 changes, |P2 - P2 without top-down| / |P2|?

    About 0.89 against 0.86 with the top-down path, while P2 changes by about 80 % of its norm.
    The top-down path rewrites most of P2, but not to make one channel a better nucleus
    detector: C2's own features already mark the nuclei pixel by pixel (C2's best |r| is 0.81).
    What it adds is what C2 cannot see, context from receptive fields of 39 to 183 pixels
    (exercise 2): how big the object around a cell is, whether there are nuclei nearby. The
    heads read all 64 channels together, and the model was trained with the top-down path.
    """
    model = load_model("nuclei-mini-dsb2018")
    image, target = load_sample("val")[0]
    batch, _ = model.transform([standardize(image)])[0]
    C, _ = model.backbone.forward(batch)
    P, _ = model.fpn.forward(C)
    lateral, _ = model.fpn.inner_blocks[0].forward(C[0])
    p2_alone, _ = model.fpn.layer_blocks[0].forward(lateral)
    fg = target["masks"].any(0).astype(np.float64)
    hp, wp = batch.shape[-2:]
    fg_pad = np.zeros((hp, wp))
    fg_pad[:fg.shape[0], :fg.shape[1]] = fg
    cells = fg_pad.reshape(hp // 4, 4, wp // 4, 4).mean((1, 3))   # nucleus fraction per P2 cell
    with_td, without_td = _best_abs_r(P[0], cells), _best_abs_r(p2_alone, cells)
    change = float(np.linalg.norm(P[0] - p2_alone) / np.linalg.norm(P[0]))
    assert 0.5 < change < 1.2 and without_td > with_td > 0.7
    return [round(without_td, 3), round(change, 3)]


def main():
    print("1. P2..P6 sizes of a 520 x 696 image:", exercise_1())
    print("2. receptive fields of C2..C5 (px):", exercise_2())
    print("3. P2 without the top-down path: [best |r|, relative change of P2]:", exercise_3())


if __name__ == "__main__":
    main()
