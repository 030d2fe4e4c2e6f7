"""Assign each prediction (anchor or proposal) to a ground truth by match quality (IoU).

This is torchvision's ``models.detection._utils.Matcher`` (the Faster R-CNN / Mask R-CNN matcher,
paper section 3 "RPN" and "Training"), reproduced exactly, including its low-quality rule:

1. For every prediction ``n`` take the best ground truth ``g* = argmax_g Q[g, n]`` (the lowest
   ``g`` on ties, as ``torch.max`` returns the first maximum) and its quality ``q = Q[g*, n]``.
2. ``q < low_threshold`` -> ``BELOW_LOW_THRESHOLD`` (-1, background);
   ``low_threshold <= q < high_threshold`` -> ``BETWEEN_THRESHOLDS`` (-2, ignored);
   ``q >= high_threshold`` -> ``g*``.
3. With ``allow_low_quality_matches``: for every ground truth ``g`` find its highest quality
   ``max_n Q[g, n]`` and every prediction attaining it (ties included); each such prediction is
   (re)assigned its own ``g*`` from step 1 (not necessarily ``g``: a prediction that is some other
   ground truth's best still goes to its argmax, as in torchvision). A ground truth that overlaps
   nothing has highest quality 0, so every prediction with quality 0 for it becomes a match to its
   argmax; torchvision and Detectron2 behave the same way and so do we.

Departures, all about empty inputs (torchvision raises for both in training):

- no ground truths (``G == 0``): every prediction is ``BELOW_LOW_THRESHOLD`` (all background), so
  an image without instances still trains the RPN and box head on negatives;
- no predictions (``N == 0``): an empty ``(0,)`` result.

Shapes: ``G`` ground truths, ``N`` predictions (anchors or proposals).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn._validate import check_array, check_scalar
from minimaskrcnn.backend import get_array_module

__all__ = ["Matcher"]


class Matcher:
    """torchvision's ``Matcher``: prediction -> ground-truth index, or -1 / -2.

    Args:
        high_threshold: qualities ``>=`` this are matches (RPN 0.7, RoI heads 0.5).
        low_threshold: qualities ``<`` this are background; ``[low, high)`` are ignored
            (RPN 0.3; the RoI heads use ``low == high == 0.5``, so nothing is ignored).
        allow_low_quality_matches: also match every ground truth's best prediction(s) (RPN: True).

    Raises:
        TypeError / ValueError: a threshold is not a finite real number, or
            ``low_threshold > high_threshold``.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float,
                 allow_low_quality_matches: bool = False) -> None:
        check_scalar("high_threshold", high_threshold)
        check_scalar("low_threshold", low_threshold)
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold must be <= high_threshold, got {low_threshold} > {high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
                f"allow_low_quality_matches={self.allow_low_quality_matches})")

    def __call__(self, match_quality_matrix) -> np.ndarray:
        """Match predictions to ground truths.

        Args:
            match_quality_matrix: ``(G, N)`` float, ``Q[g, n]`` the quality (IoU) of ground truth
                ``g`` with prediction ``n``; finite (NaN is refused: ``box_iou`` of two empty
                boxes gives NaN, remove degenerate boxes first).

        Returns:
            ``(N,)`` int64 array in the matrix's array module (NumPy, or CuPy on a GPU: matched
            on the device, the matrix is not copied): the matched ground-truth index in
            ``[0, G)``, ``-1`` (``BELOW_LOW_THRESHOLD``) or ``-2`` (``BETWEEN_THRESHOLDS``). All
            ``-1`` when ``G == 0``. (The finite check is one host synchronisation on a GPU.)

        Raises:
            TypeError: not a floating-point array.
            ValueError: not 2-D, or contains NaN/inf.
        """
        q = check_array("match_quality_matrix", match_quality_matrix, ndim=2, float_only=True,
                        finite=True, expected="(G, N) float IoU")
        xp = get_array_module(q)  # matched where the matrix is (on a GPU: no copy of it)
        num_gt, num_pred = q.shape
        if num_gt == 0:
            return xp.full(num_pred, self.BELOW_LOW_THRESHOLD, dtype=np.int64)
        if num_pred == 0:
            return xp.zeros(0, dtype=np.int64)

        # 1. best ground truth per prediction (argmax returns the first maximum on ties)
        all_matches = q.argmax(axis=0).astype(np.int64)  # (N,)
        matched_vals = q[all_matches, xp.arange(num_pred)]  # (N,)

        # 2. thresholds
        matches = xp.where(matched_vals < self.low_threshold, self.BELOW_LOW_THRESHOLD,
                           all_matches)
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches = xp.where(between, self.BETWEEN_THRESHOLDS, matches)

        # 3. every ground truth's best prediction(s), ties included, get their argmax back
        if self.allow_low_quality_matches:
            highest_quality_foreach_gt = q.max(axis=1)  # (G,)
            is_best = q == highest_quality_foreach_gt[:, None]  # (G, N)
            preds_to_update = is_best.any(axis=0)  # (N,)
            matches = xp.where(preds_to_update, all_matches, matches)
        return matches.astype(np.int64, copy=False)
