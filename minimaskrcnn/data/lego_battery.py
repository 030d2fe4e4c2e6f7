"""The embedded lego-battery keypoint sample (34 real photographs, 5 keypoints, MIT licence).

See ``samples/lego_battery/README.md`` for what it holds, what minimaskrcnn added (boxes derived
from the keypoints, no masks) and the licence.
"""

from __future__ import annotations

import os

from minimaskrcnn.data.coco import CocoDataset

__all__ = ["LEGO_DIR", "lego_battery_paths", "load_lego_battery"]

LEGO_DIR = os.path.join(os.path.dirname(__file__), "samples", "lego_battery")
"""The embedded lego-battery sample."""


def lego_battery_paths(split: str) -> tuple[str, str]:
    """``(annotation_file, image_dir)`` of the ``"train"`` (27 images) or ``"val"`` (7) split.

    Raises:
        ValueError: another split name.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return os.path.join(LEGO_DIR, f"{split}.json"), os.path.join(LEGO_DIR, "images")


def load_lego_battery(split: str) -> CocoDataset:
    """The lego-battery ``"train"`` or ``"val"`` split as a :class:`CocoDataset` (keypoints,
    boxes derived from them, box-shaped masks: ``has_masks`` is False).

    Raises:
        ValueError: another split name.
    """
    return CocoDataset(*lego_battery_paths(split))
