"""Chapter 12 (keypoints), the exercises' experiments, checked by asserts.

Run: ``python notebooks/solutions/12_solutions.py`` (prints every answer). In the chapter, the
stub cells' ``check("12.k", answer)`` compares your answer with what ``exercise_k()`` returns.
"""

import numpy as np

from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset
from minimaskrcnn.evaluation import evaluate_coco
from minimaskrcnn.ops import heatmaps_to_keypoints, keypoints_to_heatmap

TOLERANCE = {1: 0.01}  # exercise 1: APs, 1 % relative


def val_set():
    """The chapter's held-out set: 8 synthetic images of triangles (seed 1)."""
    return keypoint_shapes_dataset(8, seed=1)


def exercise_1():
    """How strict is OKS on small objects? Predict every val triangle with its true box (score 1)
    and its true keypoints moved 1, 2, 3 and 4 pixels to the right: the keypoint AP of each.

    About 0.95, 0.67, 0.29 and 0.05. The triangles' areas are 182 to 441 px^2 and their OKS
    sigma 0.1, so exp(-d^2 / (2 s^2 (2 sigma)^2)) falls to 0.75 (AP75's threshold) at
    d = sqrt(0.023 s^2): 2.0 to 3.2 px. AP averages OKS thresholds 0.50 to 0.95, so a shift of 3 px
    already costs most of the AP, although every keypoint is within a few pixels and AP50 is
    still 1. A keypoint head must place points to about a pixel on objects this small: the
    reason for 56 x 56 heatmaps and the bicubic resize of the decoding.
    """
    ds = val_set()
    sigmas = np.asarray(ds.keypoint_sigmas)
    aps = []
    for shift in (1, 2, 3, 4):
        results = {}
        for i in range(len(ds)):
            _, t = ds[i]
            results[int(ds.image_ids[i])] = {
                "boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"])),
                "keypoints": t["keypoints"] + np.array([shift, 0, 0], np.float32)}
        m = evaluate_coco(ds.coco, results, ds.category_ids, (20,), iou_types=("keypoints",),
                          keypoint_sigmas=sigmas)
        assert m["keypoints"]["AP50"] >= (1.0 if shift <= 3 else 0.0)
        aps.append(round(m["keypoints"]["AP"], 3))
    assert aps == sorted(aps, reverse=True) and aps[0] > 0.9 and aps[2] < 0.5
    return aps


def exercise_2():
    """Encode every val keypoint as its one-hot target (m = 56) in its true box, decode it with
    ``heatmaps_to_keypoints`` (the one-hot logits set to 10, as section 3 does): how many of the
    57 keypoints come back more than 2 pixels from where they were?

    6 of 57 (14 to 24 px off); the others within about 1 px. Every val box is 14 to 36 pixels
    wide and high, smaller than the 56 x 56 map, so the decoding resizes the map *down* (by about
    2): bicubic interpolation without antialiasing (torchvision's, matched here) reads the map
    only near its sample points, about two cells apart, and a single hot cell about one cell from
    the nearest sample gets a weight near 0 there: it all but vanishes (the decoded score, the
    resized logit at the arg-max, is ~0 instead of ~10), and the arg-max lands anywhere. Whether
    a keypoint survives depends on where its cell falls against the samples, not on the box. The
    head's own maps are never one cell wide (its last layers, a 4x4 deconvolution and a bilinear
    2x upscaling, spread every value over neighbouring cells), so their peaks survive the resize:
    the one-hot map is the training target, not what the decoding is built for.
    """
    ds = val_set()
    m = 56
    errors, narrow, scores = [], [], []
    for i in range(len(ds)):
        _, t = ds[i]
        boxes, kp = t["boxes"], t["keypoints"]
        cells, valid = keypoints_to_heatmap(kp, boxes, m)
        logits = np.zeros((len(boxes), kp.shape[1], m * m), np.float32)
        np.put_along_axis(logits, cells[..., None], 10.0, axis=2)
        decoded, score = heatmaps_to_keypoints(logits.reshape(len(boxes), -1, m, m), boxes)
        assert valid.all()
        err = np.linalg.norm(decoded[..., :2] - kp[..., :2], axis=-1)
        errors.append(err.ravel())
        scores.append(score.ravel())
        small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < m
        narrow.append(np.repeat(small, kp.shape[1]))
    errors, narrow, scores = map(np.concatenate, (errors, narrow, scores))
    missed = errors > 2
    assert len(errors) == 57
    assert narrow.all()                             # every box is smaller than the map
    assert (scores[missed] < 0.1).all()             # its peak vanished in the resize
    assert errors[~missed].max() < 1.5
    return int(missed.sum())


def main():
    print("1. keypoint AP with every keypoint 1, 2, 3, 4 px off:", exercise_1())
    print("2. one-hot targets decoded more than 2 px off (of 57):", exercise_2())


if __name__ == "__main__":
    main()
