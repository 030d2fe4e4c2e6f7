"""Overfitting two synthetic images: the whole training step (every loss, every backward) has to
be right for a tiny model to learn to find, classify, box and segment four objects.

300 SGD steps (warm-up, then x0.1 for the last quarter) of a ~40k-parameter model on two 64x64
images: ~15 s on one core. Checked robust over four init/sampling seeds (smallest box IoU 0.86,
mask IoU 0.90, loss down ~20x). Multi-threaded OpenBLAS on a busy machine can make it several
times slower (see docs/performance.md, "Threads on a shared machine").
"""

import numpy as np
import pytest

from minimaskrcnn.config import ModelConfig
from minimaskrcnn.model import build_model
from minimaskrcnn.ops import box_iou
from minimaskrcnn.training.optim import SGD

CFG = ModelConfig(
    num_classes=2, stem_channels=8, stage_channels=(8, 16, 16, 16), fpn_channels=16,
    rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=200, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
    representation_size=32, mask_head_channels=8, detections_per_img=20,
)
ITERATIONS = 300
LR = 0.02
DECAY_AT = 225


def disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) < r * r).astype(np.uint8)


def square(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def two_images():
    """Squares (class 1, red) and discs (class 2, green) on a dark noisy background."""
    rng = np.random.default_rng(0)
    scenes = [[(square(64, 64, 8, 10, 28, 30), 1), (disc(64, 64, 45, 44, 10), 2)],
              [(disc(64, 64, 20, 42, 12), 2), (square(64, 64, 36, 8, 56, 26), 1)]]
    colours = {1: np.array([200, 60, 60]), 2: np.array([60, 200, 90])}
    images, targets = [], []
    for scene in scenes:
        img = rng.uniform(0, 40, (3, 64, 64))
        for m, label in scene:
            fill = colours[label][:, None, None] + rng.uniform(0, 20, (3, 64, 64))
            img = np.where(m[None] > 0, fill, img)
        images.append(((img - img.mean()) / (img.std() + 1e-6)).astype(np.float32))
        boxes = []
        for m, _ in scene:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        targets.append({"boxes": np.array(boxes, np.float32),
                        "labels": np.array([lab for _, lab in scene], np.int64),
                        "masks": np.stack([m for m, _ in scene])})
    return images, targets


@pytest.mark.slow
def test_tiny_model_overfits_two_images(single_thread):
    images, targets = two_images()
    model = build_model(CFG, np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.0)
    rng = np.random.default_rng(1)
    history = []
    for it in range(ITERATIONS):
        opt.lr = LR * min(1.0, (it + 1) / 20) * (0.1 if it >= DECAY_AT else 1.0)
        model.zero_grad()
        _, losses, cache = model.forward_train(images, targets, rng)
        model.backward(None, cache)
        opt.step()
        history.append(sum(losses.values()))
    assert np.all(np.isfinite(history))
    first, last = history[0], float(np.mean(history[-10:]))
    assert last < first / 10, (first, last)

    for det, t in zip(model.predict(images), targets, strict=True):
        iou = box_iou(t["boxes"], det["boxes"])  # (G, D)
        for g in range(t["boxes"].shape[0]):
            # the best-scored detection on this object must be right
            cand = np.nonzero(iou[g] > 0.5)[0]
            assert cand.size, f"object {g} not detected"
            j = cand[np.argmax(det["scores"][cand])]
            assert det["labels"][j] == t["labels"][g]
            assert det["scores"][j] > 0.5
            assert iou[g, j] > 0.8
            gt_mask = t["masks"][g] > 0
            mask_iou = (det["masks"][j] & gt_mask).sum() / (det["masks"][j] | gt_mask).sum()
            assert mask_iou > 0.8, mask_iou
        # nothing confident elsewhere: every detection scoring > 0.5 is on an object
        confident = det["scores"] > 0.5
        assert np.all(iou[:, confident].max(axis=0) > 0.5)
