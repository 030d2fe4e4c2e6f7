"""What Table 2b's mask heads learned (docs/ablations.md): for every finished 2b run of a sweep
folder, on the ground-truth boxes of the first 50 val shapes images, the mask head's probability
of the box's class on the object's pixels (mean, and the share above the 0.5 threshold), and the
28x28 mask IoU against the RoIAligned ground truth of the thresholded mask and, for the softmax,
of the argmax over background and classes.

    python benchmarks/ablation_2b_masks.py [SWEEP_DIR]      # default runs/ablations

Needs the runs' checkpoints (the sweep keeps each run's last one).
"""

from __future__ import annotations

import glob
import sys

import numpy as np

from minimaskrcnn import ablations, ops
from minimaskrcnn.checkpoint import config_from_checkpoint, load_checkpoint
from minimaskrcnn.data import standardize
from minimaskrcnn.model import build_model
from minimaskrcnn.model.mask_head import mask_probabilities
from minimaskrcnn.model.roi_heads import branch_forward

N_IMAGES = 50


def load(run: str):
    path = sorted(glob.glob(f"{run}/checkpoint_*.npz"))[-1]
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt)
    model = build_model(cfg, np.random.default_rng(0))
    load_checkpoint(path, model)
    return model, cfg, ckpt.iteration


def measure(model, cfg, val) -> str:
    inside, inter, union, inter_arg, union_arg = [], 0, 0, 0, 0
    for i in range(N_IMAGES):
        image, target = val[i]
        batch = model.transform([standardize(image)])[0].tensors
        maps = model._roi_maps(model.fpn.predict(model._fpn_inputs(model.backbone.predict(batch))))
        rh = model.roi_heads
        logits, _ = branch_forward(rh.mask_roi_pool, rh.mask_head, rh.mask_predictor, maps,
                                   [target["boxes"]], batch.shape[-2:])
        channels = rh.mask_channels(target["labels"])
        p = mask_probabilities(logits, channels, cfg.model.mask_loss)
        gt = ops.project_masks_on_boxes(target["masks"], target["boxes"],
                                        np.arange(len(target["boxes"])), 28) >= 0.5
        inside.append(p[gt])
        inter += int(((p >= 0.5) & gt).sum())
        union += int(((p >= 0.5) | gt).sum())
        if cfg.model.mask_loss == "softmax":  # background logit 0, then the K classes
            fg = logits[:, 1:]
            labels = np.concatenate([np.zeros_like(fg[:, :1]), fg], axis=1).argmax(axis=1)
            won = labels == channels[:, None, None]
            inter_arg += int((won & gt).sum())
            union_arg += int((won | gt).sum())
    inside = np.concatenate(inside)
    text = (f"p(class) on object pixels mean {inside.mean():.3f}, > 0.5 on "
            f"{100 * (inside > 0.5).mean():.1f}%; thresholded mask IoU {inter / union:.3f}")
    if union_arg:
        text += f", argmax mask IoU {inter_arg / union_arg:.3f}"
    return text


def main(root: str) -> None:
    _, val = ablations.shapes_datasets()
    for arm in ("softmax", "sigmoid", "agnostic"):
        for run in sorted(glob.glob(f"{root}/2b/{arm}/seed*")):
            model, cfg, iteration = load(run)
            print(f"{arm} {run.rsplit('/', 1)[1]} ({iteration} iterations): "
                  f"{measure(model, cfg, val)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablations")
