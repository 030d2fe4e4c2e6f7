"""Training and inference transforms of the presets (``docs/nuclei-mini.md``, "Input").

Training: one random ``crop_size`` x ``crop_size`` crop per image (zero padding at the bottom /
right when the image is smaller), horizontal flip with ``hflip_prob``, vertical flip with
``vflip_prob``. Instances whose mask is empty inside the crop are dropped; boxes are recomputed
from the cropped masks as ``[x_min, y_min, x_max + 1, y_max + 1]``. A crop with no instance left
is redrawn (at most ``max_tries`` windows; after that, or for an image without instances, the
last crop is returned with empty targets).

Keypoints (a target with ``keypoints (G, K, 3)`` ``[x, y, v]``) move with the crop
(``x - x0``, ``y - y0``; a keypoint outside the crop window becomes ``0, 0, 0``, not labelled) and
are mirrored with the image (``x -> crop - x`` for pixel-edge coordinates: pixel j covers
``[j, j + 1)``); a mirror image swaps left and right, so the flip pairs (``flip_pairs``: COCO
names ``left_x`` / ``right_x``, :func:`minimaskrcnn.data.coco.flip_pairs`; lego-battery's
``top-left`` / ``top-right``) exchange places. A dataset without left/right names only mirrors
coordinates.

Both training and inference then standardise per image: ``(x - x.mean()) / (x.std() + 1e-6)``
over all pixels and channels, and move channels first: ``(3, H, W) float32``.

Random draws, in this order, all from the ``rng`` argument: for each try the crop row offset
then the column offset (``rng.integers``), then the horizontal and vertical flip
(``rng.random()`` each, drawn even when a probability is 0 or 1). :func:`random_crop_flip` (a
decoded target) and :func:`sample_crop` (a dataset, decoding only the masks near the window)
consume the same draws and return the same crop.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.data.coco import CocoDataset, masks_to_boxes

__all__ = ["standardize", "random_crop_flip", "sample_crop", "crop_keypoints", "flip_keypoints",
           "MAX_CROP_TRIES"]

MAX_CROP_TRIES = 10
"""Crop windows drawn before giving up on finding an instance."""


def standardize(image: np.ndarray) -> np.ndarray:
    """Per-image standardisation, channels first.

    Args:
        image: ``(H, W, 3) uint8`` RGB.

    Returns:
        ``(3, H, W) float32``, ``(x - mean) / (std + 1e-6)`` with the mean and (population)
        standard deviation over all pixels and channels, computed in float64.

    Raises:
        ValueError: not an ``(H, W, 3)`` array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    x = image.astype(np.float64)
    x = (x - x.mean()) / (x.std() + 1e-6)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _draw_window(h: int, w: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    y0 = int(rng.integers(0, max(h - crop, 0) + 1))
    x0 = int(rng.integers(0, max(w - crop, 0) + 1))
    return y0, x0


def _crop_image(image: np.ndarray, y0: int, x0: int, crop: int) -> np.ndarray:
    h, w = image.shape[:2]
    out = np.zeros((crop, crop, image.shape[2]), dtype=image.dtype)
    hh, ww = min(crop, h - y0), min(crop, w - x0)
    out[:hh, :ww] = image[y0:y0 + hh, x0:x0 + ww]
    return out


def _pad_masks(masks: np.ndarray, crop: int) -> np.ndarray:
    """``(G, h, w)`` masks already cut to the window -> ``(G, crop, crop)`` zero-padded."""
    g, h, w = masks.shape
    if (h, w) == (crop, crop):
        return masks
    out = np.zeros((g, crop, crop), dtype=np.uint8)
    out[:, :h, :w] = masks
    return out


def crop_keypoints(keypoints, y0: int, x0: int, crop: int) -> np.ndarray:
    """``(G, K, 3)`` keypoints moved into the window at ``(y0, x0)``; those outside the
    ``crop x crop`` window (or not labelled) become ``0, 0, 0``."""
    kp = np.array(keypoints, dtype=np.float32).reshape(-1, keypoints.shape[1], 3)
    kp[..., 0] -= x0
    kp[..., 1] -= y0
    inside = ((kp[..., 0] >= 0) & (kp[..., 0] <= crop) & (kp[..., 1] >= 0) & (kp[..., 1] <= crop)
              & (kp[..., 2] > 0))
    kp[~inside] = 0
    return kp


def flip_keypoints(keypoints, size: int, axis: int, pairs=()) -> np.ndarray:
    """Mirror ``(G, K, 3)`` keypoints of a ``size``-pixel axis (``axis`` 0: x, 1: y) and swap the
    left/right ``pairs``; keypoints not labelled stay ``0, 0, 0``."""
    kp = np.array(keypoints, dtype=np.float32)
    labelled = kp[..., 2] > 0
    kp[..., axis] = np.where(labelled, size - kp[..., axis], 0)
    for i, j in pairs:
        kp[:, [i, j]] = kp[:, [j, i]]
    return kp


def _finish(image, masks, labels, image_id, hflip, vflip, keypoints=None, pairs=()):
    """Flip, drop nothing more, recompute boxes; return (image, target)."""
    if hflip:
        image = image[:, ::-1]
        masks = masks[:, :, ::-1]
        if keypoints is not None:
            keypoints = flip_keypoints(keypoints, image.shape[1], 0, pairs)
    if vflip:
        image = image[::-1]
        masks = masks[:, ::-1]
        if keypoints is not None:
            keypoints = flip_keypoints(keypoints, image.shape[0], 1, pairs)
    image = np.ascontiguousarray(image)
    masks = np.ascontiguousarray(masks)
    target = {"boxes": masks_to_boxes(masks), "labels": labels, "masks": masks,
              "image_id": image_id}
    if keypoints is not None:
        target["keypoints"] = keypoints
    return image, target


def random_crop_flip(image: np.ndarray, target: dict, crop_size: int, hflip_prob: float,
                     vflip_prob: float, rng: np.random.Generator, *,
                     max_tries: int = MAX_CROP_TRIES, flip_pairs=()):
    """Random crop (zero pad when smaller) and flips of one training image.

    Args:
        image: ``(H, W, 3) uint8``.
        target: dict with ``masks (G, H, W) uint8`` and ``labels (G,) int64`` (boxes are
            recomputed; other keys except ``image_id`` and ``keypoints (G, K, 3)`` are not
            carried over).
        crop_size: side of the square crop, pixels.
        hflip_prob, vflip_prob: flip probabilities.
        rng: the generator driving every draw (see the module docstring for the order).
        max_tries: crop windows drawn before accepting one without instances.
        flip_pairs: left/right keypoint pairs ``(i, j)`` swapped by a flip (see the module).

    Returns:
        ``(image (crop, crop, 3) uint8, target)`` with ``boxes (G', 4) float32``,
        ``labels (G',) int64``, ``masks (G', crop, crop) uint8``, ``image_id``, and
        ``keypoints (G', K, 3) float32`` in crop pixels when the target has keypoints.
    """
    h, w = image.shape[:2]
    masks, labels = target["masks"], np.asarray(target["labels"], dtype=np.int64)
    for _ in range(max_tries):
        y0, x0 = _draw_window(h, w, crop_size, rng)
        cut = masks[:, y0:y0 + crop_size, x0:x0 + crop_size]
        keep = cut.reshape(cut.shape[0], cut.shape[1] * cut.shape[2]).any(axis=1)
        if keep.any() or masks.shape[0] == 0:
            break
    hflip = rng.random() < hflip_prob
    vflip = rng.random() < vflip_prob
    kp = target.get("keypoints")
    kp = None if kp is None else crop_keypoints(np.asarray(kp)[keep], y0, x0, crop_size)
    return _finish(_crop_image(image, y0, x0, crop_size), _pad_masks(cut[keep], crop_size),
                   labels[keep], target.get("image_id"), hflip, vflip, kp, flip_pairs)


def sample_crop(dataset: CocoDataset, index: int, crop_size: int, hflip_prob: float,
                vflip_prob: float, rng: np.random.Generator, *,
                max_tries: int = MAX_CROP_TRIES):
    """:func:`random_crop_flip` of ``dataset[index]`` without decoding every mask at full size.

    Only annotations whose box meets the crop window are decoded; same draws, same result as
    ``random_crop_flip(*dataset[index], ..., flip_pairs=dataset.keypoint_flip_pairs)``:
    ``(image (crop, crop, 3) uint8, target)``, the target as :func:`random_crop_flip` returns it
    (with ``keypoints`` when the dataset has keypoints). ``crop_size`` in pixels.

    Raises:
        IndexError: ``index`` out of range.
        DatasetError: the image file is missing, unreadable or not of the annotated size.
    """
    image = dataset.load_image(index)
    h, w = image.shape[:2]
    anns = dataset.annotations(index)
    boxes = np.array([dataset.ann_box(index, a) for a in anns]).reshape(-1, 4)
    for _ in range(max_tries):
        y0, x0 = _draw_window(h, w, crop_size, rng)
        y1, x1 = min(y0 + crop_size, h), min(x0 + crop_size, w)
        near = np.flatnonzero((boxes[:, 0] < x1) & (boxes[:, 2] > x0)
                              & (boxes[:, 1] < y1) & (boxes[:, 3] > y0))
        cut = dataset.decode_masks(index, [anns[i] for i in near], (y0, x0, y1, x1))
        keep = cut.reshape(cut.shape[0], cut.shape[1] * cut.shape[2]).any(axis=1)
        if keep.any() or not anns:
            break
    labels = np.array([dataset.label_of(anns[i]) for i in near[keep]], dtype=np.int64)
    hflip = rng.random() < hflip_prob
    vflip = rng.random() < vflip_prob
    kp = None
    if getattr(dataset, "num_keypoints", 0):
        kp = crop_keypoints(dataset.ann_keypoints([anns[i] for i in near[keep]]), y0, x0,
                            crop_size)
    return _finish(_crop_image(image, y0, x0, crop_size), _pad_masks(cut[keep], crop_size),
                   labels, int(dataset.image_ids[index]), hflip, vflip, kp,
                   getattr(dataset, "keypoint_flip_pairs", ()))
