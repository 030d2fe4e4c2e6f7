"""Label images: instance segmentations as microscopy tools exchange them.

A label image is ``(H, W)`` integers, 0 for background and one value per instance, the format of
CellProfiler, Cellpose (``*_masks.png`` / ``.tif``), StarDist, napari's Labels layer and Fiji's
label maps. Here instance ``i`` (1-based) is the ``i``-th detection in decreasing score order,
so value ``i`` of the PNG is detection ``i`` of the image's COCO results sorted by score; where
masks overlap the pixel goes to the higher score (ties to the earlier detection). A detection
whose every pixel a higher-scoring one took keeps its number but has no pixel: the values of a
label image need not be contiguous.

    labels = label_image(pred["masks"], pred["scores"])     # (H, W) uint16
    write_label_png("out/0001_image.labels.png", labels)    # 16-bit grey PNG

Written as 16-bit greyscale PNG (Pillow mode ``"I;16"``: bit depth 16, colour type 0), the
PNG kind that Pillow, imageio, scikit-image and OpenCV (``IMREAD_UNCHANGED``) read as
``uint16``: at most 65535 instances an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from minimaskrcnn._atomic import open_atomic
from minimaskrcnn.data.coco import rle_string_counts

__all__ = ["MAX_LABELS", "clean_labels", "label_image", "read_label_png", "write_label_png"]

MAX_LABELS = 65535
"""The most instances a 16-bit label image numbers."""


def label_image(masks: np.ndarray | Sequence[dict], scores: np.ndarray | Sequence[float], *,
                image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The label image of one image's instances.

    Args:
        masks: ``(N, H, W)`` bool or integer masks (a pixel is in where ``!= 0``; torchvision's
            ``(N, 1, H, W)`` is accepted too), or a list of N COCO RLE dicts (``predict``'s
            ``mask_format="rle"``: read from their runs, so memory and time follow the masks'
            areas, not ``N * H * W``).
        scores: ``(N,)`` finite scores, any order.
        image_size: ``(H, W)``; needed only for an empty list of RLEs (an array carries it);
            must agree with the masks when given.

    Returns:
        ``(H, W) uint16``: 0 background, ``i`` (1..N) where the ``i``-th highest-scoring mask
        is the highest-scoring mask covering the pixel (equal scores: the earlier mask first).

    Raises:
        ValueError: more than :data:`MAX_LABELS` instances; ``scores`` not ``(N,)`` finite
            numbers; masks of another shape or of sizes that differ; a float mask array (pass
            ``masks >= threshold``); an RLE whose runs do not cover its size; no size for an
            empty list of RLEs.

    Matches Cellpose's and StarDist's label images (0 background, 1..N instances, uint16),
    with the numbering of the scores' order (Detectron2's ``instances`` sorted by score).
    """
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.dtype.kind not in "biuf" or not np.isfinite(scores).all():
        raise ValueError(f"scores must be (N,) finite numbers, got {scores.dtype} array of shape "
                         f"{scores.shape}")
    n = scores.shape[0]
    if n > MAX_LABELS:
        raise ValueError(f"{n} instances: a 16-bit label image numbers at most {MAX_LABELS}; "
                         "raise the score threshold or keep fewer detections")
    if isinstance(masks, np.ndarray):
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W) (or (N, 1, H, W)), got shape {masks.shape}")
        if masks.dtype.kind not in "biu":
            raise ValueError(f"masks must be bool or integers, got {masks.dtype} (threshold "
                             "probabilities first: masks >= 0.5)")
        size = masks.shape[1:]
        count = masks.shape[0]

        def get(k: int) -> np.ndarray:
            return np.flatnonzero(masks[k])
    else:
        masks = list(masks)
        count = len(masks)
        sizes = {tuple(int(v) for v in m["size"]) for m in masks}
        if len(sizes) > 1:
            raise ValueError(f"the RLE masks have different sizes: {sorted(sizes)}")
        if not sizes and image_size is None:
            raise ValueError("an empty list of RLE masks needs image_size=(H, W)")
        size = sizes.pop() if sizes else tuple(image_size)

        def get(k: int) -> np.ndarray:
            return _rle_pixels(masks[k], *size)
    if count != n:
        raise ValueError(f"{count} masks but {n} scores")
    if image_size is not None and tuple(image_size) != tuple(size):
        raise ValueError(f"image_size {tuple(image_size)} differs from the masks' {tuple(size)}")
    labels = np.zeros(size, dtype=np.uint16)
    flat = labels.reshape(-1)  # a view: writes land in labels
    for value, k in enumerate(np.argsort(-scores.astype(np.float64), kind="stable"), start=1):
        pixels = get(int(k))
        flat[pixels[flat[pixels] == 0]] = value  # only pixels no higher score took
    return labels


def clean_labels(labels: np.ndarray, *, fill_holes: bool = False,
                 largest_component: bool = False, min_area: int = 0) -> np.ndarray:
    """Post-process a label image's instances, each on its own (the DSB2018 solutions' last
    step: filled holes, no fragments, no specks).

    In this order, for each instance value v > 0:

    1. ``fill_holes``: background pixels (0) that v's pixels enclose become v
       (``scipy.ndimage.binary_fill_holes``; another instance inside v stays itself);
    2. ``largest_component``: only v's largest 8-connected piece stays (ties: the first piece
       in C order); the other pieces become background;
    3. ``min_area``: v is removed (background) if fewer than ``min_area`` pixels are left.

    Values are kept (a removed instance leaves its number unused, as :func:`label_image`'s
    empty instances do). With every option off the labels come back unchanged (a copy).

    Args:
        labels: ``(H, W)`` non-negative integers, 0 background.
        fill_holes, largest_component, min_area: the steps above (``min_area`` in pixels, >= 0).

    Returns:
        ``(H, W)`` of ``labels``' dtype.

    Raises:
        ValueError: not an ``(H, W)`` integer array, negative values, or ``min_area < 0``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be an (H, W) integer array, got {labels.dtype} of shape "
                         f"{labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    if not (isinstance(min_area, (int, np.integer)) and min_area >= 0):
        raise ValueError(f"min_area must be an integer >= 0, got {min_area!r}")
    out = labels.copy()
    if not (fill_holes or largest_component or min_area) or not out.any():
        return out
    eight = np.ones((3, 3), dtype=bool)
    h, w = out.shape
    for v, box in enumerate(ndimage.find_objects(out), start=1):
        if box is None:
            continue
        # one pixel of margin so that a hole touching the box's edge is seen as enclosed only
        # when it is
        ys = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, h))
        xs = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, w))
        win = out[ys, xs]  # a view: writes land in out
        mine = win == v
        if fill_holes:
            holes = ndimage.binary_fill_holes(mine) & (win == 0)
            win[holes] = v
            mine |= holes
        if largest_component:
            pieces, n = ndimage.label(mine, structure=eight)
            if n > 1:
                sizes = np.bincount(pieces.ravel())[1:]
                keep = 1 + int(np.argmax(sizes))
                win[mine & (pieces != keep)] = 0
                mine = pieces == keep
        if min_area and int(mine.sum()) < min_area:
            win[mine] = 0
    return out


def _rle_pixels(rle: dict, height: int, width: int) -> np.ndarray:
    """C-order flat indices of an RLE's pixels (compressed or uncompressed counts), from its
    runs without decoding the whole image: the cost is the mask's area, not ``H * W``.

    COCO runs alternate background / foreground over the pixels in column-major order (the
    first run is background, possibly 0 long).
    """
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = (rle_string_counts(counts) if isinstance(counts, str)
            else np.asarray(counts, dtype=np.int64))
    if (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(f"RLE runs must be non-negative and sum to {height} * {width}")
    starts = np.cumsum(runs) - runs
    fg_starts, fg_lengths = starts[1::2], runs[1::2]
    total = int(fg_lengths.sum())
    # index j of the foreground pixels lies in run r: fg_starts[r] + (j - pixels before run r)
    before = np.cumsum(fg_lengths) - fg_lengths
    column_major = np.arange(total) + np.repeat(fg_starts - before, fg_lengths)
    col, row = np.divmod(column_major, height)
    return row * width + col


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a 16-bit greyscale PNG, atomically (a kill leaves the old file or
    the new one).

    Args:
        path: the PNG to write (its folder must exist).
        labels: ``(H, W)`` non-negative integers <= 65535 (uint16 as :func:`label_image` makes).

    Raises:
        ValueError: not a 2D integer array, or values outside 0..65535.
        OSError: the file cannot be written.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be an (H, W) integer array, got {labels.dtype} of shape "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABELS):
        raise ValueError(f"label values must be in 0..{MAX_LABELS}, got {labels.min()}.."
                         f"{labels.max()}")
    # Pillow maps a uint16 array to mode "I;16", saved as a 16-bit greyscale PNG
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16))
    with open_atomic(os.fspath(path), "wb") as f:
        img.save(f, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (as :func:`write_label_png` writes) into ``(H, W) uint16``.

    Raises:
        ValueError: the PNG is not single-channel 8 or 16 bit (a colour image is not labels).
        OSError: the file is missing or unreadable.
    """
    with Image.open(os.fspath(path)) as img:
        img.load()
        if img.mode not in ("I;16", "I;16B", "I", "L", "1"):
            raise ValueError(f"{os.fspath(path)}: a {img.mode} image, not a label image "
                             "(single-channel 8 or 16 bit)")
        arr = np.asarray(img)
    if arr.dtype.kind == "i" and (arr.min(initial=0) < 0 or arr.max(initial=0) > MAX_LABELS):
        raise ValueError(f"{os.fspath(path)}: values outside 0..{MAX_LABELS}")
    return arr.astype(np.uint16)
