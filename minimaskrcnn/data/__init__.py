"""Data: COCO datasets, the presets' transforms, seeded training batches, the embedded real
sample and synthetic shapes.

    CocoDataset(annotation_file, image_dir)   COCO instances reader (pycocotools), see coco.py
    DatasetError                              bad file / image / record (a ValueError)
    read_image(path)                          a PNG, JPEG, TIFF, ... -> (H, W, 3) uint8 RGB
    IMAGE_SUFFIXES                            the file suffixes read_image reads (folders)
    convert_dsb2018(stage1_train, out)        the public DSB2018 download -> COCO files and the
                                              project's split (ConversionSummary, dsb2018.py)
    label_image(masks, scores)                instances -> (H, W) uint16 label image (labels.py)
    write_label_png / read_label_png          label images as 16-bit grey PNG
    standardize(image)                        (H, W, 3) uint8 -> (3, H, W) float32, per image
    random_crop_flip(image, target, ...)      training crop + flips (transforms.py)
    TrainBatches                              batches as a pure function of (seed, iteration)
    load_sample(split)                        embedded DSB2018 nuclei sample, "train" / "val"
    shapes                                    synthetic squares / circles / triangles

``weights/`` holds the trained weights that ship with the package (package data, no code): they
load by name through :func:`minimaskrcnn.model_zoo.load_model` (``minimaskrcnn.load_model``).
"""

from __future__ import annotations

import os

from minimaskrcnn.data import shapes
from minimaskrcnn.data.coco import (
    IMAGE_SUFFIXES,
    CocoDataset,
    DatasetError,
    masks_to_boxes,
    read_image,
)
from minimaskrcnn.data.dsb2018 import ConversionSummary, convert_dsb2018
from minimaskrcnn.data.labels import label_image, read_label_png, write_label_png
from minimaskrcnn.data.loader import TrainBatches, sample_rng
from minimaskrcnn.data.transforms import random_crop_flip, sample_crop, standardize

__all__ = [
    "IMAGE_SUFFIXES", "CocoDataset", "ConversionSummary", "DatasetError", "TrainBatches",
    "convert_dsb2018", "label_image", "load_sample", "masks_to_boxes", "random_crop_flip",
    "read_image", "read_label_png", "sample_crop", "sample_paths", "sample_rng", "shapes",
    "standardize", "write_label_png",
]

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "samples", "dsb2018")
"""The embedded DSB2018 sample (see its README.md for the selection and the licence)."""


def sample_paths(split: str) -> tuple[str, str]:
    """``(annotation_file, image_dir)`` of the embedded sample's ``"train"`` or ``"val"`` split.

    Raises:
        ValueError: another split name.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return os.path.join(SAMPLE_DIR, f"{split}.json"), os.path.join(SAMPLE_DIR, "images")


def load_sample(split: str) -> CocoDataset:
    """The embedded real DSB2018 nuclei sample: 24 ``"train"`` or 8 ``"val"`` images, one class.

    Raises:
        ValueError: another split name.
    """
    return CocoDataset(*sample_paths(split))
