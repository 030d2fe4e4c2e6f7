"""Chapter 8 (evaluation), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/08_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from minimaskrcnn.evaluation import dsb_image_score, evaluate_coco


def ground_truth(boxes):
    """A one-image COCO ground truth (100 x 100 pixels, one category) with these xyxy boxes."""
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
            for k, (x1, y1, x2, y2) in enumerate(boxes)]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 100, "height": 100}], "annotations": anns,
                    "categories": [{"id": 1, "name": "nucleus"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def box_ap(gt_boxes, det_boxes, scores):
    preds = {1: {"boxes": np.asarray(det_boxes, np.float32), "scores": np.asarray(scores, np.float32),
                 "labels": np.ones(len(scores), np.int64)}}
    return evaluate_coco(ground_truth(gt_boxes), preds, [1], iou_types=("bbox",))["bbox"]


def exercise_1():
    """Three nuclei; the ranked detections are right, wrong, right. What is AP?

    Precision after each detection 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3. COCO's monotone envelope
    reads precision 1 at the 34 recalls 0.00..0.33, 2/3 at the 33 recalls 0.34..0.66 and 0 at the
    34 recalls above 2/3 (never reached): AP = (34 + 33 x 2/3) / 101 = 56/101 = 0.5545. The boxes
    match exactly, so every IoU threshold gives the same and AP = AP50 = AP75.
    """
    gt = [[10, 10, 30, 30], [50, 10, 70, 30], [10, 50, 30, 70]]
    dets = [[10, 10, 30, 30], [60, 60, 90, 90], [50, 10, 70, 30]]
    m = box_ap(gt, dets, [0.9, 0.8, 0.7])
    np.testing.assert_allclose([m["AP"], m["AP50"], m["AP75"]], 56 / 101, atol=1e-12)
    return m


def exercise_2():
    """A 10 x 10 nucleus predicted one pixel too large all round (12 x 12): AP, AP50, AP75?

    IoU = 100 / 144 = 0.694: a match at the thresholds 0.50, 0.55, 0.60, 0.65 and a miss (plus a
    false positive) at the six from 0.70 up. So AP50 = 1, AP75 = 0 and AP = 4/10 = 0.4.
    """
    m = box_ap([[40, 40, 50, 50]], [[39, 39, 51, 51]], [0.9])
    np.testing.assert_allclose([m["AP"], m["AP50"], m["AP75"]], [0.4, 1.0, 0.0], atol=1e-12)
    return m


def exercise_3():
    """DSB score of an image with two nuclei, one found exactly and one missed, plus one false
    positive (score 0.8). And if the false positive scores 0.3?

    At every threshold TP = 1, FP = 1, FN = 1: 1 / 3. Under the score threshold 0.5 the false
    positive is left out: TP = 1, FN = 1, 1 / 2. (AP would barely notice a low-scored false
    positive ranked last; the DSB score has no ranking.)
    """
    gt = np.zeros((2, 40, 40), bool)
    gt[0, 5:15, 5:15] = True
    gt[1, 25:35, 25:35] = True
    fp = np.zeros((40, 40), bool)
    fp[5:12, 25:35] = True
    pred = np.stack([gt[0], fp])
    hi = dsb_image_score(gt, pred, np.array([0.9, 0.8]))
    lo = dsb_image_score(gt, pred, np.array([0.9, 0.3]))
    np.testing.assert_allclose([hi, lo], [1 / 3, 1 / 2], atol=1e-12)
    return hi, lo


def main():
    print("1. AP of right, wrong, right with 3 nuclei:", exercise_1())
    print("2. one pixel too large:", exercise_2())
    print("3. DSB score with the false positive at 0.8 and at 0.3: {:.4f}, {:.4f}".format(*exercise_3()))


if __name__ == "__main__":
    main()
