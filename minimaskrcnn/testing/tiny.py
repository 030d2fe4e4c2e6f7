"""A tiny two-class Mask R-CNN and a two-image batch for tests of the whole network
(``tests/model``): small enough that a training step takes a fraction of a second.

Shapes: images ``(3, 64, 64)`` and ``(3, 48, 60)`` of ``dtype``; targets with ``boxes (G, 4)
float32`` pixels, ``labels (G,) int64`` in 1..2 and ``masks (G, h, w) uint8`` discs.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.config import ModelConfig

TINY = ModelConfig(
    num_classes=2, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4, fpn_channels=8,
    rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
    representation_size=16, mask_head_channels=8, detections_per_img=20,
)


def disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) < r * r).astype(np.uint8)


def target_from_masks(masks, labels):
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int64), "masks": np.stack(masks).astype(np.uint8)}


def tiny_batch(dtype=np.float32, seed=0):
    """Two images of different sizes with two classes."""
    rng = np.random.default_rng(seed)
    img1 = rng.standard_normal((3, 64, 64)).astype(dtype)
    img2 = rng.standard_normal((3, 48, 60)).astype(dtype)
    t1 = target_from_masks([disc(64, 64, 20, 22, 9), disc(64, 64, 44, 40, 12)], [1, 2])
    t2 = target_from_masks([disc(48, 60, 30, 24, 10)], [2])
    return [img1, img2], [t1, t2]
