"""Evaluation: COCO AP (pycocotools) for masks, boxes and keypoints (OKS), the DSB 2018 score,
metrics files. Sharded over data-parallel ranks (:mod:`minimaskrcnn.distributed`): each rank
predicts its share of the images, rank 0 scores them.

    evaluate_coco(coco_gt, results_by_image, category_ids, max_dets)   -> segm / bbox AP, AP50, AP75
    keypoint_sigmas(model_cfg, dataset)                                -> OKS sigmas (keypoint AP)
    dsb_score(gt_masks_by_image, results_by_image, score_thresh)       -> DSB 2018 score
    coco_results / write_results_json                                  -> COCO results JSON
    predict_dataset(model, dataset) -> Predictions                     -> masks kept as RLEs
    evaluate_model(model, dataset, eval_cfg, out_dir)                  -> all of it for a model
    write_metrics / format_metrics                                     -> metrics.json, a table

Memory is bounded by one image whatever the image count: the predictions' masks are kept as
run-length encodings (:class:`Predictions`), pycocotools takes them as they are, and the DSB
score decodes one mask of one image at a time. Files are written atomically
(:mod:`minimaskrcnn._atomic`): a full disk leaves no truncated file, and the error names it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from minimaskrcnn._atomic import open_atomic
from minimaskrcnn.data import standardize
from minimaskrcnn.data.labels import clean_labels, label_image
from minimaskrcnn.distributed import gather_to_main, get_comm, shard
from minimaskrcnn.evaluation.coco_eval import coco_results, evaluate_coco, write_results_json
from minimaskrcnn.evaluation.dsb import (
    DSB_IOU_THRESHOLDS,
    dsb_image_score,
    dsb_image_score_rle,
    dsb_score,
    dsb_score_of_labels,
    mean_dsb_score,
)
from minimaskrcnn.evaluation.keypoints import keypoint_sigmas

__all__ = [
    "DSB_IOU_THRESHOLDS", "Predictions", "coco_results", "dataset_dsb_score", "dsb_image_score",
    "dsb_image_score_rle", "dsb_score", "dsb_score_of_labels", "evaluate_coco", "evaluate_model",
    "format_metrics",
    "keypoint_sigmas", "mean_dsb_score", "model_has_masks", "predict_dataset", "write_metrics",
    "write_results_json",
]

METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"


class Predictions(Mapping):
    """``{image_id: prediction}`` held with run-length-encoded masks: a few kilobytes per image
    instead of ``D x H x W`` bytes, so evaluation's memory is bounded by one image whatever the
    image count. Reading an entry (``preds[image_id]``, ``.items()``, ``.values()``) decodes that
    image's masks to ``(D, H, W) bool``, as ``model.predict`` returns them by default; the copy
    is the caller's (nothing is cached).

    ``encoded`` is the underlying ``{image_id: prediction}`` with ``masks`` a list of D
    pycocotools RLEs (what :func:`coco_results` and :func:`evaluate_coco` take as they are).
    """

    def __init__(self):
        self.encoded: dict = {}
        self._sizes: dict = {}

    def add(self, image_id: int, prediction: dict, image_size) -> None:
        """Keep ``prediction`` (``masks`` dense ``(D, H, W)`` or D RLEs; dense ones are encoded;
        a model without a mask head gives none, and the entry has none) of image ``image_id``
        whose size is ``(H, W)``."""
        entry = dict(prediction)
        if "masks" in prediction:
            masks = prediction["masks"]
            if isinstance(masks, np.ndarray):  # a model without mask_format="rle"
                m = np.asarray(masks, dtype=np.uint8).reshape(-1, *image_size)
                masks = (mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m)
                         else [])
            entry["masks"] = list(masks)
        self.encoded[int(image_id)] = entry
        self._sizes[int(image_id)] = tuple(int(v) for v in image_size)

    def image_size(self, image_id: int) -> tuple[int, int]:
        """``(H, W)`` of image ``image_id``."""
        return self._sizes[int(image_id)]

    def decoded(self, image_id: int, score_thresh: float | None = None) -> dict:
        """Image ``image_id``'s prediction with ``masks (D, H, W) bool`` (none without a mask
        head); with ``score_thresh``, only the detections scored ``>= score_thresh`` (every
        per-detection array cut)."""
        pred = self.encoded[int(image_id)]
        d = len(pred["scores"])
        keep = (np.arange(d) if score_thresh is None
                else np.flatnonzero(np.asarray(pred["scores"], np.float64).reshape(-1)
                                  >= score_thresh))  # as dsb_image_score compares
        out = {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == d and score_thresh is
                   not None else v) for k, v in pred.items()}
        if "masks" in pred:
            rles = pred["masks"]
            out["masks"] = (mask_utils.decode([rles[k] for k in keep]).transpose(2, 0, 1)
                            .astype(bool) if len(keep)
                            else np.zeros((0, *self._sizes[int(image_id)]), bool))
        return out

    def __getitem__(self, image_id) -> dict:
        return self.decoded(image_id)

    def __iter__(self):
        return iter(self.encoded)

    def __len__(self) -> int:
        return len(self.encoded)


def predict_dataset(model, dataset, *, limit: int | None = None, progress: bool = False,
                    comm=None, hflip_tta: bool = False):
    """Run ``model.predict(..., mask_format="rle")`` on each image of a dataset at native size,
    one image at a time, keeping the masks run-length encoded (memory bounded by one image).

    With a data-parallel communicator of W ranks (:mod:`minimaskrcnn.distributed`),
    rank r predicts its contiguous share of the images (``shard``) and rank 0 gathers them all
    in image order (the encodings are lossless), so the results equal one process's exactly.

    Args:
        model: has ``predict(list of (3, H, W) float32, mask_format="rle") -> list of
            prediction dicts`` (``masks`` D RLEs; dense ``(D, H, W)`` masks are encoded here).
        dataset: a :class:`~minimaskrcnn.data.CocoDataset`.
        limit: only the first ``limit`` images (>= 1).
        progress: show a tqdm bar (rank 0).
        comm: a ``Comm``; default the process's (one process without ``mpiexec``).
        hflip_tta: ``model.predict(..., hflip_tta=True)``: horizontal-flip test-time
            augmentation (:mod:`minimaskrcnn.model.tta`).

    Returns:
        ``(results_by_image, seconds)``: a :class:`Predictions` (``{image_id: prediction}``,
        masks decoded when read) and the ``(N,)`` wall-clock seconds of each ``predict`` call
        (standardisation and mask encoding included, image reading not), on rank 0;
        ``(None, None)`` on the other ranks.

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
    results, seconds = Predictions(), []
    for i in tqdm(shard(n, comm), desc="predict", unit="img", leave=False,
                  disable=not progress or not comm.is_main):
        image = dataset.load_image(i)
        t0 = time.perf_counter()
        kwargs = {"hflip_tta": True} if hflip_tta else {}  # stand-in models lack the keyword
        pred = model.predict([standardize(image)], mask_format="rle", **kwargs)[0]
        results.add(int(dataset.image_ids[i]), pred, image.shape[:2])
        seconds.append(time.perf_counter() - t0)
    if comm.size == 1:
        return results, np.asarray(seconds)
    mine = [(i, p, results.image_size(i)) for i, p in results.encoded.items()]
    parts = gather_to_main([(mine, seconds)], comm)
    if not comm.is_main:
        return None, None
    results, seconds = Predictions(), []
    for items, secs in parts:
        seconds += secs
        for image_id, pred, size in items:
            results.add(image_id, pred, size)
    return results, np.asarray(seconds)


class _GroundTruthMasks(Sequence):
    """The non-crowd ground-truth masks of ``dataset[index]``, each ``(H, W) uint8`` decoded when
    read (nothing kept)."""

    def __init__(self, dataset, index: int):
        self._dataset, self._index = dataset, index
        self._anns = dataset.annotations(index)

    def __len__(self) -> int:
        return len(self._anns)

    def __getitem__(self, g: int) -> np.ndarray:
        return self._dataset.decode_masks(self._index, [self._anns[g]])[0]


def dataset_dsb_score(dataset, results: Predictions, score_thresh: float = 0.5, *,
                      fill_holes: bool = False, largest_component: bool = False,
                      min_area: int = 0) -> float:
    """:func:`dsb_score` of ``results`` against ``dataset``'s non-crowd ground truth (the same
    value), one image and one mask at a time (:func:`dsb_image_score_rle`): memory is one
    ``(H, W)`` label image and one image's ``(G, D)`` intersections.

    Args:
        dataset: a ``CocoDataset`` holding every image id of ``results``.
        results: a :class:`Predictions`.
        score_thresh: detections below it are left out.
        fill_holes, largest_component, min_area: post-processing of each image's label image
            before it is scored (:func:`minimaskrcnn.data.labels.clean_labels`; all off: the
            plain score).

    Returns:
        the mean over the images, in ``results``' order, of the per-image scores (NaN without
        images).
    """
    index_of = {int(image_id): k for k, image_id in enumerate(dataset.image_ids)}
    clean = fill_holes or largest_component or min_area
    per_image = []
    for image_id in results:
        pred = results.encoded[image_id]
        gt = _GroundTruthMasks(dataset, index_of[int(image_id)])
        if not clean:
            per_image.append(dsb_image_score_rle(gt, pred["masks"], pred["scores"],
                                                 results.image_size(image_id), score_thresh))
            continue
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        keep = np.flatnonzero(scores >= score_thresh)
        lab = label_image([pred["masks"][k] for k in keep], scores[keep],
                          image_size=results.image_size(image_id))
        lab = clean_labels(lab, fill_holes=fill_holes, largest_component=largest_component,
                           min_area=min_area)
        per_image.append(dsb_score_of_labels(gt, lab))
    return float(np.mean(per_image)) if per_image else float("nan")


def evaluate_model(model, dataset, eval_cfg, *, out_dir: str | None = None,
                   limit: int | None = None, progress: bool = False,
                   category_ids=None, comm=None, hflip_tta: bool = False) -> dict:
    """Predict every image of ``dataset`` and compute every metric, in memory bounded by one
    image whatever the image count (masks kept as run-length encodings, the DSB score
    accumulated one image and one mask at a time).

    Data-parallel (``comm`` of W ranks, or run under ``mpiexec``): the images are shared among
    the ranks (:func:`predict_dataset`), rank 0 computes the metrics (pycocotools) and writes the
    files, and every rank returns the same metrics (equal to one process's).

    Args:
        model: see :func:`predict_dataset`.
        dataset: the ground truth, a ``CocoDataset``.
        eval_cfg: an :class:`~minimaskrcnn.config.EvalConfig` (``max_dets``, ``dsb_score_thresh``).
        out_dir: if given, write ``metrics.json`` and the COCO results JSON ``results.json`` there
            (atomically: a full disk leaves the old file or none, and the ``OSError`` names the
            file).
        limit: evaluate only the first ``limit`` images (>= 1).
        category_ids: the COCO category id of each of the model's labels (``category_ids[label
            - 1]``): the ids the model was trained on (a checkpoint's
            ``config["dataset"]["category_ids"]``); default ``dataset.category_ids``.
        comm: a ``Comm`` (default: the process's).
        hflip_tta: predict with horizontal-flip test-time augmentation.

    Which metrics (the ``iouType`` s of COCOeval): ``"bbox"`` always; ``"segm"`` when the model
    has a mask head (``model.config.mask_on``, true for a model without a config) and the
    dataset has masks (``dataset.has_masks``: lego-battery's are its boxes); the DSB score when
    the model has a mask head; ``"keypoints"`` (OKS AP) when the model has a keypoint head and
    the dataset keypoints (:func:`keypoint_sigmas`).

    Returns:
        ``{"segm": {"AP", "AP50", "AP75"}, "bbox": {...}, "keypoints": {...}, "dsb_score",
        "seconds_per_image" (mean), "seconds_per_image_median", "num_images", "max_dets"}``
        (the metrics above that apply); on rank 0 also ``"_results"``: the
        :class:`Predictions` (masks decoded per image when read).

    Raises:
        ValueError: ``limit`` < 1, an empty dataset, or ``category_ids`` that are not the
            dataset's (the model's labels would be reported under other categories).
        OSError: ``out_dir``'s files cannot be written (the message names the file).
    """
    if category_ids is None:
        category_ids = dataset.category_ids
    elif sorted(int(c) for c in category_ids) != sorted(int(c) for c in dataset.category_ids):
        raise ValueError(f"{getattr(dataset, 'source', 'the dataset')} has category ids "
                         f"{list(dataset.category_ids)}, the model's labels are "
                         f"{list(category_ids)}")
    comm = get_comm() if comm is None else comm
    results, seconds = predict_dataset(model, dataset, limit=limit, progress=progress, comm=comm,
                                       hflip_tta=hflip_tta)
    if not comm.is_main:
        return comm.bcast(None)  # rank 0's metrics (without its predictions)
    # no mask head (Faster / Keypoint R-CNN): no mask predictions; a dataset without masks
    # (keypoint-only annotations, lego-battery) has no segm ground truth
    model_masks = model_has_masks(model)
    iou_types = (("segm", "bbox") if model_masks and getattr(dataset, "has_masks", True)
                 else ("bbox",))
    metrics = evaluate_coco(dataset.coco, results.encoded, category_ids, eval_cfg.max_dets,
                            iou_types)
    sigmas = keypoint_sigmas(model.config, dataset) if hasattr(model, "config") else None
    if sigmas is not None:  # a keypoint model on a keypoint dataset: OKS AP too
        metrics.update(evaluate_coco(dataset.coco, results.encoded, category_ids,
                                     eval_cfg.max_dets, iou_types=("keypoints",),
                                     keypoint_sigmas=sigmas))
    if model_masks:
        metrics["dsb_score"] = dataset_dsb_score(
            dataset, results, eval_cfg.dsb_score_thresh, fill_holes=eval_cfg.dsb_fill_holes,
            largest_component=eval_cfg.dsb_largest_component, min_area=eval_cfg.dsb_min_area)
    metrics["seconds_per_image"] = float(seconds.mean()) if seconds.size else float("nan")
    metrics["seconds_per_image_median"] = float(np.median(seconds)) if seconds.size else float("nan")
    metrics["num_images"] = len(results)
    metrics["max_dets"] = [int(m) for m in eval_cfg.max_dets]
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        write_metrics(os.path.join(out_dir, METRICS_FILE), metrics)
        write_results_json(os.path.join(out_dir, RESULTS_FILE),
                           coco_results(results.encoded, category_ids))
    if comm.size > 1:
        comm.bcast(metrics)
    metrics["_results"] = results
    return metrics


def model_has_masks(model) -> bool:
    """Whether ``model`` predicts masks: its config's ``mask_on`` (Detectron2's
    ``MODEL.MASK_ON``); a model without a config (a stand-in of the tests) is taken to."""
    return bool(getattr(getattr(model, "config", None), "mask_on", True))


def write_metrics(path: str, metrics: dict) -> None:
    """Write the metrics (keys starting with ``_`` left out) as indented JSON, atomically
    (:func:`minimaskrcnn._atomic.open_atomic`: the old file or the new one, never a truncated
    one; an ``OSError`` names ``path``)."""
    with open_atomic(path) as f:
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
