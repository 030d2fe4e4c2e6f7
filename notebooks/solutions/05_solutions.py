"""Chapter 5 (the heads), the exercises' experiments, checked by asserts.

Run: ``python notebooks/solutions/05_solutions.py`` (prints every answer; ``tests/test_solutions.py``
runs them too). Each ``exercise_k()`` returns what a learner writes into the chapter's stub cell
``check("05.k", answer)``.
"""

from functools import cache

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import load_model
from minimaskrcnn.data import load_sample, standardize
from minimaskrcnn.model.mask_head import mask_probabilities

TOLERANCE = {1: 0.02, 3: 0.02}


@cache
def _model():
    return load_model("nuclei-mini-dsb2018")


def _pyramid(model, index):
    """The val image ``index``, its ground truth, its ImageList and P2..P6 of the trained model."""
    image, target = load_sample("val")[index]
    images, _ = model.transform([standardize(image)])
    return image, target, images, model.fpn.predict(model.backbone.predict(images.tensors))


def exercise_1():
    """The box head's refinement on val image 5 (the chapter's): the proposals it gives
    P(nucleus) >= 0.5, decoded with the nucleus class's deltas and clipped; the mean IoU of these
    boxes with their best-matching nucleus.

    Measured: 253 proposals; mean IoU 0.65 as proposed, 0.86 refined; 28 % of the proposals reach
    IoU 0.7, 95 % of the refined boxes. The RPN's boxes only need to overlap a nucleus well enough
    to be pooled (chapter 3); the box head, which sees the 7 x 7 features of the whole RoI, moves
    them onto it. This second regression is the "R" that makes the detections' boxes good enough
    for a mask that must be right to the pixel.
    """
    model = _model()
    _, target, images, pyramid = _pyramid(model, 5)
    rh = model.roi_heads
    proposals = model.rpn.predict(pyramid, images)[0]
    pooled, _ = rh.box_roi_pool.forward(pyramid[:-1], [proposals], images.tensors.shape[-2:])
    h, _ = rh.box_head.forward(pooled)
    (logits, deltas), _ = rh.box_predictor.forward(h)
    z = logits - logits.max(1, keepdims=True)
    p_nucleus = (np.exp(z) / np.exp(z).sum(1, keepdims=True))[:, 1]
    keep = p_nucleus >= 0.5
    refined = rh.box_coder.decode(deltas, proposals).reshape(len(proposals), -1, 4)[:, 1]
    refined = ops.clip_boxes_to_image(refined, images.image_sizes[0])
    before = ops.box_iou(proposals[keep], target["boxes"]).max(1)
    after = ops.box_iou(refined[keep], target["boxes"]).max(1)
    assert keep.sum() > 100 and after.mean() > before.mean() + 0.1, (before.mean(), after.mean())
    assert (after >= 0.7).mean() > 2 * (before >= 0.7).mean()
    return float(after.mean())


def exercise_2():
    """Which pixels can a 28 x 28 mask of ones pasted on the box [10, 10, 38, 38] reach, and which
    are >= 0.5?

    The mask is padded to 30 x 30 and the box enlarged about its centre (24, 24) by 30/28: half
    side 14 x 30/28 = 15, so [9, 9, 39, 39], truncated to integers and inclusive: pixels 9..39,
    31 on a side. The padded border is zero, so the outermost pixels 9 and 39 get 0, and the mask
    thresholded at 0.5 covers pixels 10..38: 29 pixels for a box 28 pixels wide (10..37), one more
    at the right and at the bottom, from the inclusive end of the truncated box (torchvision's
    paste does the same). On a nucleus 9 pixels wide (the 5th percentile of the longest box side
    in the DSB2018 training images) one pixel more on each axis is about a fifth more area.
    """
    box = np.array([[10.0, 10.0, 38.0, 38.0]], np.float32)
    pasted = ops.paste_masks_in_image(np.ones((1, 28, 28), np.float32), box, (64, 64), padding=1)[0]
    ys, xs = np.nonzero(pasted)
    assert ys.min() >= 9 and ys.max() <= 39 and xs.min() >= 9 and xs.max() <= 39
    ys, xs = np.nonzero(pasted >= 0.5)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 38, 10, 38)
    return [int(xs.min()), int(xs.max())]


def exercise_3():
    """The trained mask branch on the ground-truth boxes of val image 2 (its nuclei are the
    smallest of the val sample): the nucleus channel's probabilities pasted on those boxes at
    0.5, the mean over the nuclei of each mask's IoU with its own nucleus.

    Measured: 0.73 with perfect boxes; a perfect head's targets on the same boxes (the chapter's
    section 4 ceiling) 0.79; the masks ``model.predict`` returns (each nucleus's best match among
    the detections scored >= 0.5) 0.57. Given the right box, the mask head comes within 0.06 of
    what a 28 x 28 mask pasted back can do on nuclei this small; most of the loss in the
    detections' masks, 0.16, comes from their boxes. On small objects the box bounds the mask.
    """
    model = _model()
    image, target, images, pyramid = _pyramid(model, 2)
    rh = model.roi_heads
    boxes, gt_masks = target["boxes"], target["masks"].astype(bool)
    idx = np.arange(len(boxes))
    m, _ = rh.mask_roi_pool.forward(pyramid[:-1], [boxes], images.tensors.shape[-2:])
    m, _ = rh.mask_head.forward(m)
    logits, _ = rh.mask_predictor.forward(m)
    prob = mask_probabilities(logits, np.ones(len(boxes), np.int64), "sigmoid")
    pasted = ops.paste_masks_in_image(prob, boxes, image.shape[:2]) >= 0.5

    def iou(masks):
        return ((masks & gt_masks).sum((1, 2)) / np.maximum((masks | gt_masks).sum((1, 2)), 1))

    on_gt = float(iou(pasted).mean())
    ceiling = float(iou(ops.paste_masks_in_image(ops.project_masks_on_boxes(target["masks"], boxes, idx, 28),
                                                 boxes, image.shape[:2]) >= 0.5).mean())
    det = model.predict([standardize(image)])[0]
    dm = det["masks"][det["scores"] >= 0.5].reshape(-1, gt_masks[0].size).astype(np.float64)
    g = gt_masks.reshape(len(boxes), -1).astype(np.float64)
    inter = g @ dm.T
    detected = float((inter / (g.sum(1)[:, None] + dm.sum(1)[None] - inter)).max(1).mean())
    assert detected + 0.1 < on_gt < ceiling, (detected, on_gt, ceiling)
    return on_gt


def main():
    print(f"1. mean IoU of the refined boxes (P(nucleus) >= 0.5) on val image 5: {exercise_1():.3f}")
    print("2. pixels >= 0.5 of a mask of ones pasted on [10, 10, 38, 38]:", exercise_2())
    print(f"3. mean mask IoU of the trained mask head on val image 2's ground-truth boxes: {exercise_3():.3f}")


if __name__ == "__main__":
    main()
