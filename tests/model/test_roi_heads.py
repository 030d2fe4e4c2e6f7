"""The RoI heads: one foreground selection for the mask and keypoint heads, heads made of
injected parts (the choice of a part is made where the heads are built, nothing branches on it
afterwards), every cache a named type, the branches' gradients adding up per level."""

import dataclasses

import numpy as np
import pytest

from minimaskrcnn.model import MaskRCNNCache, RoIHeads, RoIHeadsCache, build_model
from minimaskrcnn.model.box_head import FastRCNNPredictor, TwoMLPHead
from minimaskrcnn.model.keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor
from minimaskrcnn.model.mask_head import (
    MaskRCNNHeads,
    MaskRCNNMLPHead,
    MaskRCNNMLPPredictor,
    MaskRCNNPredictor,
)
from minimaskrcnn.model.stage import sum_levels
from minimaskrcnn.testing.tiny import TINY, tiny_batch

pytestmark = pytest.mark.usefixtures("single_thread")

MLP = {"mask_head_type": "mlp", "mask_mlp_dims": (12, 10)}
KEYPOINTS = {"num_keypoints": 2, "keypoint_head_convs": 1, "keypoint_head_channels": 4,
             "keypoint_roi_size": 4, "keypoint_heatmap_size": 16}


def _keypoint_batch():
    """tiny_batch with two keypoints per instance (box centre, and a point inside the box)."""
    images, targets = tiny_batch()
    for t in targets:
        b = t["boxes"]
        centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, np.full(len(b), 2)], 1)
        inner = np.stack([b[:, 0] + 2, b[:, 1] + 3, np.full(len(b), 2)], 1)
        t["keypoints"] = np.stack([centre, inner], 1).astype(np.float32)  # (G, 2, 3)
    return images, targets


def _train(change, seed=0):
    cfg = dataclasses.replace(TINY, **change)
    model = build_model(cfg, np.random.default_rng(seed))
    images, targets = _keypoint_batch() if cfg.num_keypoints else tiny_batch()
    _, losses, cache = model.forward_train(images, targets, np.random.default_rng(3))
    return model, losses, cache


def test_mask_and_keypoint_heads_get_the_same_foreground_rois():
    _, losses, cache = _train(KEYPOINTS)
    rh = cache.roi_heads
    assert losses["loss_keypoint"] > 0 and losses["loss_mask"] > 0
    box_rois = rh.box.branch.pool.rois  # (R, 5) [image, x1, y1, x2, y2], image by image
    foreground = box_rois[rh.box.labels > 0]
    assert 0 < foreground.shape[0] < box_rois.shape[0]
    np.testing.assert_array_equal(rh.mask.branch.pool.rois, foreground)
    np.testing.assert_array_equal(rh.keypoint.branch.pool.rois, foreground)
    assert rh.mask.d_mask_logits.shape[0] == rh.keypoint.d_keypoint_logits.shape[0]


def _is_named(cache):
    return isinstance(cache, tuple) and hasattr(type(cache), "_fields")


@pytest.mark.parametrize("change", [{}, MLP, KEYPOINTS], ids=["fcn", "mlp", "keypoints"])
def test_every_cache_is_a_named_type(change):
    _, _, cache = _train(change)
    assert isinstance(cache, MaskRCNNCache) and isinstance(cache.roi_heads, RoIHeadsCache)
    rh = cache.roi_heads
    branches = {"box": rh.box, "mask": rh.mask} | ({"keypoint": rh.keypoint}
                                                   if "num_keypoints" in change else {})
    assert (rh.keypoint is None) == ("num_keypoints" not in change)
    named = [cache.backbone, cache.fpn, cache.rpn, *cache.rpn.head, *cache.backbone.stages[0],
             rh.box.branch.head]
    for c in branches.values():
        named += [c, c.branch, c.branch.pool, c.branch.predictor]
    if change is MLP:
        named.append(rh.mask.branch.head)
    for c in named:
        assert _is_named(c), type(c)
    # the heads' caches by name, in the fields' order of the forward
    assert type(rh.box.branch.head).__name__ == "TwoMLPHeadCache"
    assert type(rh.box.branch.head)._fields == ("input_shape", "fc6", "relu6", "fc7", "relu7")
    assert type(rh.box.branch.predictor).__name__ == "FastRCNNPredictorCache"
    predictor = {"fcn": "MaskRCNNPredictorCache", "mlp": "MLPPredictorCache"}
    assert type(rh.mask.branch.predictor).__name__ == predictor["mlp" if change is MLP else "fcn"]


def test_heads_are_injected_parts_and_run_by_their_parts_only():
    fcn, _, _ = _train({})
    mlp, mlp_losses, _ = _train(MLP)
    assert isinstance(fcn.roi_heads, RoIHeads)
    assert isinstance(fcn.roi_heads.box_head, TwoMLPHead)
    assert isinstance(fcn.roi_heads.box_predictor, FastRCNNPredictor)
    assert isinstance(fcn.roi_heads.mask_head, MaskRCNNHeads)
    assert isinstance(fcn.roi_heads.mask_predictor, MaskRCNNPredictor)
    assert isinstance(mlp.roi_heads.mask_head, MaskRCNNMLPHead)
    assert isinstance(mlp.roi_heads.mask_predictor, MaskRCNNMLPPredictor)
    kp, _, _ = _train(KEYPOINTS)
    assert isinstance(kp.roi_heads.keypoint_head, KeypointRCNNHeads)
    assert isinstance(kp.roi_heads.keypoint_predictor, KeypointRCNNPredictor)
    assert fcn.roi_heads.keypoint_head is None and not fcn.roi_heads.has_keypoint()
    # the same seed builds the same backbone, FPN, RPN and box head: the FCN model with the MLP
    # model's mask parts swapped in is the MLP model, names, losses and gradients
    fcn.roi_heads.mask_head = mlp.roi_heads.mask_head
    fcn.roi_heads.mask_predictor = mlp.roi_heads.mask_predictor
    assert [n for n, _ in fcn.named_parameters()] == [n for n, _ in mlp.named_parameters()]
    images, targets = tiny_batch()
    _, losses, cache = fcn.forward_train(images, targets, np.random.default_rng(3))
    assert losses == mlp_losses
    fcn.zero_grad()
    fcn.backward(None, cache)
    grads = {n: p.grad.copy() for n, p in fcn.named_parameters()}
    _, _, cache = mlp.forward_train(images, targets, np.random.default_rng(3))
    mlp.zero_grad()
    mlp.backward(None, cache)
    for n, p in mlp.named_parameters():
        np.testing.assert_array_equal(grads[n], p.grad, err_msg=n)


def test_roi_heads_backward_is_the_sum_of_its_heads():
    """RoIHeads.backward = box + mask (+ keypoint) level gradients: each head alone (the other
    losses weighted 0) and the three added per level give the whole."""
    model, _, cache = _train(KEYPOINTS)
    rh = model.roi_heads
    whole = rh.backward(None, cache.roi_heads)
    parts = []
    for keep in ("loss_classifier", "loss_mask", "loss_keypoint"):
        weights = {k: 0.0 for k in rh.loss_keys}
        weights[keep] = 1.0
        if keep == "loss_classifier":
            weights["loss_box_reg"] = 1.0
        parts.append(rh.backward(None, cache.roi_heads, weights))
    assert all(any(g.any() for g in p) for p in parts)
    for w, s in zip(whole, sum_levels(*parts), strict=True):
        np.testing.assert_allclose(w, s, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="sampled RoIs carry no gradient"):
        rh.backward([], cache.roi_heads)


def test_sum_levels_adds_left_to_right():
    a, b, c = [np.float32(1e8)], [np.float32(-1e8)], [np.float32(1.0)]
    assert sum_levels(a, b, c) == [np.float32(1.0)]  # (a + b) + c, not a + (b + c) = 0
    assert sum_levels(a, b) == [np.float32(0.0)]
