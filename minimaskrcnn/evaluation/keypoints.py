"""Keypoint evaluation settings: the per-keypoint OKS sigmas (COCO keypoint AP).

pycocotools' ``COCOeval(iouType="keypoints")`` scores a detected instance against a ground truth
by the object keypoint similarity ``OKS = mean over labelled keypoints of exp(-d^2 / (2 s^2
(2 sigma_k)^2))`` with ``d`` the distance between detected and true keypoint, ``s^2`` the ground
truth's area and ``sigma_k`` a per-keypoint falloff (``params.kpt_oks_sigmas``; COCO's 17 person
values below). OKS plays the part IoU plays for boxes and masks: AP is averaged over OKS
thresholds 0.50:0.95.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COCO_PERSON_SIGMAS", "keypoint_sigmas"]

COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062,
                      0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
"""COCO's OKS sigmas of the 17 person keypoints (nose, eyes, ears, shoulders, elbows, wrists,
hips, knees, ankles), pycocotools' ``Params.setKpParams``."""


def keypoint_sigmas(cfg, dataset) -> np.ndarray | None:
    """The OKS sigmas ``(K,) float64`` to evaluate a model's keypoints on a dataset.

    In order: the model config's ``keypoint_sigmas`` when set, else the dataset's (its keypoint
    category's ``sigmas``), else COCO's person sigmas when K = 17.

    Args:
        cfg: the model's :class:`~minimaskrcnn.config.ModelConfig`.
        dataset: a :class:`~minimaskrcnn.data.CocoDataset`.

    Returns:
        the sigmas, or ``None`` when there is nothing to evaluate (a model without a keypoint
        head, or a dataset without keypoints).

    Raises:
        ValueError: the model's K is not the dataset's, or no sigmas are known for K keypoints.
    """
    k = cfg.num_keypoints
    if not k or not getattr(dataset, "num_keypoints", 0):
        return None
    if dataset.num_keypoints != k:
        raise ValueError(f"the model predicts {k} keypoints, the dataset "
                         f"{getattr(dataset, 'source', '')} has {dataset.num_keypoints}")
    if cfg.keypoint_sigmas:
        return np.asarray(cfg.keypoint_sigmas, np.float64)
    if dataset.keypoint_sigmas is not None:
        return np.asarray(dataset.keypoint_sigmas, np.float64)
    if k == len(COCO_PERSON_SIGMAS):
        return np.asarray(COCO_PERSON_SIGMAS, np.float64)
    raise ValueError(f"no OKS sigmas for {k} keypoints: set ModelConfig.keypoint_sigmas or the "
                     "category's 'sigmas' in the annotation file")
