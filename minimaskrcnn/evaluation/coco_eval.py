"""COCO metrics with pycocotools ``COCOeval`` (``iouType`` "segm", "bbox" and "keypoints"), and
the COCO results JSON.

AP is read from ``COCOeval.eval['precision']`` (shape ``(T, R, K, A, M)``: IoU thresholds,
recall thresholds, categories, area ranges, maxDets) at area range "all" and the LAST maxDets
entry, averaged over the entries that are not -1 (as ``summarize()`` does). Not from
``summarize()``'s first line: that one uses maxDets=100 whatever ``params.maxDets`` says, which
on images with hundreds of nuclei understates AP (``docs/nuclei-mini.md``, "Evaluation").
AP50 is the IoU-threshold index of 0.50, AP75 that of 0.75. (``COCOeval.evaluate`` sorts
``maxDets``, so the last entry is the largest.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn._atomic import open_atomic

__all__ = ["coco_results", "evaluate_coco", "write_results_json"]


def _prediction_arrays(pred: dict):
    boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
    masks = pred.get("masks")
    if not (len(boxes) == len(scores) == len(labels)) or (masks is not None and len(masks) != len(boxes)):
        raise ValueError("a prediction's boxes (D, 4), scores (D,), labels (D,) and masks "
                         "(D, H, W) must have the same D")
    return boxes, scores, labels, masks


def coco_results(results_by_image: dict, category_ids, *, iou_type: str | None = None) -> list[dict]:
    """COCO results entries of model predictions.

    Args:
        results_by_image: ``{image_id: prediction}`` with prediction a dict ``boxes (D, 4)
            [x1, y1, x2, y2]`` pixels, ``scores (D,)``, ``labels (D,) int64`` in 1..K and
            (for segm) ``masks``: ``(D, H, W) bool``, or a list of D pycocotools RLEs
            (``model.predict(..., mask_format="rle")``, for images too large for dense masks).
        category_ids: ``category_ids[label - 1]`` is the COCO category id of a label.
        iou_type: ``"bbox"`` (entries carry ``bbox`` only), ``"segm"`` (``segmentation`` only),
            ``"keypoints"`` (``keypoints`` only: ``x, y, v`` per keypoint from the prediction's
            ``keypoints (D, K, 3)``, scored by the detection's score as torchvision and
            Detectron do) or ``None`` (all there are: the form written to disk).

    Returns:
        list of dicts ``image_id, category_id, score`` plus ``bbox [x, y, w, h]`` and/or
        ``segmentation`` (compressed RLE, ``counts`` a str), JSON-ready.

    Raises:
        ValueError: mismatched lengths, or a label outside 1..K.
    """
    out = []
    for image_id, pred in results_by_image.items():
        boxes, scores, labels, masks = _prediction_arrays(pred)
        if labels.size and (labels.min() < 1 or labels.max() > len(category_ids)):
            raise ValueError(f"labels must be in 1..{len(category_ids)}, got {labels.min()}..{labels.max()}")
        if iou_type == "segm" and masks is None and len(scores):
            raise ValueError(f"image {image_id}: segm evaluation needs the predictions' masks")
        rles = None
        if iou_type in (None, "segm") and masks is not None and len(masks):
            if isinstance(masks, list) and all(isinstance(m, dict) for m in masks):
                rles = masks  # already run-length encoded
            else:
                rles = mask_utils.encode(np.asfortranarray(
                    np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))
        kps = pred.get("keypoints") if iou_type in (None, "keypoints") else None
        if iou_type == "keypoints" and kps is None and len(scores):
            raise ValueError(f"image {image_id}: keypoint evaluation needs the predictions' "
                             "keypoints")
        for d in range(len(scores)):
            entry = {"image_id": int(image_id), "category_id": int(category_ids[labels[d] - 1]),
                     "score": float(scores[d])}
            if kps is not None:
                entry["keypoints"] = [float(v) for v in np.asarray(kps[d]).reshape(-1)]
            if iou_type in (None, "bbox"):
                x1, y1, x2, y2 = (float(v) for v in boxes[d])
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            if rles is not None:
                counts = rles[d]["counts"]
                entry["segmentation"] = {"size": [int(v) for v in rles[d]["size"]],
                                         "counts": counts.decode("ascii")
                                         if isinstance(counts, bytes) else counts}
            out.append(entry)
    return out


def write_results_json(path: str, results: list[dict]) -> None:
    """Write :func:`coco_results` entries as a COCO results JSON file, atomically
    (:func:`minimaskrcnn._atomic.open_atomic`: the old file or the new one, never a truncated
    or empty one; an ``OSError`` names ``path``)."""
    with open_atomic(path) as f:
        json.dump(results, f)


def _ap_from_precision(precision: np.ndarray, iou_thrs: np.ndarray) -> dict:
    """AP, AP50, AP75 from ``eval['precision']`` at area "all" (index 0), last maxDets."""
    p = precision[:, :, :, 0, -1]  # (T, R, K)

    def mean_valid(x):
        v = x[x > -1]
        return float(v.mean()) if v.size else -1.0

    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    return {"AP": mean_valid(p), "AP50": mean_valid(p[t50]), "AP75": mean_valid(p[t75])}


def evaluate_coco(coco_gt: COCO, results_by_image: dict, category_ids, max_dets=(10, 100, 500),
                  iou_types=("segm", "bbox"), *, keypoint_sigmas=None) -> dict:
    """COCO AP of predictions against a ground truth.

    Args:
        coco_gt: the ground truth (``CocoDataset.coco``; crowd annotations are honoured).
        results_by_image: ``{image_id: prediction}`` (see :func:`coco_results`); the images
            evaluated are exactly its keys (an image without detections must still appear,
            with empty arrays).
        category_ids: contiguous label -> COCO category id (``CocoDataset.category_ids``).
        max_dets: ``COCOeval.params.maxDets``; AP is read at the last entry.
        iou_types: subset of ``("segm", "bbox", "keypoints")``.
        keypoint_sigmas: ``(K,)`` OKS sigmas, required for ``"keypoints"``
            (:func:`minimaskrcnn.evaluation.keypoints.keypoint_sigmas`); OKS AP over the ground
            truths with at least one labelled keypoint (pycocotools ignores the others).

    Returns:
        ``{"segm": {"AP", "AP50", "AP75"}, "bbox": {...}, "keypoints": {...}}`` floats in
        [0, 1] (-1 when no image has a ground truth, as COCOeval marks it; 0 when there is no
        detection at all); AP50 / AP75 are at OKS 0.5 / 0.75 for keypoints.

    Raises:
        ValueError: an image id that is not in ``coco_gt``, bad predictions, or keypoint
            evaluation without ``keypoint_sigmas``.
    """
    image_ids = sorted(int(i) for i in results_by_image)
    unknown = set(image_ids) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"predictions for image ids not in the ground truth: {sorted(unknown)[:5]}")
    metrics = {}
    for iou_type in iou_types:
        if iou_type not in ("segm", "bbox", "keypoints"):
            raise ValueError(f"iou_type must be 'segm', 'bbox' or 'keypoints', got {iou_type!r}")
        if iou_type == "keypoints" and keypoint_sigmas is None:
            raise ValueError("keypoint evaluation needs keypoint_sigmas (one OKS sigma per "
                             "keypoint)")
        results = coco_results(results_by_image, category_ids, iou_type=iou_type)
        if not results:
            has_gt = any(not a.get("iscrowd", 0) for i in image_ids for a in coco_gt.imgToAnns.get(i, []))
            v = 0.0 if has_gt else -1.0
            metrics[iou_type] = {"AP": v, "AP50": v, "AP75": v}
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
            ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            ev.params.imgIds = image_ids
            ev.params.maxDets = [int(m) for m in max_dets]
            if iou_type == "keypoints":
                ev.params.kpt_oks_sigmas = np.asarray(keypoint_sigmas, dtype=np.float64)
            ev.evaluate()
            ev.accumulate()
        metrics[iou_type] = _ap_from_precision(ev.eval["precision"], ev.params.iouThrs)
    return metrics
