"""Hand-worked cases for the non-differentiable pieces of the model: RPN anchor targets, proposal
filtering, RoI sampling targets and the detection postprocess. Every expected value below was
worked out by hand (IoUs and box codes written in the comments)."""

import math

import numpy as np
import pytest

from minimaskrcnn.model.box_head import (
    fastrcnn_loss,
    postprocess_detections,
    select_training_samples,
)
from minimaskrcnn.model.matcher import Matcher
from minimaskrcnn.model.rpn import (
    assign_anchor_targets,
    filter_proposals,
    flatten_head_outputs,
    unflatten_head_grads,
)
from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler
from minimaskrcnn.ops import BoxCoder


def f32(x):
    return np.asarray(x, np.float32)


def test_rpn_anchor_targets_hand_worked():
    gt = f32([[0, 0, 10, 10], [50, 50, 60, 60]])
    anchors = f32([
        [0, 0, 10, 10],    # IoU 1 with gt0                  -> foreground
        [0, 0, 10, 5],     # IoU 50/100 = 0.5                 -> ignored
        [20, 20, 30, 30],  # IoU 0                            -> background
        [0, 0, 20, 10],    # IoU 100/200 = 0.5                -> ignored
        [5, 0, 15, 10],    # IoU 50/150 = 0.333               -> ignored
        [0, 0, 10, 8],     # IoU 80/100 = 0.8                 -> foreground
        [52, 50, 62, 60],  # IoU 80/120 = 0.667 with gt1: its best anchor -> foreground (low quality)
        [100, 100, 110, 110],  # IoU 0                        -> background
    ])
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    labels, targets = assign_anchor_targets(anchors, gt, matcher, BoxCoder((1, 1, 1, 1)))
    np.testing.assert_array_equal(labels, [1, -1, 0, -1, -1, 1, 1, 0])
    # anchor 5: centre (5, 4) size 10 x 8; gt0 centre (5, 5) size 10 x 10
    np.testing.assert_allclose(targets[5], [0, 1 / 8, 0, math.log(10 / 8)], atol=1e-6)
    # anchor 6: centre (57, 55) size 10 x 10; gt1 centre (55, 55): dx = -2 / 10
    np.testing.assert_allclose(targets[6], [-0.2, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(targets[0], 0, atol=1e-7)


def test_rpn_anchor_targets_without_ground_truth_are_all_background():
    anchors = f32([[0, 0, 10, 10], [5, 5, 20, 20]])
    labels, targets = assign_anchor_targets(anchors, np.zeros((0, 4), np.float32),
                                            Matcher(0.7, 0.3, True), BoxCoder((1, 1, 1, 1)))
    np.testing.assert_array_equal(labels, [0, 0])
    assert targets.shape == (2, 4) and not targets.any()


def test_flatten_order_matches_torchvision_and_round_trips():
    rng = np.random.default_rng(0)
    n, a, shapes = 2, 3, [(4, 5), (2, 3)]
    obj = [rng.standard_normal((n, a, h, w)) for h, w in shapes]
    dl = [rng.standard_normal((n, 4 * a, h, w)) for h, w in shapes]
    o, d = flatten_head_outputs(obj, dl)
    assert o.shape == (n, 4 * 5 * 3 + 2 * 3 * 3) and d.shape == o.shape + (4,)
    # anchor index t = (row * W + col) * A + a on level 0; deltas channel = a * 4 + coord
    assert o[1, (2 * 5 + 3) * a + 1] == obj[0][1, 1, 2, 3]
    assert d[1, (2 * 5 + 3) * a + 2, 3] == dl[0][1, 2 * 4 + 3, 2, 3]
    off = 4 * 5 * 3
    assert o[0, off + (1 * 3 + 2) * a + 0] == obj[1][0, 0, 1, 2]
    go, gd = unflatten_head_grads(o, d, [x.shape for x in obj])
    for x, y in zip(go + gd, obj + dl, strict=True):
        np.testing.assert_array_equal(x, y)


def test_filter_proposals_hand_worked():
    # level 0 has 3 anchors, level 1 has 2; zero deltas decode to the anchors themselves
    anchors = f32([
        [-5, 0, 10, 10],         # obj 3   -> clipped to [0, 0, 10, 10]
        [1, 0, 11, 10],          # obj 2   -> IoU 90/110 = 0.82 with the first: NMS removes it
        [20, 20, 30, 30],        # obj 1   -> not in level 0's top 2
        [0, 0, 10, 10],          # obj 0.5 -> same box as the first but another level: kept
        [20, 20, 20.0005, 30],   # obj 4   -> 5e-4 px wide: removed as small
    ])
    obj = f32([[3, 2, 1, 0.5, 4]])
    deltas = np.zeros((1, 5, 4), np.float32)
    coder = BoxCoder((1, 1, 1, 1))
    boxes, scores = filter_proposals(anchors, deltas, obj, coder, [(30, 35)], [3, 2],
                                     pre_nms_top_n=2, post_nms_top_n=10, nms_thresh=0.7,
                                     min_size=1e-3)
    np.testing.assert_allclose(boxes[0], [[0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(scores[0], [1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-0.5))],
                               rtol=1e-6)
    boxes, _ = filter_proposals(anchors, deltas, obj, coder, [(30, 35)], [3, 2],
                                pre_nms_top_n=2, post_nms_top_n=1, nms_thresh=0.7, min_size=1e-3)
    np.testing.assert_allclose(boxes[0], [[0, 0, 10, 10]])


def test_filter_proposals_decodes_deltas():
    anchors = f32([[0, 0, 10, 10]])
    deltas = f32([[[0.5, 0, math.log(2), 0]]])  # centre x + 5, width x 2
    boxes, _ = filter_proposals(anchors, deltas, f32([[1.0]]), BoxCoder((1, 1, 1, 1)),
                                [(100, 100)], [1], 10, 10, 0.7, 1e-3)
    np.testing.assert_allclose(boxes[0], [[0, 0, 20, 10]], atol=1e-5)


def test_select_training_samples_adds_gt_and_labels():
    proposals = [f32([[0, 0, 10, 10.5], [30, 30, 40, 40], [0, 0, 4, 10]])]
    gt_boxes = [f32([[0, 0, 10, 10]])]
    gt_labels = [np.array([1])]
    rois, matched, labels, targets = select_training_samples(
        proposals, gt_boxes, gt_labels, Matcher(0.5, 0.5, False),
        BalancedPositiveNegativeSampler(256, 0.25), BoxCoder((10, 10, 5, 5)),
        np.random.default_rng(0))
    # proposal 0: IoU 100/105 -> fg; 1: IoU 0 -> bg; 2: IoU 0.4 -> bg; appended gt: IoU 1 -> fg
    np.testing.assert_allclose(rois[0], [[0, 0, 10, 10.5], [30, 30, 40, 40], [0, 0, 4, 10],
                                         [0, 0, 10, 10]])
    np.testing.assert_array_equal(labels[0], [1, 0, 0, 1])
    np.testing.assert_array_equal(matched[0][[0, 3]], [0, 0])
    # proposal 0: centre y 5.25, height 10.5 -> dy = 10 * (5 - 5.25) / 10.5, dh = 5 log(10 / 10.5)
    np.testing.assert_allclose(targets[0][0], [0, 10 * -0.25 / 10.5, 0, 5 * math.log(10 / 10.5)],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets[0][1:], 0, atol=1e-7)


def test_select_training_samples_without_ground_truth():
    rois, matched, labels, targets = select_training_samples(
        [f32([[0, 0, 10, 10], [5, 5, 9, 9]])], [np.zeros((0, 4), np.float32)],
        [np.zeros(0, np.int64)], Matcher(0.5, 0.5, False), BalancedPositiveNegativeSampler(256, 0.25),
        BoxCoder((10, 10, 5, 5)), np.random.default_rng(0))
    np.testing.assert_array_equal(labels[0], [0, 0])
    assert np.isfinite(targets[0]).all()


def test_fastrcnn_loss_hand_worked():
    # two RoIs, K = 1: logits (0, 0) each -> CE = log 2 each
    logits = np.zeros((2, 2))
    reg = np.zeros((2, 8))
    reg[0, 4:] = [1.0, 0.05, 0, 0]  # RoI 0 is foreground (class 1): |d| = 1 and 0.05
    labels = np.array([1, 0])
    targets = np.zeros((2, 4))
    loss_cls, loss_box, d_logits, d_box = fastrcnn_loss(logits, reg, labels, targets, beta=1 / 9)
    assert loss_cls == pytest.approx(math.log(2))
    # smooth L1 (beta 1/9): 1 - 0.5/9 for |d| = 1; 0.5 * 0.05^2 * 9 for |d| = 0.05; / R = 2
    assert loss_box == pytest.approx((1 - 0.5 / 9 + 0.5 * 0.05**2 * 9) / 2)
    np.testing.assert_allclose(d_box[0, 4:], [0.5, 0.05 * 9 / 2, 0, 0])
    assert not d_box[0, :4].any() and not d_box[1].any()
    np.testing.assert_allclose(d_logits, [[0.25, -0.25], [-0.25, 0.25]])


def test_postprocess_hand_worked():
    proposals = [f32([[10, 10, 20, 20], [0, 0, 5, 5], [11, 10, 21, 20], [30, 30, 40, 40]])]
    logits = np.log(np.array([[1, 3], [99, 1], [1, 1], [1, 1.5]], np.float64)).astype(np.float32)
    reg = np.zeros((4, 8), np.float32)
    reg[3, 4] = 10 * 0.5  # class-1 dx = 0.5 (weight 10): centre moves by 5 px -> [35, 30, 45, 40]
    out = postprocess_detections(logits, reg, proposals, [(50, 42)], BoxCoder((10, 10, 5, 5)),
                                 score_thresh=0.05, min_size=1e-2, nms_thresh=0.5,
                                 detections_per_img=100)[0]
    # scores 0.75, 0.01 (< 0.05, dropped), 0.5 (IoU 0.82 with the first: suppressed), 0.6
    np.testing.assert_allclose(out["boxes"], [[10, 10, 20, 20], [35, 30, 42, 40]], atol=1e-4)
    np.testing.assert_allclose(out["scores"], [0.75, 0.6], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"], [1, 1])
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
    out = postprocess_detections(logits, reg, proposals, [(50, 42)], BoxCoder((10, 10, 5, 5)),
                                 0.05, 1e-2, 0.5, 1)[0]
    np.testing.assert_allclose(out["scores"], [0.75], rtol=1e-5)


def test_postprocess_is_per_class():
    # K = 2: the same box scores 0.45 for class 1 and 0.45 for class 2: both kept (NMS per class)
    proposals = [f32([[10, 10, 20, 20]])]
    logits = np.log(f32([[0.1, 0.45, 0.45]]))
    out = postprocess_detections(logits, np.zeros((1, 12), np.float32), proposals, [(30, 30)],
                                 BoxCoder((10, 10, 5, 5)), 0.05, 1e-2, 0.5, 100)[0]
    np.testing.assert_array_equal(sorted(out["labels"]), [1, 2])
    np.testing.assert_allclose(out["scores"], [0.45, 0.45], rtol=1e-5)
