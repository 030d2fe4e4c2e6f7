"""The 2018 Data Science Bowl score (``docs/nuclei-mini.md``, "Evaluation").

Per image: keep the detections with score >= ``score_thresh``; make their masks non-overlapping
(each pixel goes to the highest-scored mask covering it, ties to the earlier detection); drop
masks left empty. Then for each IoU threshold t in 0.50, 0.55, ..., 0.95 count

    TP = ground-truth / prediction pairs with IoU > t (strictly),
    FP = predictions matching no ground truth, FN = ground truths matching no prediction,

and average ``TP / (TP + FP + FN)`` over the thresholds. Because the predictions do not overlap
and IoU > 0.5, a prediction matches at most one non-overlapping ground truth and vice versa, so
the pairs are one-to-one (as in the competition's metric). The score is the mean over images.
Classes are ignored (nuclei are one class). An image with neither ground truth nor prediction
scores 1, one with predictions but no ground truth 0.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["DSB_IOU_THRESHOLDS", "dsb_image_score", "dsb_image_score_rle", "dsb_score",
           "dsb_score_of_labels", "mean_dsb_score", "non_overlapping"]

DSB_IOU_THRESHOLDS = np.round(np.arange(10) * 0.05 + 0.5, 2)
"""0.50, 0.55, ..., 0.95."""


def non_overlapping(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Label image of score-ordered masks.

    Args:
        masks: ``(D, H, W)`` bool / uint8.
        scores: ``(D,)``.

    Returns:
        ``(H, W) int64``: 0 where no mask, else ``1 + d`` of the highest-scored mask ``d``
        covering the pixel (ties: the lower ``d``).
    """
    d, h, w = masks.shape
    labels = np.zeros((h, w), dtype=np.int64)
    for k in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[::-1]:
        labels[np.asarray(masks[k], dtype=bool)] = k + 1  # higher scores painted last win
    return labels


def dsb_image_score(gt_masks: np.ndarray, pred_masks: np.ndarray, scores: np.ndarray,
                    score_thresh: float = 0.5) -> float:
    """DSB 2018 score of one image.

    Args:
        gt_masks: ``(G, H, W)`` bool / uint8 ground-truth instances.
        pred_masks: ``(D, H, W)`` bool / uint8 predicted instances.
        scores: ``(D,)`` detection scores.
        score_thresh: detections below it are left out.

    Returns:
        the mean over :data:`DSB_IOU_THRESHOLDS` of ``TP / (TP + FP + FN)``, in [0, 1].

    Raises:
        ValueError: masks of different image sizes, or scores not (D,).
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    pred_masks = np.asarray(pred_masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if gt_masks.ndim != 3 or pred_masks.ndim != 3 or gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"gt_masks (G, H, W) and pred_masks (D, H, W) must share H, W, got "
                         f"{gt_masks.shape} and {pred_masks.shape}")
    if scores.shape[0] != pred_masks.shape[0]:
        raise ValueError(f"scores must be (D,) = ({pred_masks.shape[0]},), got {scores.shape}")
    keep = scores >= score_thresh
    lab = non_overlapping(pred_masks[keep], scores[keep])
    return _score_of_labels(lab, gt_masks, gt_masks.shape[0])


def dsb_image_score_rle(gt_masks, pred_rles, scores, image_size,
                        score_thresh: float = 0.5) -> float:
    """:func:`dsb_image_score` (the same value, bit for bit) decoding one mask at a time: memory
    is an ``(H, W)`` label image and the ``(G, D)`` intersections, whatever ``G`` and ``D`` (an
    image with thousands of instances).

    Args:
        gt_masks: an iterable of the G ground-truth ``(H, W)`` bool / uint8 masks (a generator
            decoding each when reached), with ``len``.
        pred_rles: the D predictions' pycocotools RLEs (``model.predict(...,
            mask_format="rle")``).
        scores: ``(D,)`` detection scores.
        image_size: ``(H, W)``.
        score_thresh: detections below it are left out.

    Raises:
        ValueError: scores not (D,), or a mask not ``(H, W)``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(pred_rles):
        raise ValueError(f"scores must be (D,) = ({len(pred_rles)},), got {scores.shape}")
    h, w = (int(v) for v in image_size)
    keep = np.flatnonzero(scores >= score_thresh)
    lab = np.zeros((h, w), dtype=np.int64)  # non_overlapping, one decoded mask at a time
    for k in np.argsort(-scores[keep], kind="stable")[::-1]:
        m = mask_utils.decode(pred_rles[keep[k]]).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"a predicted mask is {m.shape}, the image {(h, w)}")
        lab[m] = k + 1
    return _score_of_labels(lab, gt_masks, len(gt_masks))


def dsb_score_of_labels(gt_masks, labels: np.ndarray) -> float:
    """DSB 2018 score of one image's predictions given as a label image (non-overlapping by
    construction: :func:`minimaskrcnn.data.labels.label_image`, possibly cleaned by
    :func:`~minimaskrcnn.data.labels.clean_labels`).

    Args:
        gt_masks: the G ground-truth ``(H, W)`` masks, a sequence with ``len`` (decoded when
            read is fine).
        labels: ``(H, W)`` integers, 0 background, one value per predicted instance (values
            need not be contiguous).

    Raises:
        ValueError: a ground-truth mask not of the labels' size.
    """
    return _score_of_labels(np.asarray(labels, dtype=np.int64), gt_masks, len(gt_masks))


def _score_of_labels(lab: np.ndarray, gt_masks, num_gt: int) -> float:
    """The DSB score of the non-overlapping prediction labels ``lab (H, W)`` (0 background,
    else 1 + kept index) against ``num_gt`` ground-truth masks given one at a time."""
    present = np.unique(lab[lab > 0])  # predictions left non-empty, as 1 + index
    num_pred = present.size
    if num_gt == 0 or num_pred == 0:
        return 1.0 if num_gt == num_pred else 0.0
    remap = np.zeros(lab.max() + 1, dtype=np.int64)
    remap[present] = np.arange(1, num_pred + 1)
    lab = remap[lab]
    pred_area = np.bincount(lab.ravel(), minlength=num_pred + 1)[1:]
    inter = np.zeros((num_gt, num_pred), dtype=np.int64)
    gt_area = np.zeros(num_gt, dtype=np.int64)
    for g, m in enumerate(gt_masks):
        m = np.asarray(m, dtype=bool)
        if m.shape != lab.shape:
            raise ValueError(f"a ground-truth mask is {m.shape}, the image {lab.shape}")
        inter[g] = np.bincount(lab[m], minlength=num_pred + 1)[1:]
        gt_area[g] = m.sum()
    iou = inter / (gt_area[:, None] + pred_area[None, :] - inter)
    per_t = []
    for t in DSB_IOU_THRESHOLDS:
        match = iou > t
        tp = int(match.sum())
        fp = int((~match.any(axis=0)).sum())
        fn = int((~match.any(axis=1)).sum())
        per_t.append(tp / (tp + fp + fn))
    return float(np.mean(per_t))


def dsb_score(gt_masks_by_image: dict, results_by_image: dict, score_thresh: float = 0.5) -> float:
    """Mean DSB 2018 score over images.

    Args:
        gt_masks_by_image: ``{image_id: (G, H, W) masks}`` (non-crowd ground truth).
        results_by_image: ``{image_id: prediction}`` with ``masks (D, H, W)`` and ``scores (D,)``;
            every ground-truth image must have an entry (empty arrays when nothing was found).
        score_thresh: detections below it are left out.

    Raises:
        ValueError: an image without a prediction entry.
    """
    missing = [i for i in gt_masks_by_image if i not in results_by_image]
    if missing:
        raise ValueError(f"no prediction entry for image ids {missing[:5]}")
    return mean_dsb_score(((gt, results_by_image[i]["masks"], results_by_image[i]["scores"])
                           for i, gt in gt_masks_by_image.items()), score_thresh)


def mean_dsb_score(images, score_thresh: float = 0.5) -> float:
    """Mean DSB 2018 score over images given one at a time (memory: one image).

    Args:
        images: an iterable (a generator: each image decoded when reached) of ``(gt_masks (G,
            H, W), pred_masks (D, H, W), scores (D,))``, as :func:`dsb_image_score` takes them.
        score_thresh: detections below it are left out.

    Returns:
        the mean of the per-image scores in the order given (NaN without images).
    """
    per_image = [dsb_image_score(gt, masks, scores, score_thresh) for gt, masks, scores in images]
    return float(np.mean(per_image)) if per_image else float("nan")
