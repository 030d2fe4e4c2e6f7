"""The keypoint head (paper section 5) and Mask R-CNN with it: float64 gradient checks of the head
and of the model's keypoint path, loss names and weights, inference outputs, bad input."""

import dataclasses

import numpy as np
import pytest

from minimaskrcnn.config import ModelConfig, get_preset
from minimaskrcnn.model import LOSS_KEYS, build_model
from minimaskrcnn.model.box_head import SampledRoIs
from minimaskrcnn.model.keypoint_head import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    build_keypoint_branch,
    keypoint_targets,
    keypointrcnn_inference,
    keypointrcnn_loss,
)
from minimaskrcnn.model.roi_heads import branch_backward, branch_forward, select_foreground
from minimaskrcnn.testing.gradcheck import gradcheck

pytestmark = pytest.mark.usefixtures("single_thread")

HEAD_CFG = ModelConfig(num_classes=2, fpn_channels=4, num_keypoints=3, keypoint_roi_size=4,
                       keypoint_heatmap_size=16, keypoint_head_convs=2, keypoint_head_channels=4)


def _head_case(dtype=np.float64):
    """The keypoint branch (pooler, heads, predictor), P2..P5 of a 64 x 64 batch of one image,
    the foreground of 3 sampled RoIs (2 foreground) and the keypoints of 2 ground truths (one
    keypoint outside its RoI, one not labelled)."""
    rng = np.random.default_rng(0)
    pool, head, predictor = build_keypoint_branch(HEAD_CFG, rng)
    assert isinstance(head, KeypointRCNNHeads) and isinstance(predictor, KeypointRCNNPredictor)
    for part in (head, predictor):
        part.astype(dtype)
        for p in part.parameters():  # biases off zero: no ReLU input sits exactly on the kink
            if p.data.ndim == 1:
                p.data += rng.uniform(-0.1, 0.1, p.shape)
    feats = [rng.normal(size=(1, 4, 64 // s, 64 // s)).astype(dtype) for s in (4, 8, 16, 32)]
    rois = np.array([[8, 10, 40, 44], [30, 5, 60, 30], [2, 2, 20, 20]], dtype)
    sampled = SampledRoIs([rois], [np.array([0, 1, 0])], [np.array([1, 2, 0])],
                          [np.zeros((3, 4), dtype)])
    gt_kp = [np.array([[[12, 15, 2], [30, 40, 2], [39.5, 9, 1]],
                       [[35, 10, 2], [59, 29, 2], [45, 20, 0]]], np.float32)]
    return (pool, head, predictor), feats, select_foreground(sampled), gt_kp


def _forward(parts, feats, fg, gt_kp):
    """What RoIHeads runs for the keypoint loss: the branch, the targets, the loss."""
    logits, cache = branch_forward(*parts, feats, fg.rois, (64, 64))
    targets, valid = keypoint_targets(fg.rois, fg.matched_idxs, gt_kp, logits.shape[-1],
                                      logits.shape[1])
    loss, d_logits = keypointrcnn_loss(logits, targets, valid, float(valid.sum()))
    return loss, d_logits, valid, cache


def test_keypoint_branch_gradient_float64():
    parts, feats, fg, gt_kp = _head_case()
    loss, _, valid, _ = _forward(parts, feats, fg, gt_kp)
    assert loss > 0
    # RoI 0's third keypoint (39.5, 9) lies above the RoI (y < 10), RoI 1's third is not
    # labelled (v = 0): both invalid; the background RoI 2 is not a foreground RoI
    np.testing.assert_array_equal(valid, [[True, True, False], [True, True, False]])
    params = parts[1].parameters() + parts[2].parameters()

    def f(*features):
        out, d_logits, _, c = _forward(parts, list(features), fg, gt_kp)

        def backward(dy):
            return tuple(branch_backward(*parts, d_logits * float(dy), c))

        return np.array(out), backward

    gradcheck(f, feats, params=params, eps=1e-6, atol=1e-9, rtol=1e-5, directions=8,
              seeds=(0, 1))


def test_keypoint_branch_without_valid_keypoints_has_zero_loss_and_no_gradient():
    parts, feats, fg, gt_kp = _head_case()
    gt_kp[0][..., 2] = 0  # nothing labelled
    loss, d_logits, _, cache = _forward(parts, feats, fg, gt_kp)
    assert loss == 0.0 and not d_logits.any()
    grads = branch_backward(*parts, d_logits, cache)
    assert [g.shape for g in grads] == [f.shape for f in feats]
    assert not any(g.any() for g in grads)
    assert not any(p.grad.any() for part in parts[1:] for p in part.parameters())


def test_keypoint_inference_shapes():
    parts, feats, _, _ = _head_case(np.float32)
    boxes = [np.array([[8, 10, 40, 44], [30, 5, 60, 30.5]], np.float32), np.zeros((0, 4),
                                                                                    np.float32)]
    logits, _ = branch_forward(*parts, feats, boxes, (64, 64))
    (kp, scores), (empty_kp, empty_scores) = keypointrcnn_inference(logits, boxes)
    assert kp.shape == (2, 3, 3) and kp.dtype == np.float32
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    assert (kp[..., 2] == 1).all()
    assert (kp[0, :, 0] >= 8).all() and (kp[0, :, 0] <= 40).all()
    assert empty_kp.shape == (0, 3, 3) and empty_scores.shape == (0, 3)


# --------------------------------------------------------------------------------------------
# Mask R-CNN with a keypoint head
# --------------------------------------------------------------------------------------------

TINY_KP = ModelConfig(
    num_classes=2, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4, fpn_channels=8,
    rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
    representation_size=16, mask_head_channels=8, detections_per_img=20, num_keypoints=2,
    keypoint_head_convs=2, keypoint_head_channels=8, keypoint_roi_size=7,
    keypoint_heatmap_size=28,
)


def _batch(dtype=np.float32):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    masks = np.stack([((xx - 20) ** 2 + (yy - 22) ** 2 < 81), ((xx - 44) ** 2 + (yy - 40) ** 2
                                                                < 144)]).astype(np.uint8)
    target = {"boxes": np.array([[11, 13, 30, 32], [32, 28, 57, 53]], np.float32),
              "labels": np.array([1, 2]), "masks": masks,
              "keypoints": np.array([[[14, 20, 2], [26, 24, 2]], [[40, 30, 2], [50, 50, 1]]],
                                    np.float32)}
    return [rng.standard_normal((3, 64, 64)).astype(dtype)], [target]


def test_model_with_keypoints_losses_weights_and_gradient_float64():
    model = build_model(TINY_KP, np.random.default_rng(0)).astype(np.float64)
    assert model.loss_keys == LOSS_KEYS + ("loss_keypoint",)
    brng = np.random.default_rng(5)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data += brng.uniform(-0.1, 0.1, p.shape)
    images, targets = _batch(np.float64)
    weights = {"loss_mask": 2.0, "loss_keypoint": 3.0, "loss_classifier": 0.5}

    def total(proposals):
        props, losses, cache = model.forward_train(images, targets, np.random.default_rng(7),
                                                   proposals=proposals)
        return sum(weights.get(k, 1.0) * v for k, v in losses.items()), props, losses, cache

    _, proposals, losses, _ = total(None)
    assert set(losses) == set(model.loss_keys) and losses["loss_keypoint"] > 0
    model.zero_grad()
    _, _, _, cache = total(proposals)
    model.backward(None, cache, weights)
    params = dict(model.named_parameters())
    assert all(np.abs(p.grad).sum() > 0 for n, p in params.items()
               if n.startswith("roi_heads.keypoint_"))
    rng = np.random.default_rng(1)
    eps = 1e-7
    for stage in ("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.kps_score_lowres",
                  "fpn."):
        names = [n for n in params if n.startswith(stage)]
        direction = {n: rng.standard_normal(params[n].shape) for n in names[:3]}
        analytic = sum(float((params[n].grad * v).sum()) for n, v in direction.items())
        for n, v in direction.items():
            params[n].data += eps * v
        lp = total(proposals)[0]
        for n, v in direction.items():
            params[n].data -= 2 * eps * v
        lm = total(proposals)[0]
        for n, v in direction.items():
            params[n].data += eps * v
        assert (lp - lm) / (2 * eps) == pytest.approx(analytic, rel=1e-6, abs=1e-9), stage


def test_model_with_keypoints_predicts_keypoints_and_refuses_bad_targets():
    model = build_model(TINY_KP, np.random.default_rng(0))
    images, targets = _batch()
    det = model.predict(images)[0]
    d = det["boxes"].shape[0]
    assert det["keypoints"].shape == (d, 2, 3) and det["keypoint_scores"].shape == (d, 2)
    with pytest.raises(ValueError, match=r"loss_weights: unknown loss names \['loss_kp'\]"):
        _, _, cache = model.forward_train(images, targets, np.random.default_rng(0))
        model.backward(None, cache, {"loss_kp": 1.0})
    bad = [{**targets[0], "keypoints": targets[0]["keypoints"][:, :1]}]  # K = 1, model has 2
    with pytest.raises(ValueError, match=r"targets\[0\]\['keypoints'\] must have shape \(G, K, 3\)"
                                         r" = \(2, 2, 3\)"):
        model.forward_train(images, bad, np.random.default_rng(0))
    missing = [{k: v for k, v in targets[0].items() if k != "keypoints"}]
    with pytest.raises(ValueError, match=r"targets\[0\] needs 'boxes' and 'keypoints'"):
        model.forward_train(images, missing, np.random.default_rng(0))


def test_model_without_keypoints_is_unchanged():
    model = build_model(dataclasses.replace(TINY_KP, num_keypoints=0), np.random.default_rng(0))
    assert not model.roi_heads.has_keypoint() and model.loss_keys == LOSS_KEYS
    assert not any("keypoint" in n for n, _ in model.named_parameters())
    images, targets = _batch()
    _, losses, _ = model.forward_train(images, targets, np.random.default_rng(0))
    assert set(losses) == set(LOSS_KEYS)
    assert "keypoints" not in model.predict(images)[0]


def test_keypoints_preset_and_config_errors():
    cfg = get_preset("keypoints-mini").model
    assert cfg.num_keypoints == 3 and cfg.keypoint_heatmap_size == 56
    with pytest.raises(ValueError, match="keypoint_heatmap_size must be 4 \\* keypoint_roi_size"):
        ModelConfig(num_keypoints=3, keypoint_heatmap_size=28)
    with pytest.raises(ValueError, match="keypoint_sigmas must be 3 positive numbers"):
        ModelConfig(num_keypoints=3, keypoint_sigmas=(0.1, 0.1))
    with pytest.raises(ValueError, match="num_keypoints must be >= 0"):
        ModelConfig(num_keypoints=-1)
