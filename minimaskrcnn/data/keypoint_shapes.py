"""Synthetic keypoint shapes in COCO keypoints form: isosceles triangles with 3 keypoints, seeded.

Each image has a random uniform background colour with mild pixel noise and 1 to
``max_shapes`` triangles of random size, orientation, colour and position that do not touch
each other (so every keypoint is visible, v = 2). A triangle is tall and narrow (base half-width
``0.3 x`` its height), so its apex is told apart from its base by shape alone. One category,
``triangle`` (id 1), with keypoints

- ``apex``: the tip;
- ``left_base`` / ``right_base``: the base corners, named by handedness: walking from the base
  towards the apex, ``left_base`` is on the left as seen in the image (x right, y down). A mirror
  image exchanges them, so a horizontal or vertical flip swaps the pair (their names make them a
  flip pair, :func:`minimaskrcnn.data.coco.flip_pairs`), exactly as for a person's left and
  right.

and skeleton apex-left, apex-right, left-right. The category also carries ``sigmas`` (0.1 per
keypoint, the OKS falloff used by evaluation; COCO's person sigmas are 0.025 to 0.107: the
triangles are small, 20 to 40 pixels, so a pixel of error is a larger share of them). Masks are
given too (pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) is), so masks and
keypoints train together. Each keypoint lies :data:`INSET` pixels inside its corner, on the line
to the centroid (pixel-edge coordinates): the exact tip of a narrow corner lies outside the box
of the rasterised mask, and a keypoint outside its box is never trained on (torchvision's
``keypoints_to_heatmap`` marks it invalid).

Everything is a pure function of ``seed`` (``np.random.default_rng(seed)``).
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils

from minimaskrcnn.data.coco import CocoDataset

__all__ = ["INSET", "KEYPOINT_CATEGORY", "keypoint_shapes_dataset", "make_keypoint_shapes"]

INSET = 3.0
"""Pixels between a triangle's corner and its keypoint (towards the centroid)."""

KEYPOINT_CATEGORY = {
    "id": 1, "name": "triangle", "supercategory": "shape",
    "keypoints": ["apex", "left_base", "right_base"],
    "skeleton": [[1, 2], [1, 3], [2, 3]],
    "sigmas": [0.1, 0.1, 0.1],
}


def triangle_vertices(cx: float, cy: float, height: float, theta: float) -> np.ndarray:
    """``(3, 2)`` vertices ``apex, left_base, right_base`` of a triangle of the given height
    whose apex points along angle ``theta`` (radians, image axes: x right, y down) from its
    centroid ``(cx, cy)``; base half-width ``0.3 height``."""
    u = np.array([math.cos(theta), math.sin(theta)])  # base -> apex
    c = np.array([cx, cy])
    apex = c + (2.0 / 3.0) * height * u
    base = c - (1.0 / 3.0) * height * u
    # left of u as seen in the image (y down): rotate u by -90 degrees -> (u_y, -u_x)
    left = np.array([u[1], -u[0]])
    hw = 0.3 * height
    return np.stack([apex, base + hw * left, base - hw * left])


def triangle_mask(v: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(h, w) bool``: pixels whose centre lies inside the triangle ``v`` (3, 2)."""
    ys, xs = np.mgrid[0:h, 0:w]
    p = np.stack([xs + 0.5, ys + 0.5], -1)

    def side(a, b):
        return (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])

    s0, s1, s2 = side(v[0], v[1]), side(v[1], v[2]), side(v[2], v[0])
    return ((s0 >= 0) & (s1 >= 0) & (s2 >= 0)) | ((s0 <= 0) & (s1 <= 0) & (s2 <= 0))


def make_keypoint_shapes(num_images: int, seed: int, *, image_size: int = 96,
                         max_shapes: int = 3, min_size: float = 24.0, max_size: float = 40.0):
    """Generate the keypoint shapes data set.

    Args:
        num_images: number of images (>= 1).
        seed: the only source of randomness.
        image_size: height and width of every image, pixels.
        max_shapes: triangles per image (1..max_shapes, fewer when one does not fit).
        min_size, max_size: triangle height range, pixels.

    Returns:
        ``(images, coco)``: ``images`` maps image id -> ``(H, W, 3) uint8`` RGB; ``coco`` a COCO
        keypoints dict (compressed RLE segmentations, ``bbox``, ``area``, ``keypoints`` x, y, 2
        per keypoint, ``num_keypoints`` 3, ``iscrowd`` 0; category :data:`KEYPOINT_CATEGORY`).

    Raises:
        ValueError: num_images < 1 or a size range that does not fit the image.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 4 <= min_size <= max_size < image_size - 4:
        raise ValueError(f"need 4 <= min_size <= max_size < image_size - 4, got {min_size}, "
                         f"{max_size}, {image_size}")
    rng = np.random.default_rng(seed)
    h = w = int(image_size)
    images, records, annotations = {}, [], []
    for image_id in range(1, num_images + 1):
        bg = rng.integers(0, 256, size=3)
        image = bg[None, None, :] + rng.normal(0.0, 6.0, size=(h, w, 3))
        taken = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            for _try in range(20):
                size = float(rng.uniform(min_size, max_size))
                theta = float(rng.uniform(0, 2 * math.pi))
                cx, cy = (float(v) for v in rng.uniform(size * 0.7, w - size * 0.7, 2))
                v = triangle_vertices(cx, cy, size, theta)
                if v.min() < 1 or v.max() > w - 1:
                    continue
                m = triangle_mask(v, h, w)
                grown = m.copy()  # keep 2 px between triangles
                for dy in (-2, 0, 2):
                    for dx in (-2, 0, 2):
                        grown |= np.roll(np.roll(m, dy, 0), dx, 1)
                if m.sum() < 20 or (grown & taken).any():
                    continue
                while True:
                    colour = rng.integers(0, 256, size=3)
                    if np.abs(colour - bg).mean() >= 60:
                        break
                image[m] = colour
                taken |= grown
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                kp = []
                centroid = v.mean(axis=0)
                for corner in v:
                    x, y = corner + INSET * (centroid - corner) / np.linalg.norm(centroid - corner)
                    kp += [float(x), float(y), 2]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                    "segmentation": rle, "area": float(m.sum()),
                    "bbox": [float(b) for b in mask_utils.toBbox(rle)], "iscrowd": 0,
                    "keypoints": kp, "num_keypoints": 3,
                })
                break
        images[image_id] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        records.append({"id": image_id, "file_name": f"kpshapes_{image_id:04d}.png",
                        "height": h, "width": w})
    coco = {"info": {"description": f"minimaskrcnn synthetic keypoint triangles, seed {seed}"},
            "images": records, "annotations": annotations,
            "categories": [dict(KEYPOINT_CATEGORY)]}
    return images, coco


def keypoint_shapes_dataset(num_images: int, seed: int, **kwargs) -> CocoDataset:
    """An in-memory :class:`CocoDataset` of :func:`make_keypoint_shapes` (same arguments)."""
    images, coco = make_keypoint_shapes(num_images, seed, **kwargs)
    return CocoDataset(coco, images=images)
