"""Tune the post-processing of trained weights on a validation set, one choice at a time, for
the DSB 2018 score (issue 24; ``docs/results.md``, "The nuclei preset").

The network runs once per image (``predict(..., mask_format="roi")``: the unpasted M x M mask
probabilities), with and without horizontal-flip TTA, and its outputs are cached in
``OUT/cache-<tta>/``; every post-processing choice is then scored from the cache:

1. the mask threshold (pasting at each threshold; mask AP and the DSB score at the preset's
   score threshold),
2. the DSB score threshold, at the best mask threshold,
3. filled holes, the largest piece only, a minimum area (:func:`minimaskrcnn.data.labels.clean_labels`),
   each added to the best so far,
4. the same best settings with flip TTA.

    mpiexec -n 2 python benchmarks/tune_postprocess.py --weights runs/nuclei/checkpoint_006000.npz \\
        --coco-json dsb2018/val.json --images dsb2018/images --out runs/nuclei/tune

Prints markdown tables and writes ``OUT/tune.json`` (every measured setting, the chosen ones).
Under mpiexec the network's passes are shared among the ranks; rank 0 scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from minimaskrcnn import distributed, model_zoo, ops
from minimaskrcnn.data import CocoDataset, standardize
from minimaskrcnn.data.labels import clean_labels, label_image
from minimaskrcnn.evaluation import Predictions, evaluate_coco
from minimaskrcnn.evaluation.dsb import dsb_score_of_labels


def cache_outputs(model, ds, folder, tta, comm, limit=None):
    """Run the network on each image (this rank's share) into ``folder/<image_id>.npz``."""
    os.makedirs(folder, exist_ok=True)
    n = len(ds) if limit is None else min(limit, len(ds))
    seconds = []
    for i in distributed.shard(n, comm):
        path = os.path.join(folder, f"{int(ds.image_ids[i])}.npz")
        if os.path.exists(path):
            continue
        image = ds.load_image(i)
        t0 = time.perf_counter()
        p = model.predict([standardize(image)], mask_format="roi", hflip_tta=tta)[0]
        seconds.append(time.perf_counter() - t0)
        np.savez(path + ".tmp.npz", boxes=p["boxes"], scores=p["scores"], labels=p["labels"],
                 masks=p["masks"].astype(np.float16), size=np.array(image.shape[:2]))
        os.replace(path + ".tmp.npz", path)
    return seconds


def load_cache(folder, ds, n):
    out = {}
    for i in range(n):
        image_id = int(ds.image_ids[i])
        with np.load(os.path.join(folder, f"{image_id}.npz"), allow_pickle=False) as z:
            out[image_id] = {k: z[k] for k in z.files}
    return out


def paste(cache, threshold):
    """Predictions (RLE masks) of every cached image at ``threshold``."""
    preds = Predictions()
    for image_id, c in cache.items():
        size = tuple(int(v) for v in c["size"])
        rles = ops.paste_binary_masks(c["masks"].astype(np.float32), c["boxes"], size,
                                      threshold, rle=True) if len(c["scores"]) else []
        preds.add(image_id, {"boxes": c["boxes"], "scores": c["scores"], "labels": c["labels"],
                             "masks": rles}, size)
    return preds


class GroundTruth:
    """Decoded non-crowd ground-truth masks of each image, kept (the val set is small)."""

    def __init__(self, ds, n):
        self.masks = {}
        for i in range(n):
            anns = ds.annotations(i)
            self.masks[int(ds.image_ids[i])] = list(ds.decode_masks(i, anns))


def dsb(preds, gt, score_thresh, fill_holes=False, largest_component=False, min_area=0):
    per_image = []
    for image_id, pred in preds.encoded.items():
        scores = np.asarray(pred["scores"], np.float64)
        keep = np.flatnonzero(scores >= score_thresh)
        lab = label_image([pred["masks"][k] for k in keep], scores[keep],
                          image_size=preds.image_size(image_id))
        lab = clean_labels(lab, fill_holes=fill_holes, largest_component=largest_component,
                           min_area=min_area)
        per_image.append(dsb_score_of_labels(gt.masks[image_id], lab))
    return float(np.mean(per_image))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--coco-json", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args(argv)
    comm = distributed.get_comm()
    model, cfg = model_zoo.load_model(args.weights, return_config=True)
    ds = CocoDataset(args.coco_json, args.images)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    timing = {}
    for tta in (False, True):
        secs = cache_outputs(model, ds, os.path.join(args.out, f"cache-{'tta' if tta else 'plain'}"),
                             tta, comm, args.limit)
        parts = distributed.gather_to_main([secs], comm)
        if comm.is_main:
            allsecs = [s for p in parts for s in p]
            timing["tta" if tta else "plain"] = float(np.median(allsecs)) if allsecs else None
    if not comm.is_main:
        return 0
    gt = GroundTruth(ds, n)
    ev = cfg.eval
    rows = []

    def record(step, tta, mask_thr, score_thr, fill, largest, min_area, preds, with_ap):
        row = {"step": step, "tta": tta, "mask_threshold": mask_thr, "score_thresh": score_thr,
               "fill_holes": fill, "largest_component": largest, "min_area": min_area,
               "dsb": dsb(preds, gt, score_thr, fill, largest, min_area)}
        if with_ap:
            m = evaluate_coco(ds.coco, preds.encoded, ds.category_ids, ev.max_dets)
            row["mask_AP"], row["mask_AP50"], row["mask_AP75"] = (m["segm"][k] for k in
                                                                  ("AP", "AP50", "AP75"))
            row["box_AP"] = m["bbox"]["AP"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    plain = load_cache(os.path.join(args.out, "cache-plain"), ds, n)
    # 1. mask threshold, at the preset's score threshold
    by_thr = {}
    for thr in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75):
        by_thr[thr] = paste(plain, thr)
        record("mask threshold", False, thr, ev.dsb_score_thresh, False, False, 0, by_thr[thr],
               True)
    best_thr = max((r for r in rows if r["step"] == "mask threshold"), key=lambda r: r["dsb"])
    mthr = best_thr["mask_threshold"]
    # 2. score threshold
    for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        record("score threshold", False, mthr, s, False, False, 0, by_thr[mthr], False)
    best = max((r for r in rows if r["step"] == "score threshold"), key=lambda r: r["dsb"])
    sthr = best["score_thresh"]
    # 3. cleanup, one at a time, each kept if it helps
    fill = largest = False
    min_area = 0
    cur = best["dsb"]
    r = record("fill holes", False, mthr, sthr, True, largest, min_area, by_thr[mthr], False)
    if r["dsb"] > cur:
        fill, cur = True, r["dsb"]
    r = record("largest piece", False, mthr, sthr, fill, True, min_area, by_thr[mthr], False)
    if r["dsb"] > cur:
        largest, cur = True, r["dsb"]
    best_area = 0
    for a in (5, 10, 20, 40):
        r = record("min area", False, mthr, sthr, fill, largest, a, by_thr[mthr], False)
        if r["dsb"] > cur:
            best_area, cur = a, r["dsb"]
    min_area = best_area
    # 4. flip TTA with everything chosen (and the plain pasting at the chosen threshold for AP)
    final_plain = record("chosen", False, mthr, sthr, fill, largest, min_area, by_thr[mthr], True)
    tta_preds = paste(load_cache(os.path.join(args.out, "cache-tta"), ds, n), mthr)
    final_tta = record("chosen + flip TTA", True, mthr, sthr, fill, largest, min_area, tta_preds,
                       True)
    chosen = {"mask_threshold": mthr, "dsb_score_thresh": sthr, "dsb_fill_holes": fill,
              "dsb_largest_component": largest, "dsb_min_area": min_area}
    out = {"weights": args.weights, "images": n, "chosen": chosen, "rows": rows,
           "seconds_per_image_median": timing, "final": {"plain": final_plain,
                                                         "tta": final_tta}}
    with open(os.path.join(args.out, "tune.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("\n| step | TTA | mask thr | score thr | holes | largest | min area | DSB | mask AP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ap_ = f"{r['mask_AP']:.3f}" if "mask_AP" in r else ""
        print(f"| {r['step']} | {'yes' if r['tta'] else 'no'} | {r['mask_threshold']} | "
              f"{r['score_thresh']} | {r['fill_holes']} | {r['largest_component']} | "
              f"{r['min_area']} | {r['dsb']:.3f} | {ap_} |")
    print("chosen:", chosen, "median s/image:", timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
