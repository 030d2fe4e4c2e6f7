"""The model's input and output transform: images in, a padded batch to the network; detections
out, in the input images' pixels (torchvision ``models/detection/transform.py``:
``GeneralizedRCNNTransform``, ``ImageList``, ``resize_boxes``, ``resize_keypoints``).

Shape shorthand: N images, (h_i, w_i) image i's own size, (H, W) the padded batch size (the
largest h and w rounded up to a multiple of ``size_divisible``, 32), D detections of one image,
K keypoint types, M mask size.

In::

    images: N (3, h_i, w_i) float (standardised, :func:`minimaskrcnn.data.standardize`)
      -> [inference, image_scale != 1: each resized bilinearly by image_scale]
      -> zero-padded at the bottom and right -> ImageList(tensors (N, 3, H, W), image_sizes)
    targets (training): checked against the images, copied to the parameters' device

Out (:meth:`GeneralizedRCNNTransform.postprocess`, inference)::

    boxes and keypoints: from the network's pixels (h_i, w_i) to the input image's
    masks: (D, M, M) probabilities pasted into the input image at the rescaled boxes and
        thresholded (ops.paste_binary_masks; torchvision's postprocess pastes the same way)

Scale (``ModelConfig.image_scale`` s, 1 in the presets): the network sees every image resized by
s, :func:`scaled_size` ``floor(h s) x floor(w s)`` (torchvision's ``interpolate(scale_factor=s,
recompute_scale_factor=True)``), bilinearly with ``align_corners=False``
(:func:`resize_bilinear`). Only inference resizes here: training crops are cut from the scaled
images by the data path (:mod:`minimaskrcnn.data.transforms`, which resamples only the pixels
under a crop window with the same taps, :func:`bilinear_taps`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minimaskrcnn import backend, ops

__all__ = ["MASK_FORMATS", "GeneralizedRCNNTransform", "ImageList", "bilinear_taps", "resample_bilinear",
           "resize_bilinear", "resize_boxes", "resize_keypoints", "scaled_size"]


# --------------------------------------------------------------------------------------------
# resizing (image_scale)


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(floor(h * scale), floor(w * scale))``, at least 1 x 1: the size the network sees an
    ``h x w`` image at (torchvision's ``recompute_scale_factor=True`` size).

    Raises:
        ValueError: ``scale`` not a finite number > 0.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"image scale must be a finite number > 0, got {scale!r}")
    return max(1, int(math.floor(h * scale))), max(1, int(math.floor(w * scale)))


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling of one axis from ``n_in`` to ``n_out`` pixels, ``align_corners=False``
    (PyTorch ``interpolate(mode="bilinear")``): output pixel i reads input pixels ``lo[i]`` and
    ``hi[i]`` with weights ``1 - frac[i]`` and ``frac[i]``, where the source coordinate
    ``(i + 0.5) * n_in / n_out - 0.5`` is clamped at 0 and ``hi`` at ``n_in - 1``.

    Returns:
        ``(lo (n_out,) int64, hi (n_out,) int64, frac (n_out,) float64)``.
    """
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def resample_bilinear(x, taps_y, taps_x, axes):
    """Resample ``x`` along its ``axes = (row axis, column axis)`` with the given
    :func:`bilinear_taps` (rows first). ``x`` NumPy or CuPy, float; the taps are NumPy and are
    moved to ``x``'s module. Returns an array of ``x``'s dtype and module."""
    xp = backend.get_array_module(x)
    out = x
    for (lo, hi, frac), axis in zip((taps_y, taps_x), axes, strict=True):
        shape = [1] * out.ndim
        shape[axis] = -1
        f = xp.asarray(frac.reshape(shape), dtype=out.dtype)
        lo_v = xp.take(out, xp.asarray(lo), axis=axis)
        hi_v = xp.take(out, xp.asarray(hi), axis=axis)
        out = lo_v + (hi_v - lo_v) * f
    return out


def resize_bilinear(image, size: tuple[int, int]):
    """Bilinear resize of ``(C, H, W)`` float images (the model's input at ``image_scale``).

    Args:
        image: ``(C, H, W)`` float32/float64, NumPy or CuPy.
        size: ``(H_out, W_out)``.

    Returns:
        ``(C, H_out, W_out)``, same dtype and array module (:func:`bilinear_taps` on each axis,
        rows first).
    """
    _, h, w = image.shape
    return resample_bilinear(image, bilinear_taps(h, size[0]), bilinear_taps(w, size[1]), (1, 2))


def resize_boxes(boxes, original_size: tuple[int, int], new_size: tuple[int, int]):
    """Boxes of an image resized from ``original_size`` to ``new_size`` (torchvision
    ``transform.resize_boxes``): x times ``new_w / orig_w``, y times ``new_h / orig_h``.

    Args:
        boxes: ``(D, 4)`` float ``[x1, y1, x2, y2]`` pixels of the original image, NumPy or CuPy.
        original_size, new_size: ``(h, w)`` in pixels.

    Returns:
        a new ``(D, 4)`` array of the same dtype and array module.
    """
    out = boxes.copy()
    out[:, 0::2] *= new_size[1] / original_size[1]
    out[:, 1::2] *= new_size[0] / original_size[0]
    return out


def resize_keypoints(keypoints, original_size: tuple[int, int], new_size: tuple[int, int]):
    """Keypoints ``[x, y, v]`` of an image resized from ``original_size`` to ``new_size``
    (torchvision ``transform.resize_keypoints``): x times ``new_w / orig_w``, y times
    ``new_h / orig_h``, ``v`` unchanged.

    Args:
        keypoints: ``(D, K, 3)`` float, NumPy or CuPy.
        original_size, new_size: ``(h, w)`` in pixels.

    Returns:
        a new ``(D, K, 3)`` array of the same dtype and array module.
    """
    out = keypoints.copy()
    out[..., 0] *= new_size[1] / original_size[1]
    out[..., 1] *= new_size[0] / original_size[0]
    return out


# --------------------------------------------------------------------------------------------
# the transform


MASK_FORMATS = ("bool", "rle", "roi")
"""What ``predict`` returns as ``masks``: dense booleans, COCO RLEs, or the unpasted ``M x M``
probabilities."""


class ImageList(NamedTuple):
    """A padded batch and the size of each image in it (torchvision ``ImageList``).

    tensors: ``(N, 3, H, W)`` float, zero-padded at the bottom and right; H and W multiples of
    ``size_divisible`` (``tensors.shape[-2:]`` is the padded size the anchors and the poolers
    use). image_sizes: the N ``(h_i, w_i)`` of the images before padding (proposals and
    detections are clipped to them)."""

    tensors: object
    image_sizes: list


class GeneralizedRCNNTransform:
    """Batching, target checks, the ``image_scale`` resize and the postprocess of the
    detections (torchvision ``GeneralizedRCNNTransform``, without its resize to ``min_size``
    and its normalisation: images come standardised, :func:`minimaskrcnn.data.standardize`).

    ``transform(images, targets=None, dtype=..., xp=...) -> (ImageList, targets)``;
    ``postprocess(detections, image_sizes, original_sizes, mask_format)`` -> detections in the
    input images' pixels.

    Args:
        size_divisible: H and W of the padded batch are multiples of it (32).
        image_scale: inference resizes each image by it (1: not at all).
        num_classes: K; target labels must lie in 1..K.
        num_keypoints: K keypoint types (0: no keypoint head, targets need no ``keypoints``).
        mask_threshold: pasted mask probabilities ``>=`` it are in the mask.
        mask_on: the model has a mask head: targets need ``masks`` (without one they are
            neither checked nor copied).
    """

    def __init__(self, size_divisible: int, image_scale: float, num_classes: int,
                 num_keypoints: int = 0, mask_threshold: float = 0.5, mask_on: bool = True):
        self.size_divisible = size_divisible
        self.image_scale = image_scale
        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.mask_threshold = mask_threshold
        self.mask_on = mask_on

    def __call__(self, images, targets=None, *, dtype=np.float32, xp=np):
        """Images -> :class:`ImageList`, and the checked targets.

        With ``targets`` (training), the images are padded as they are: the data path already
        cut the crops from images scaled by ``image_scale``; the targets are checked
        (:meth:`check_targets`) and copied to ``xp``. Without (inference, ``targets=None``), each
        image is first resized by ``image_scale`` (:meth:`resize`).

        Args:
            images: list of N ``(3, h_i, w_i)`` float arrays, NumPy (or CuPy).
            targets: ``None`` or N dicts (see :meth:`check_targets`).
            dtype, xp: dtype and array module of the batch (the parameters'): NumPy images are
                padded on the host and copied to ``xp`` in one transfer.

        Returns:
            ``(ImageList, targets)`` (``targets`` ``None`` when none were given).

        Raises:
            TypeError: not a non-empty list of float NumPy (or CuPy) arrays.
            ValueError: an element not of shape ``(3, h, w)``; malformed targets.
        """
        sizes = self.image_sizes(images)
        if targets is None:
            return self.batch_images(self.resize(images), dtype, xp), None
        targets = self.check_targets(targets, sizes, xp)
        return self.batch_images(images, dtype, xp), targets

    @staticmethod
    def image_sizes(images) -> list[tuple[int, int]]:
        """Validate a list of images; returns their ``(h_i, w_i)``.

        Raises:
            TypeError: not a non-empty list of float NumPy (or CuPy) arrays.
            ValueError: an element not of shape ``(3, h, w)``.
        """
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise TypeError("images must be a non-empty list of (3, H, W) float arrays")
        sizes = []
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray) and not backend.is_cupy_array(im):
                raise TypeError(f"images[{i}] must be a numpy array (3, H, W), got "
                                f"{type(im).__name__}")
            if im.ndim != 3 or im.shape[0] != 3 or im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}] must have shape (3, H, W), got {im.shape}")
            if not np.issubdtype(im.dtype, np.floating):
                raise TypeError(f"images[{i}] must be a float array (standardised), got {im.dtype}")
            sizes.append((int(im.shape[1]), int(im.shape[2])))
        return sizes

    def resize(self, images):
        """Each ``(3, h, w)`` image resized to :func:`scaled_size` ``(h, w, image_scale)``
        (:func:`resize_bilinear`); the list itself when ``image_scale`` is 1."""
        if self.image_scale == 1:
            return images
        return [resize_bilinear(im, scaled_size(im.shape[1], im.shape[2], self.image_scale))
                for im in images]

    def batch_images(self, images, dtype=np.float32, xp=np) -> ImageList:
        """Zero-pad validated images to ``(N, 3, H, W)`` of ``dtype`` (torchvision
        ``batch_images``), H and W the largest sizes rounded up to ``size_divisible``; padded
        where the images are and copied to ``xp`` once."""
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisible
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        xp_in = backend.get_array_module(*images)  # pad where the images are
        batch = xp_in.zeros((len(images), 3, hp, wp), dtype)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = backend.to_device(im, xp_in)
        return ImageList(backend.to_device(batch, xp), sizes)

    def check_targets(self, targets, image_sizes, xp=np):
        """Validate the targets against the images; returns them with float32 boxes, int64
        labels (and float32 keypoints), copied to ``xp`` (``masks`` only with a mask head). Checked on the host: NumPy targets,
        as the loader makes them, cost no synchronisation; CuPy targets are copied to the
        host for the checks.

        Args:
            targets: list of N dicts: ``boxes (G_i, 4)`` float ``[x1, y1, x2, y2]`` pixels with
                positive width and height, ``labels (G_i,)`` integers in 1..K; with ``mask_on``
                ``masks (G_i, h_i, w_i)`` uint8; with ``num_keypoints`` K > 0 also ``keypoints (G_i, K, 3)``
                finite ``[x, y, v]``. ``G_i = 0`` is allowed.
            image_sizes: the N ``(h_i, w_i)``.

        Raises:
            ValueError: naming the target and the field: not N dicts, a missing field, a wrong
                shape, a label outside 1..K, a NaN/inf box or keypoint, a box with zero or
                negative width or height.
        """
        if not isinstance(targets, (list, tuple)) or len(targets) != len(image_sizes):
            raise ValueError(f"targets must be a list of {len(image_sizes)} dicts (one per image)")
        out = []
        k = self.num_classes
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes, strict=True)):
            needed = {"boxes", "labels", "masks"} if self.mask_on else {"boxes", "labels"}
            if not isinstance(t, dict) or not needed <= set(t):
                raise ValueError(f"targets[{i}] must be a dict with boxes, labels"
                                 + (" and masks" if self.mask_on else ""))
            boxes = backend.to_numpy(t["boxes"])
            labels = backend.to_numpy(t["labels"])
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"targets[{i}]['boxes'] must have shape (G, 4), got {boxes.shape}")
            g = boxes.shape[0]
            if labels.shape != (g,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"targets[{i}]['labels'] must be ({g},) integers, got "
                                 f"{labels.shape} {labels.dtype}")
            if g and (labels.min() < 1 or labels.max() > k):
                raise ValueError(f"targets[{i}]['labels'] must lie in 1..{k}, got "
                                 f"{labels.min()}..{labels.max()}")
            masks = backend.to_numpy(t["masks"]) if self.mask_on else None
            if self.mask_on and masks.shape != (g, h, w):
                raise ValueError(f"targets[{i}]['masks'] must have shape (G, H, W) = {(g, h, w)} "
                                 f"to match boxes and images[{i}], got {masks.shape}")
            if not np.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")
            bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
            if bad.size:  # torchvision raises too ("All bounding boxes should have positive ...")
                raise ValueError(f"targets[{i}]['boxes'][{bad[0]}] = {boxes[bad[0]].tolist()} has "
                                 "zero or negative width or height: remove degenerate boxes first")
            checked = {"boxes": boxes.astype(np.float32), "labels": labels.astype(np.int64)}
            if self.mask_on:
                checked["masks"] = masks
            if self.num_keypoints:
                checked["keypoints"] = self._check_keypoints(i, t, g)
            out.append(checked)
        return backend.to_device(out, xp)

    def _check_keypoints(self, i: int, target: dict, g: int):
        """Target ``i``'s ``(G, K, 3)`` keypoints as float32 (host)."""
        if "keypoints" not in target:
            raise ValueError(f"targets[{i}] needs 'boxes' and 'keypoints' (G, K, 3): the model has "
                             "a keypoint head (num_keypoints > 0)")
        kp = backend.to_numpy(target["keypoints"])
        if kp.shape != (g, self.num_keypoints, 3):
            raise ValueError(f"targets[{i}]['keypoints'] must have shape (G, K, 3) = "
                             f"{(g, self.num_keypoints, 3)} (K = num_keypoints of the model), "
                             f"got {kp.shape}")
        if not np.issubdtype(kp.dtype, np.number) or not np.isfinite(kp).all():
            raise ValueError(f"targets[{i}]['keypoints'] must be finite numbers [x, y, v]")
        return kp.astype(np.float32)

    def postprocess(self, detections, image_sizes, original_sizes, *, mask_format="bool"):
        """Detections of the network's images -> detections of the input images (torchvision
        ``GeneralizedRCNNTransform.postprocess``), in place.

        Args:
            detections: N dicts ``boxes (D, 4)`` pixels of the network's image, optional
                ``masks (D, M, M)`` float32 probabilities (the mask head's) and ``keypoints (D,
                K, 3)``.
            image_sizes: the N ``(h_i, w_i)`` the network saw (:class:`ImageList`).
            original_sizes: the N input ``(h_i, w_i)``.
            mask_format: ``"bool"``: ``masks (D, h, w) bool`` (pasted probability ``>=
                mask_threshold``); ``"rle"``: a list of D COCO run-length encodings, pasted a few
                masks at a time so that memory is bounded by the image; ``"roi"``: the ``(D, M,
                M)`` probabilities as they are (not pasted; the boxes are the input image's).

        Returns:
            the detections: boxes and keypoints scaled by ``original / image_sizes`` per axis
            (:func:`resize_boxes`, :func:`resize_keypoints`), masks pasted into the input images
            at the scaled boxes (:func:`minimaskrcnn.ops.paste_binary_masks`).
        """
        for d, size, original in zip(detections, image_sizes, original_sizes, strict=True):
            d["boxes"] = resize_boxes(d["boxes"], size, original)
            if "masks" in d and mask_format != "roi":
                d["masks"] = ops.paste_binary_masks(d["masks"], d["boxes"], original,
                                                    self.mask_threshold,
                                                    rle=(mask_format == "rle"))
            if "keypoints" in d:
                d["keypoints"] = resize_keypoints(d["keypoints"], size, original)
        return detections
