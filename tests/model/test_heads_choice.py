"""Heads as choices of the config (issue 25): box only (Faster R-CNN with RoIAlign), box + mask
(Mask R-CNN, the default), box + keypoints (Keypoint R-CNN), box + mask + keypoints. For each:
the parameters, the losses, the float64 gradient check of the whole training loss, and what
``predict`` returns."""

import dataclasses

import numpy as np
import pytest

from minimaskrcnn.config import ModelConfig
from minimaskrcnn.model import LOSS_KEYS, build_model
from minimaskrcnn.testing.tiny import TINY, tiny_batch

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny matrices: see conftest.py

KEYPOINTS = {"num_keypoints": 2, "keypoint_head_convs": 2, "keypoint_head_channels": 8,
             "keypoint_roi_size": 7, "keypoint_heatmap_size": 28}
COMBINATIONS = {  # name: (mask_on, keypoint fields)
    "box": (False, {}),
    "box+mask": (True, {}),
    "box+keypoints": (False, KEYPOINTS),
    "box+mask+keypoints": (True, KEYPOINTS),
}
RPN_BOX_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
LOSS_WEIGHTS = {"loss_objectness": 0.5, "loss_rpn_box_reg": 2.0, "loss_classifier": 1.5,
                "loss_box_reg": 0.7, "loss_mask": 3.0, "loss_keypoint": 1.3}
STAGES = ["backbone.conv1", "backbone.layers.0", "backbone.layers.3", "fpn.inner_blocks",
          "fpn.layer_blocks", "rpn.head", "roi_heads.box_head.fc",
          "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
MASK_STAGES = ["roi_heads.mask_head.mask_fcn", "roi_heads.mask_predictor.conv5_mask",
               "roi_heads.mask_predictor.mask_fcn_logits"]
KEYPOINT_STAGES = ["roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.kps_score_lowres"]


def _config(name):
    mask_on, keypoints = COMBINATIONS[name]
    return dataclasses.replace(TINY, mask_on=mask_on, **keypoints)


def _batch(cfg, dtype=np.float32):
    """The tiny batch; keypoints inside each box with a keypoint head; no masks without a mask
    head (the targets need none)."""
    images, targets = tiny_batch(dtype)
    for t in targets:
        if cfg.num_keypoints:
            b = t["boxes"]
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            t["keypoints"] = np.stack([np.stack([cx - 3, cy - 2, np.full_like(cx, 2)], 1),
                                       np.stack([cx + 2, cy + 3, np.full_like(cx, 2)], 1)], 1)
        if not cfg.mask_on:
            del t["masks"]
    return images, targets


def _expected_losses(cfg):
    return (RPN_BOX_LOSSES + (("loss_mask",) if cfg.mask_on else ())
            + (("loss_keypoint",) if cfg.num_keypoints else ()))


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_heads_parameters_and_loss_keys_follow_the_config(name):
    cfg = _config(name)
    model = build_model(cfg, np.random.default_rng(0))
    names = [n for n, _ in model.named_parameters()]
    assert model.roi_heads.has_mask() == cfg.mask_on
    assert model.roi_heads.has_keypoint() == bool(cfg.num_keypoints)
    assert any(n.startswith("roi_heads.mask_") for n in names) == cfg.mask_on
    assert any(n.startswith("roi_heads.keypoint_") for n in names) == bool(cfg.num_keypoints)
    assert model.loss_keys == _expected_losses(cfg)
    # the parts before the heads are the same network, drawn from the same stream
    full = dict(build_model(dataclasses.replace(cfg, mask_on=True), np.random.default_rng(0))
                .named_parameters())
    for n, p in model.named_parameters():
        if not n.startswith("roi_heads.keypoint_"):  # drawn after the mask head's
            assert np.array_equal(p.data, full[n].data), n


def test_default_config_has_the_mask_head_and_the_same_network():
    assert ModelConfig().mask_on is True and TINY.mask_on is True
    a = build_model(TINY, np.random.default_rng(0))
    b = build_model(dataclasses.replace(TINY, mask_on=True), np.random.default_rng(0))
    assert a.loss_keys == LOSS_KEYS
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and np.array_equal(pa.data, pb.data)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_gradient_check_whole_training_loss_float64(name):
    """d(weighted total loss)/d(params) against central differences along random directions,
    for each combination of heads (as tests/model/test_model.py checks the Table 2 variants:
    fixed proposals, re-seeded samplers, biases moved off the ReLU kinks)."""
    cfg = _config(name)
    model = build_model(cfg, np.random.default_rng(0)).astype(np.float64)
    brng = np.random.default_rng(5)
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            p.data += brng.uniform(-0.1, 0.1, p.shape)
    images, targets = _batch(cfg, np.float64)
    seed = 7

    def total(proposals):
        props, losses, cache = model.forward_train(images, targets, np.random.default_rng(seed),
                                                   proposals=proposals)
        return sum(LOSS_WEIGHTS[k] * v for k, v in losses.items()), props, losses, cache

    _, proposals, _, _ = total(None)
    model.zero_grad()
    _, _, losses, cache = total(proposals)
    assert tuple(losses) == _expected_losses(cfg) and all(v > 0 for v in losses.values()), losses
    weights = {k: LOSS_WEIGHTS[k] for k in model.loss_keys}
    model.backward(None, cache, weights)

    params = dict(model.named_parameters())
    for n, p in params.items():  # every parameter receives a gradient but the mask background
        if n.startswith("roi_heads.mask_predictor.mask_fcn_logits"):
            g = p.grad.reshape(cfg.num_classes + 1, -1)
            assert not g[0].any() and g[1:].any(axis=1).all(), n
        else:
            assert np.abs(p.grad).sum() > 0, f"{n} got no gradient"

    stages = (STAGES + (MASK_STAGES if cfg.mask_on else [])
              + (KEYPOINT_STAGES if cfg.num_keypoints else []))
    rng = np.random.default_rng(123)
    eps = 1e-7
    for stage in stages:
        names = [n for n in params if n.startswith(stage)]
        assert names, stage
        # every parameter of the stage: a directional derivative well above the differences'
        # rounding (about |L| 1e-16 / eps = 1e-8 with the keypoint loss's ~10)
        direction = {n: rng.standard_normal(params[n].shape) for n in names}
        analytic = sum(float((params[n].grad * v).sum()) for n, v in direction.items())
        for n, v in direction.items():
            params[n].data += eps * v
        lp = total(proposals)[0]
        for n, v in direction.items():
            params[n].data -= 2 * eps * v
        lm = total(proposals)[0]
        for n, v in direction.items():
            params[n].data += eps * v
        numeric = (lp - lm) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9), (stage, numeric, analytic)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_predict_outputs_follow_the_heads(name):
    cfg = dataclasses.replace(_config(name), box_score_thresh=0.0)
    model = build_model(cfg, np.random.default_rng(0))
    images, _ = tiny_batch()
    for mask_format in ("bool", "rle"):
        preds = model.predict(images, mask_format=mask_format)
        for image, p in zip(images, preds, strict=True):
            d = len(p["scores"])
            assert d > 0
            keys = {"boxes", "labels", "scores"}
            if cfg.mask_on:
                keys.add("masks")
                assert len(p["masks"]) == d
                if mask_format == "bool":
                    assert p["masks"].shape == (d, *image.shape[1:])
            if cfg.num_keypoints:
                keys |= {"keypoints", "keypoint_scores"}
                assert p["keypoints"].shape == (d, cfg.num_keypoints, 3)
            assert set(p) == keys


def test_without_a_mask_head_targets_need_no_masks_and_loss_mask_is_refused():
    cfg = _config("box")
    model = build_model(cfg, np.random.default_rng(0))
    images, targets = _batch(cfg)
    with_masks = tiny_batch()[1]  # masks given anyway are ignored: the same losses
    _, a, _ = model.forward_train(images, targets, np.random.default_rng(0))
    _, b, cache = model.forward_train(images, with_masks, np.random.default_rng(0))
    assert a == b and "loss_mask" not in a
    with pytest.raises(ValueError, match=r"loss_weights: unknown loss names \['loss_mask'\]"):
        model.backward(None, cache, {"loss_mask": 1.0})
    # with a mask head the masks are required, as before
    full = build_model(TINY, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"targets\[0\] must be a dict with boxes, labels and "
                                         "masks"):
        full.forward_train(images, targets, np.random.default_rng(0))
