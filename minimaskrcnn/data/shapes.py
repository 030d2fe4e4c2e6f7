"""Synthetic shapes in COCO form: squares, circles and triangles (3 classes), seeded.

Each image has a random uniform background colour with mild pixel noise and 1 to
``max_shapes`` shapes of random class, size (``min_size`` to ``max_size`` pixels across),
colour and position, drawn one after the other: a later shape occludes the earlier ones, whose
masks lose the covered pixels. A shape left with less than ``min_visible`` (fraction) of its own
area visible is dropped from the annotations (its few visible pixels stay painted, unlabelled),
so every annotation is a clearly visible object. Shape colours differ from the background by at least 60 (L1 over RGB / 3) so
that every object is visible.

Classes (COCO category ids = contiguous labels): 1 square (axis-aligned), 2 circle, 3 triangle
(isosceles, apex up). Pixel (i, j) is inside a shape when its centre (j + 0.5, i + 0.5) is.

Everything is a pure function of ``seed`` (``np.random.default_rng(seed)``).
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.data.coco import CocoDataset

__all__ = ["CATEGORIES", "make_shapes", "shapes_dataset", "write_shapes"]

CATEGORIES = [
    {"id": 1, "name": "square"},
    {"id": 2, "name": "circle"},
    {"id": 3, "name": "triangle"},
]


def _shape_mask(kind: int, cx: float, cy: float, size: float, h: int, w: int) -> np.ndarray:
    """``(h, w) bool`` mask of one shape of side / diameter ``size`` centred at (cx, cy)."""
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs + 0.5, ys + 0.5
    r = size / 2.0
    if kind == 1:  # square
        return (np.abs(px - cx) <= r) & (np.abs(py - cy) <= r)
    if kind == 2:  # circle
        return (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    # triangle: apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
    inside_base = py <= cy + r
    # the two slanted sides: |x - cx| <= (y - (cy - r)) / 2
    inside_sides = np.abs(px - cx) <= (py - (cy - r)) / 2.0
    return inside_base & inside_sides


def _colour_far_from(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        c = rng.integers(0, 256, size=3)
        if np.abs(c - bg).mean() >= 60:
            return c


def make_shapes(num_images: int, seed: int, *, image_size: int = 128, max_shapes: int = 6,
                min_size: int = 12, max_size: int = 40, min_visible: float = 0.3):
    """Generate the shapes data set.

    Args:
        num_images: number of images.
        seed: the only source of randomness.
        image_size: height and width of every image, pixels.
        max_shapes: shapes drawn per image (1..max_shapes, uniform).
        min_size, max_size: side / diameter range, pixels.
        min_visible: a shape less visible than this fraction of its area is not annotated.

    Returns:
        ``(images, coco)``: ``images`` maps image id -> ``(H, W, 3) uint8`` RGB; ``coco`` is a
        COCO instances dict (compressed RLE segmentations, ``bbox [x, y, w, h]``, ``area``,
        ``iscrowd`` 0; file names ``shapes_0001.png``...).

    Raises:
        ValueError: a size range that does not fit the image, or num_images < 1.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 2 <= min_size <= max_size < image_size:
        raise ValueError(f"need 2 <= min_size <= max_size < image_size, got {min_size}, "
                         f"{max_size}, {image_size}")
    rng = np.random.default_rng(seed)
    h = w = int(image_size)
    images, image_records, annotations = {}, [], []
    for image_id in range(1, num_images + 1):
        bg = rng.integers(0, 256, size=3)
        image = bg[None, None, :] + rng.normal(0.0, 6.0, size=(h, w, 3))
        shapes = []  # (kind, mask of the visible part, full area)
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            kind = int(rng.integers(1, 4))
            size = float(rng.uniform(min_size, max_size))
            cx = float(rng.uniform(size / 2, w - size / 2))
            cy = float(rng.uniform(size / 2, h - size / 2))
            colour = _colour_far_from(bg, rng)
            m = _shape_mask(kind, cx, cy, size, h, w)
            if not m.any():
                continue
            for s in shapes:  # occlusion: the new shape hides what it covers
                s[1] &= ~m
            image[m] = colour
            shapes.append([kind, m, int(m.sum())])
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        images[image_id] = image
        image_records.append({"id": image_id, "file_name": f"shapes_{image_id:04d}.png",
                              "height": h, "width": w})
        for kind, m, full_area in shapes:
            area = int(m.sum())
            if area == 0 or area < min_visible * full_area:
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": kind,
                "segmentation": rle, "area": float(area),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
    coco = {"info": {"description": f"minimaskrcnn synthetic shapes, seed {seed}"},
            "images": image_records, "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES]}
    return images, coco


def shapes_dataset(num_images: int, seed: int, **kwargs) -> CocoDataset:
    """An in-memory :class:`CocoDataset` of :func:`make_shapes` (same arguments)."""
    images, coco = make_shapes(num_images, seed, **kwargs)
    return CocoDataset(coco, images=images)


def write_shapes(folder: str, num_images: int, seed: int, **kwargs) -> tuple[str, str]:
    """Write :func:`make_shapes` to ``folder/images/*.png`` and ``folder/annotations.json``.

    Returns:
        ``(annotation_file, image_dir)`` paths, ready for ``CocoDataset``.
    """
    images, coco = make_shapes(num_images, seed, **kwargs)
    image_dir = os.path.join(folder, "images")
    os.makedirs(image_dir, exist_ok=True)
    for rec in coco["images"]:
        Image.fromarray(images[rec["id"]]).save(os.path.join(image_dir, rec["file_name"]))
    ann_file = os.path.join(folder, "annotations.json")
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    return ann_file, image_dir
