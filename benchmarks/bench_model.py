"""Seconds per training iteration and per inference image of the whole Mask R-CNN, by stage.

Training: ``nuclei-mini``, batch 4 random 256x256 crops (with flips) of the embedded DSB2018
sample (``minimaskrcnn.data.load_sample("train")``), fixed batches, a warm-up of 2 iterations
(Numba compiles), then the median of ``--iters`` iterations of forward_train + backward (+ an SGD
step is not included: it is the training loop's). Stages (``StageTimer``): backbone+FPN, RPN
(head, anchor targets, losses, proposals), RoI heads (sampling, box RoIAlign, box head and its
losses), mask head (mask targets, mask RoIAlign, mask head, mask loss), backward (everything).

Inference: ``model.predict`` on each image of the embedded val sample at native size, one image
at a time, median seconds per image. The model is untrained (init weights), so its
postprocess usually keeps the maximum of 500 detections and pastes 500 masks: a pessimistic
case next to a trained model's detections (the peer measured a trained model).

    /work/venv/bin/python benchmarks/bench_model.py [--iters 5] [--images 4]

The peer (torchvision 0.29 on 2 CPU threads, ``specs/peer-results.md``): 1.35 s per training
iteration, 0.24-0.29 s per inference image.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from minimaskrcnn.config import get_preset
from minimaskrcnn.data import load_sample
from minimaskrcnn.data.transforms import sample_crop, standardize
from minimaskrcnn.model import StageTimer, build_model

STAGES = ("backbone_fpn", "rpn", "roi_heads", "mask_head", "backward")


def training_batch(cfg, rng):
    ds = load_sample("train")
    images, targets = [], []
    while len(images) < cfg.train.batch_size:
        i = int(rng.integers(len(ds)))
        image, target = sample_crop(ds, i, cfg.train.crop_size, 0.5, 0.5, rng)
        if target["boxes"].shape[0] == 0:
            continue
        images.append(standardize(image))
        targets.append({k: target[k] for k in ("boxes", "labels", "masks")})
    return images, targets


def bench_training(model, cfg, iters, rng):
    images, targets = training_batch(cfg, rng)
    for _ in range(2):  # warm-up: Numba compilation, caches
        losses, cache = model.forward_train(images, targets, rng)
        model.backward(cache)
    totals, stages = [], {s: [] for s in STAGES}
    for _ in range(iters):
        model.zero_grad()
        timer = StageTimer()
        t0 = time.perf_counter()
        losses, cache = model.forward_train(images, targets, rng, timer=timer)
        model.backward(cache)
        totals.append(time.perf_counter() - t0)
        for s in STAGES:
            stages[s].append(timer.seconds.get(s, 0.0))
    n_gt = [t["boxes"].shape[0] for t in targets]
    mask_cache = cache["roi_heads"][5]
    n_fg = 0 if mask_cache is None else mask_cache[2].shape[0]  # foreground RoIs (mask head batch)
    return statistics.median(totals), {s: statistics.median(v) for s, v in stages.items()}, n_gt, n_fg


def bench_inference(model, n_images):
    ds = load_sample("val")
    times, stages, dets, sizes = [], {s: [] for s in STAGES[:3]}, [], []
    model.predict([standardize(ds[0][0])])  # warm-up
    for i in range(min(n_images, len(ds))):
        image = standardize(ds[i][0])
        timer = StageTimer()
        t0 = time.perf_counter()
        out = model.predict([image], timer=timer)
        times.append(time.perf_counter() - t0)
        for s in stages:
            stages[s].append(timer.seconds.get(s, 0.0))
        dets.append(out[0]["boxes"].shape[0])
        sizes.append(image.shape[1:])
    return statistics.median(times), {s: statistics.median(v) for s, v in stages.items()}, dets, sizes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    cfg = get_preset("nuclei-mini")
    rng = np.random.default_rng(0)
    model = build_model(cfg, rng)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")
    total, stages, n_gt, n_fg = bench_training(model, cfg, args.iters, rng)
    print(f"\ntraining, nuclei-mini, batch 4 x 256x256 crops (instances per crop {n_gt}, "
          f"{n_fg} foreground RoIs in the mask head), "
          f"median of {args.iters} iterations, seconds")
    print("| stage | s/iter |\n|---|---|")
    for s in STAGES:
        print(f"| {s} | {stages[s]:.3f} |")
    print(f"| **total** | **{total:.3f}** |  (peer: 1.35)")

    t_img, stages, dets, sizes = bench_inference(model, args.images)
    print(f"\ninference, untrained nuclei-mini, val images at native size {sizes}, "
          f"detections {dets}, median seconds per image")
    print("| stage | s/image |\n|---|---|")
    print(f"| backbone_fpn | {stages['backbone_fpn']:.3f} |")
    print(f"| rpn | {stages['rpn']:.3f} |")
    print(f"| roi_heads + mask head + paste | {stages['roi_heads']:.3f} |")
    print(f"| **total** | **{t_img:.3f}** |  (peer: 0.24-0.29, trained model)")


if __name__ == "__main__":
    main()
