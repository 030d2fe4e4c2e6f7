"""Evaluation: COCO AP (pycocotools) for masks, boxes and keypoints (OKS), the DSB 2018 score,
metrics files. Sharded over data-parallel ranks (:mod:`minimaskrcnn.distributed`): each rank
predicts its share of the images, rank 0 scores them.

    evaluate_coco(coco_gt, results_by_image, category_ids, max_dets)   -> segm / bbox AP, AP50, AP75
    keypoint_sigmas(model_cfg, dataset)                                -> OKS sigmas (keypoint AP)
    dsb_score(gt_masks_by_image, results_by_image, score_thresh)       -> DSB 2018 score
    coco_results / write_results_json                                  -> COCO results JSON
    evaluate_model(model, dataset, eval_cfg, out_dir)                  -> all of it for a model
    write_metrics / format_metrics                                     -> metrics.json, a table
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from minimaskrcnn.data import standardize
from minimaskrcnn.distributed import gather_to_main, get_comm, shard
from minimaskrcnn.evaluation.coco_eval import coco_results, evaluate_coco, write_results_json
from minimaskrcnn.evaluation.dsb import DSB_IOU_THRESHOLDS, dsb_image_score, dsb_score
from minimaskrcnn.evaluation.keypoints import keypoint_sigmas

__all__ = [
    "DSB_IOU_THRESHOLDS", "coco_results", "dsb_image_score", "dsb_score", "evaluate_coco",
    "evaluate_model", "format_metrics", "keypoint_sigmas", "predict_dataset", "write_metrics",
    "write_results_json",
]

METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"


def predict_dataset(model, dataset, *, limit: int | None = None, progress: bool = False,
                    comm=None):
    """Run ``model.predict`` on each image of a dataset at native size, one image at a time.

    With a data-parallel communicator of W ranks (:mod:`minimaskrcnn.distributed`),
    rank r predicts its contiguous share of the images (``shard``) and rank 0 gathers them all
    in image order; the masks travel as COCO run-length encodings and are decoded on rank 0, so
    the results equal one process's exactly.

    Args:
        model: has ``predict(list of (3, H, W) float32) -> list of prediction dicts``.
        dataset: a :class:`~minimaskrcnn.data.CocoDataset`.
        limit: only the first ``limit`` images (>= 1).
        progress: show a tqdm bar (rank 0).
        comm: a ``Comm``; default the process's (one process without ``mpiexec``).

    Returns:
        ``(results_by_image, seconds)``: ``{image_id: prediction}`` and the ``(N,)`` wall-clock
        seconds of each ``predict`` call (standardisation included, image reading not), on
        rank 0; ``(None, None)`` on the other ranks.

    Raises:
        ValueError: ``limit`` < 1, or a dataset without images (nothing to evaluate: AP would
            be -1 and the timings NaN).
    """
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    if len(dataset) == 0:
        raise ValueError(f"{getattr(dataset, 'source', 'the dataset')}: no images to evaluate")
    comm = get_comm() if comm is None else comm
    n = len(dataset) if limit is None else min(limit, len(dataset))
    results, seconds = {}, []
    for i in tqdm(shard(n, comm), desc="predict", unit="img", leave=False,
                  disable=not progress or not comm.is_main):
        image = dataset.load_image(i)
        t0 = time.perf_counter()
        pred = model.predict([standardize(image)])[0]
        seconds.append(time.perf_counter() - t0)
        results[int(dataset.image_ids[i])] = pred
    if comm.size == 1:
        return results, np.asarray(seconds)

    def encoded(pred):  # dense masks -> RLEs for the trip to rank 0 (lossless)
        m = np.asarray(pred["masks"], dtype=np.uint8)
        return {**pred, "masks": mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))),
                "mask_shape": m.shape}

    parts = gather_to_main([([(i, encoded(p)) for i, p in results.items()], seconds)], comm)
    if not comm.is_main:
        return None, None
    results, seconds = {}, []
    for items, secs in parts:
        seconds += secs
        for image_id, pred in items:
            shape = pred.pop("mask_shape")
            rles = pred["masks"]
            masks = (mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if shape[0]
                     else np.zeros(shape, bool))
            results[image_id] = {**pred, "masks": masks}
    return results, np.asarray(seconds)


def evaluate_model(model, dataset, eval_cfg, *, out_dir: str | None = None,
                   limit: int | None = None, progress: bool = False,
                   category_ids=None, comm=None) -> dict:
    """Predict every image of ``dataset`` and compute every metric.

    Data-parallel (``comm`` of W ranks, or run under ``mpiexec``): the images are shared among
    the ranks (:func:`predict_dataset`), rank 0 computes the metrics (pycocotools) and writes the
    files, and every rank returns the same metrics (equal to one process's).

    Args:
        model: see :func:`predict_dataset`.
        dataset: the ground truth, a ``CocoDataset``.
        eval_cfg: an :class:`~minimaskrcnn.config.EvalConfig` (``max_dets``, ``dsb_score_thresh``).
        out_dir: if given, write ``metrics.json`` and the COCO results JSON ``results.json`` there.
        limit: evaluate only the first ``limit`` images (>= 1).
        category_ids: the COCO category id of each of the model's labels (``category_ids[label
            - 1]``): the ids the model was trained on (a checkpoint's
            ``config["dataset"]["category_ids"]``); default ``dataset.category_ids``.
        comm: a ``Comm`` (default: the process's).

    Returns:
        ``{"segm": {"AP", "AP50", "AP75"}, "bbox": {...}, "dsb_score", "seconds_per_image"
        (mean), "seconds_per_image_median", "num_images", "max_dets"}``.

    Raises:
        ValueError: ``limit`` < 1, an empty dataset, or ``category_ids`` that are not the
            dataset's (the model's labels would be reported under other categories).
    """
    if category_ids is None:
        category_ids = dataset.category_ids
    elif sorted(int(c) for c in category_ids) != sorted(int(c) for c in dataset.category_ids):
        raise ValueError(f"{getattr(dataset, 'source', 'the dataset')} has category ids "
                         f"{list(dataset.category_ids)}, the model's labels are "
                         f"{list(category_ids)}")
    comm = get_comm() if comm is None else comm
    results, seconds = predict_dataset(model, dataset, limit=limit, progress=progress, comm=comm)
    if not comm.is_main:
        return comm.bcast(None)  # rank 0's metrics (without its predictions)
    # a dataset without masks (keypoint-only annotations, lego-battery) has no segm ground truth
    iou_types = ("segm", "bbox") if getattr(dataset, "has_masks", True) else ("bbox",)
    metrics = evaluate_coco(dataset.coco, results, category_ids, eval_cfg.max_dets, iou_types)
    sigmas = keypoint_sigmas(model.config, dataset) if hasattr(model, "config") else None
    if sigmas is not None:  # a keypoint model on a keypoint dataset: OKS AP too
        metrics.update(evaluate_coco(dataset.coco, results, category_ids, eval_cfg.max_dets,
                                     iou_types=("keypoints",), keypoint_sigmas=sigmas))
    index_of = {int(image_id): k for k, image_id in enumerate(dataset.image_ids)}
    gt = {i: dataset.decode_masks(index_of[i], dataset.annotations(index_of[i])) for i in results}
    metrics["dsb_score"] = dsb_score(gt, results, eval_cfg.dsb_score_thresh)
    metrics["seconds_per_image"] = float(seconds.mean()) if seconds.size else float("nan")
    metrics["seconds_per_image_median"] = float(np.median(seconds)) if seconds.size else float("nan")
    metrics["num_images"] = len(results)
    metrics["max_dets"] = [int(m) for m in eval_cfg.max_dets]
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        write_metrics(os.path.join(out_dir, METRICS_FILE), metrics)
        write_results_json(os.path.join(out_dir, RESULTS_FILE), coco_results(results, category_ids))
    if comm.size > 1:
        comm.bcast(metrics)
    metrics["_results"] = results
    return metrics


def write_metrics(path: str, metrics: dict) -> None:
    """Write the metrics (keys starting with ``_`` left out) as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in metrics.items() if not k.startswith("_")}, f, indent=2)
        f.write("\n")


def format_metrics(metrics: dict) -> str:
    """A small text table of :func:`evaluate_model`'s metrics."""
    lines = [f"{'':6s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}"]
    for kind, name in (("segm", "mask"), ("bbox", "box"), ("keypoints", "kp")):
        if kind in metrics:
            m = metrics[kind]
            lines.append(f"{name:6s} {m['AP']:6.3f} {m['AP50']:6.3f} {m['AP75']:6.3f}")
    if "dsb_score" in metrics:
        lines.append(f"DSB 2018 score {metrics['dsb_score']:.3f}")
    if "seconds_per_image" in metrics:
        lines.append(f"{metrics['seconds_per_image']:.3f} s per image "
                     f"({metrics.get('num_images', '?')} images, maxDets "
                     f"{metrics.get('max_dets', '?')})")
    return "\n".join(lines)
