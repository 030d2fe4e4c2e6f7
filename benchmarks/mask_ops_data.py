"""Inputs of the mask-op benchmarks, shared by bench_mask_ops.py and torch_mask_ops.py.

Sizes are those of one nuclei-mini training step and one inference image:
- targets: one 256 x 256 crop with 30 instances, 64 foreground RoIs (256 RoIs x 25 %), M = 28;
- loss: 256 foreground RoIs (a batch of 4 crops), K = 1, M = 28;
- paste: 100 detections in a 520 x 696 image (a common DSB2018 size), M = 28.
"""

import numpy as np

REPEATS = 11
M = 28


def target_inputs(seed=0):
    """``(gt_masks (30, 256, 256) uint8, boxes (64, 4) float32, matched_idxs (64,) int64)``."""
    rng = np.random.default_rng(seed)
    G, H, W, R = 30, 256, 256, 64
    yy, xx = np.mgrid[:H, :W]
    cx, cy = rng.uniform(10, 246, G), rng.uniform(10, 246, G)
    rad = rng.uniform(4, 14, G)
    masks = ((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
             <= rad[:, None, None] ** 2).astype(np.uint8)
    idx = rng.integers(0, G, R)
    jitter = rng.normal(0, 2, size=(R, 4))
    boxes = np.stack([cx[idx] - rad[idx], cy[idx] - rad[idx], cx[idx] + rad[idx] + 1,
                      cy[idx] + rad[idx] + 1], axis=1) + jitter
    return masks, boxes.astype(np.float32), idx.astype(np.int64)


def loss_inputs(seed=0):
    """``(mask_logits (256, 1, 28, 28) float32, labels (256,) int64, targets (256, 28, 28))``."""
    rng = np.random.default_rng(seed)
    R = 256
    logits = rng.normal(0, 2, size=(R, 1, M, M)).astype(np.float32)
    targets = rng.random((R, M, M)).astype(np.float32)
    return logits, np.ones(R, np.int64), targets


def paste_inputs(seed=0):
    """``(masks (100, 28, 28) float32, boxes (100, 4) float32, (H, W))``."""
    rng = np.random.default_rng(seed)
    D, H, W = 100, 520, 696
    xy = rng.uniform(0, [W - 40, H - 40], size=(D, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(6, 40, size=(D, 2))], axis=1)
    return rng.random((D, M, M)).astype(np.float32), boxes.astype(np.float32), (H, W)
