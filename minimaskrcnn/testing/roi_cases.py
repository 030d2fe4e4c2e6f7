"""Random inputs for the RoI op tests and notebooks (feature maps and awkward boxes).

``random_rois`` mixes the cases the RoI ops must get right: boxes inside the map, partly or
wholly outside it, of zero width or height, smaller than one bin, and inverted (x2 < x1).
"""

from __future__ import annotations

import numpy as np


def random_rois(rng: np.random.Generator, num_images: int, height: int, width: int,
                num_rois: int, spatial_scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    """``(R, 5)`` ``[batch_idx, x1, y1, x2, y2]`` in input pixels for an ``H x W`` feature map.

    The map spans ``[0, W / spatial_scale] x [0, H / spatial_scale]`` input pixels; boxes reach
    2 cells beyond it on every side.
    """
    W, H = width / spatial_scale, height / spatial_scale
    pad = 2.0 / spatial_scale
    x1 = rng.uniform(-pad, W + pad, num_rois)
    y1 = rng.uniform(-pad, H + pad, num_rois)
    w = rng.uniform(0, W, num_rois)
    h = rng.uniform(0, H, num_rois)
    kind = rng.integers(0, 6, num_rois)
    w = np.where(kind == 1, 0.0, w)                   # zero width
    h = np.where(kind == 2, 0.0, h)                   # zero height
    w = np.where(kind == 3, 0.3 / spatial_scale, w)   # smaller than a bin
    w = np.where(kind == 4, -0.7 * w, w)              # inverted
    rois = np.stack([rng.integers(0, num_images, num_rois), x1, y1, x1 + w, y1 + h], axis=1)
    return rois.astype(dtype)


def distinct_map(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """A feature map with pairwise distinct values (no ties for max-based ops)."""
    size = int(np.prod(shape))
    values = (rng.permutation(size) + rng.uniform(0.1, 0.9, size)) / size
    return (values - 0.5).reshape(shape).astype(dtype)
