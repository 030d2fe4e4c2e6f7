"""Chapter 0 (a way in), the exercises' experiments, checked by asserts.

Run: ``python notebooks/solutions/00_solutions.py`` (prints every answer). In the chapter, the
stub cells' ``check("00.k", answer)`` compares your answer with what ``exercise_k()`` returns.
"""

import numpy as np

import minimaskrcnn.ops as ops
from minimaskrcnn import build_model, load_model
from minimaskrcnn.data import load_sample, standardize

TOLERANCE = {}  # exact answers: counts and names


def nuclei_found(prediction, gt_boxes, score_thresh=0.5, iou_thresh=0.5):
    """How many ground-truth boxes have a detection scored >= score_thresh at box IoU >= iou_thresh."""
    boxes = prediction["boxes"][prediction["scores"] >= score_thresh]
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return 0
    return int((ops.box_iou(gt_boxes, boxes).max(1) >= iou_thresh).sum())


def exercise_1():
    """Val image 6 (32 nuclei, median sqrt(mask area) under 8 px) predicted at image_scale 0.5, 1, 2.

    At scale 0.5 the network sees nuclei of about 4 px: one P2 cell (stride 4), half the side of
    the smallest anchor (8 px), so no anchor reaches a useful IoU with them and the features of a
    nucleus are a single cell: about half the nuclei found at scale 1 are lost. Doubling the
    image brings them to about 15 px, the size of the P3 anchor and well above the smallest: a
    few more nuclei are found, at four times the pixels (and time). The trained model is tuned
    to the sizes it was trained on; Mask R-CNN's answer to a range of sizes is the pyramid, and
    its limits show at the bottom of it.
    """
    model = load_model("nuclei-mini-dsb2018")
    image, target = load_sample("val")[6]
    assert len(target["boxes"]) == 32
    x = standardize(image)
    found = {}
    try:
        for scale in (0.5, 1.0, 2.0):
            model.transform.image_scale = scale
            prediction = model.predict([x])[0]
            assert prediction["masks"].shape[1:] == image.shape[:2]   # mapped back to the image
            found[scale] = nuclei_found(prediction, target["boxes"])
    finally:
        model.transform.image_scale = 1.0
    assert found[0.5] < found[1.0] <= found[2.0]
    return found


def exercise_2():
    """The largest of the five losses on val image 0, untrained vs trained model (rng seed 0).

    Untrained: ``loss_mask``. The untrained mask predictor's logits on this image are large and
    mostly positive (about +9 on average, 87 % of them above 0 for the ground-truth boxes): it
    says "nucleus" with confidence over the whole 28 x 28 map, and every background pixel of a
    RoI costs its full logit in binary cross-entropy, hence a loss near 2, where the objectness
    and classification losses of heads that know nothing sit at ln 2 = 0.69. The untrained box
    regression loss is the smallest of the heads': the untrained RPN's proposals hardly overlap a
    nucleus (2 of 1000 at IoU >= 0.5), so the foreground RoIs are almost all the ground-truth
    boxes themselves (added to the proposals in training), whose regression targets are zero.
    Trained: ``loss_box_reg``. The masks and the classes are learned well (mask loss about
    0.27); the foreground RoIs are now real proposals (64, the sampler's quarter of 256), and
    what is left is the exact placement of small boxes, measured in deltas weighted by
    (10, 10, 5, 5): a one-pixel shift on a 13-pixel nucleus is a delta of 10 / 13 = 0.77.
    """
    image, target = load_sample("val")[0]
    x = standardize(image)
    largest = {}
    for name, model in (("untrained", build_model("nuclei-mini", np.random.default_rng(0))),
                        ("trained", load_model("nuclei-mini-dsb2018"))):
        _, losses, _ = model.forward_train([x], [target], np.random.default_rng(0))
        assert len(losses) == 5 and all(np.isfinite(v) and v >= 0 for v in losses.values())
        largest[name] = max(losses, key=losses.get)
    assert largest["untrained"] != largest["trained"]
    return largest


def main():
    print("1. nuclei of val image 6 found at image_scale 0.5, 1, 2:", exercise_1())
    print("2. the largest loss:", exercise_2())


if __name__ == "__main__":
    main()
