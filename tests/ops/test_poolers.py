"""MultiScaleRoIPooler / MultiScaleRoIAlign: level mapping worked by hand, pooling from the right
level, backward, every pooler type."""

import numpy as np
import pytest

from minimaskrcnn.ops import MultiScaleRoIAlign, MultiScaleRoIPooler, roi_align, roi_pool, roi_warp
from minimaskrcnn.ops.poolers import infer_scale, map_levels
from minimaskrcnn.testing.gradcheck import gradcheck

IMAGE = (128, 96)


def pyramid(rng, dtype=np.float64, N=2, C=2):
    # P2..P5 of a 128 x 96 image: strides 4, 8, 16, 32.
    return [rng.standard_normal((N, C, 128 // s, 96 // s)).astype(dtype) for s in (4, 8, 16, 32)]


def test_map_levels_by_hand():
    # k = floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to [2, 5], minus k_min = 2.
    boxes = np.array([
        [0, 0, 224, 224],   # sqrt(area) = 224 -> log2(1) = 0 -> k = 4 -> index 2
        [0, 0, 112, 112],   # 112 -> log2(1/2) = -1 -> k = 3 -> index 1
        [0, 0, 111, 111],   # just below 112 -> k = floor(2.99) = 2 -> index 0
        [0, 0, 56, 56],     # 56 -> k = 2 -> index 0
        [0, 0, 10, 10],     # tiny -> k = 0, clamped to 2 -> index 0
        [0, 0, 448, 448],   # 448 -> k = 5 -> index 3
        [0, 0, 2000, 900],  # huge -> clamped to 5 -> index 3
        [5, 5, 5, 9],       # zero area -> log2(0) = -inf -> clamped to 2 -> index 0
    ], dtype=np.float32)
    np.testing.assert_array_equal(map_levels(boxes, 2, 5), [2, 1, 0, 0, 0, 3, 3, 0])
    # (R, 5) boxes use their last four columns.
    rois = np.concatenate([np.zeros((8, 1), np.float32), boxes], axis=1)
    np.testing.assert_array_equal(map_levels(rois, 2, 5), [2, 1, 0, 0, 0, 3, 3, 0])


def test_infer_scale():
    assert infer_scale(32, 128) == 0.25
    assert infer_scale(25, 100) == 0.25
    assert infer_scale(13, 100) == 0.125  # 0.13 -> log2 = -2.94 -> rounds to -3
    assert infer_scale(4, 128) == 1 / 32


def levels_of(cache):
    """The level each RoI was pooled from, read back from the cache's per-level row indices."""
    levels = np.full(cache.rois.shape[0], -1)
    for lvl, idx in enumerate(cache.index):
        levels[idx] = lvl
    return levels


@pytest.mark.parametrize("aligned", [False, True])
def test_forward_pools_each_roi_from_its_level(tier, aligned):
    rng = np.random.default_rng(0)
    feats = pyramid(rng)
    boxes = [np.array([[0, 0, 40, 40], [10, 20, 90, 120]], dtype=np.float64),
             np.array([[5, 5, 95, 127], [30, 30, 31, 33], [0, 0, 60, 60]], dtype=np.float64)]
    pooler = MultiScaleRoIAlign((3, 2), 2, aligned=aligned)
    out, cache = pooler.forward(feats, boxes, IMAGE, tier=tier)
    assert out.shape == (5, 2, 3, 2)
    # Each row must equal roi_align on the level the mapper picked, at that level's scale.
    rois = np.concatenate([np.c_[np.zeros(2), boxes[0]], np.c_[np.ones(3), boxes[1]]])
    levels = map_levels(rois, 2, 5)
    np.testing.assert_array_equal(levels_of(cache), levels)
    for r in range(5):
        lvl = levels[r]
        ref = roi_align(feats[lvl], rois[r:r + 1], (3, 2), 0.25 / 2**lvl, 2, aligned, tier="numpy")
        np.testing.assert_allclose(out[r:r + 1], ref, rtol=1e-12)


def test_large_boxes_go_to_coarse_levels():
    rng = np.random.default_rng(1)
    feats = pyramid(rng)
    boxes = np.array([[0, 0, 0, 20, 20], [1, 0, 0, 96, 128], [0, 0, 0, 500, 500]], dtype=np.float64)
    pooler = MultiScaleRoIAlign(2, 2)
    out, cache = pooler.forward(feats, boxes, IMAGE)
    # sqrt(area) 20 -> k=0 -> P2; 110.9 -> k = 2.98 -> P2; 500 -> k = 5.16 -> P5.
    np.testing.assert_array_equal(levels_of(cache), [0, 0, 3])
    ref = roi_align(feats[3], boxes[2:], 2, 1 / 32, 2, tier="numpy")
    np.testing.assert_allclose(out[2:], ref, rtol=1e-12)


@pytest.mark.parametrize("pooler_type", ["align", "align_max", "warp_avg", "warp_max", "pool"])
def test_backward_is_the_adjoint_per_level(pooler_type):
    rng = np.random.default_rng(2)
    feats = [f + 0.01 * rng.permutation(f.size).reshape(f.shape) for f in pyramid(rng)]
    boxes = np.array([[0, 3, 4, 30, 44], [1, 0, 0, 95, 127], [1, 20, 10, 140, 140],
                      [0, 50, 60, 70, 71], [1, 10, 10, 300, 260]], dtype=np.float64)
    pooler = MultiScaleRoIPooler(3, 2, pooler_type=pooler_type)
    out, cache = pooler.forward(feats, boxes, IMAGE)
    g = rng.standard_normal(out.shape)
    grads = pooler.backward(g, cache)
    assert [gr.shape for gr in grads] == [f.shape for f in feats]
    # Every op is linear in the features once the argmax (max-based ops) is fixed.
    lhs = np.sum(out * g)
    rhs = sum(np.sum(f * gr) for f, gr in zip(feats, grads, strict=True))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    # Gradients land only on the levels that pooled something.
    used = set(levels_of(cache).tolist())
    for lvl, gr in enumerate(grads):
        assert gr.any() == (lvl in used)


def test_gradcheck_float64():
    rng = np.random.default_rng(3)
    feats = pyramid(rng, N=1, C=1)
    boxes = [np.array([[3, 4, 30, 44], [0, 0, 95, 127], [40, 40, 60, 61]], dtype=np.float64)]
    pooler = MultiScaleRoIAlign(2, 2)

    def f(*levels):
        out, cache = pooler.forward(list(levels), boxes, IMAGE)
        return out, lambda dy: tuple(pooler.backward(dy, cache))

    gradcheck(f, feats, directions=3, seeds=(0,))


def test_single_level_and_empty():
    rng = np.random.default_rng(4)
    feat = rng.standard_normal((1, 2, 16, 12))
    pooler = MultiScaleRoIAlign(2, 2)
    out, cache = pooler.forward([feat], [np.array([[0, 0, 500, 500]], float)], (64, 48))
    ref = roi_align(feat, [np.array([[0, 0, 500, 500]], float)], 2, 0.25, 2, tier="numpy")
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    out, cache = pooler.forward([feat], np.zeros((0, 5)), (64, 48))
    assert out.shape == (0, 2, 2, 2)
    assert not pooler.backward(out, cache)[0].any()


def test_bad_input():
    with pytest.raises(ValueError, match="pooler_type must be one of"):
        MultiScaleRoIPooler(7, pooler_type="bilinear")
    with pytest.raises(TypeError):
        MultiScaleRoIAlign(7, pooler_type="pool")  # torchvision's name: RoIAlign only
    pooler = MultiScaleRoIAlign(2)
    with pytest.raises(ValueError, match="non-empty list"):
        pooler.forward([], np.zeros((0, 5)), (8, 8))
    with pytest.raises(ValueError, match=r"features\[1\]"):
        pooler.forward([np.zeros((1, 2, 8, 8)), np.zeros((1, 3, 4, 4))], np.zeros((0, 5)), (32, 32))
    with pytest.raises(ValueError, match="batch indices"):
        pooler.forward([np.zeros((1, 2, 8, 8))], np.array([[1.0, 0, 0, 4, 4]]), (32, 32))


@pytest.mark.parametrize("pooler_type", ["align", "align_max", "warp_avg", "warp_max", "pool"])
def test_each_pooler_type_runs_its_own_op(pooler_type):
    # the op is resolved once, when the pooler is built: each type pools as its RoI op does
    rng = np.random.default_rng(5)
    feat = rng.standard_normal((1, 2, 16, 12))
    boxes = np.array([[0, 3.3, 4.6, 30.2, 41.7]])
    pooler = MultiScaleRoIPooler((3, 2), 2, pooler_type=pooler_type, aligned=True)
    out, _ = pooler.forward([feat], boxes, (64, 48))
    mode = "max" if pooler_type.endswith("max") else "avg"
    if pooler_type == "pool":
        ref = roi_pool(feat, boxes, (3, 2), 0.25)
    elif pooler_type.startswith("warp"):
        ref = roi_warp(feat, boxes, (3, 2), 0.25, 2, mode=mode)
    else:
        ref = roi_align(feat, boxes, (3, 2), 0.25, 2, True, mode=mode)
    np.testing.assert_array_equal(out, ref)
    assert repr(pooler).startswith(f"MultiScaleRoIPooler(output_size=(3, 2), sampling_ratio=2, "
                                   f"pooler_type='{pooler_type}'")


def test_multiscale_roi_align_is_the_align_pooler():
    pooler = MultiScaleRoIAlign(7, 2, canonical_scale=112, canonical_level=3)
    assert isinstance(pooler, MultiScaleRoIPooler) and pooler.pooler_type == "align"
    assert not pooler.aligned and pooler.output_size == (7, 7)
    assert (pooler.canonical_scale, pooler.canonical_level) == (112, 3)
