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

Scale (``ModelConfig.image_scale`` s, 1 by default): the network sees every image resized by s,
``scaled_size`` (:mod:`minimaskrcnn.model.transform`, with the bilinear taps): ``floor(h * s) x
floor(w * s)`` (torchvision ``GeneralizedRCNNTransform``'s ``interpolate(scale_factor=s,
recompute_scale_factor=True)``), the image bilinearly
(``align_corners=False``: output pixel i samples input coordinate ``(i + 0.5) * h / H - 0.5``,
clamped to the image) and the masks by nearest neighbour (output pixel i takes input pixel
``floor(i * h / H)``), as torchvision resizes images and masks. A training crop at s != 1 is cut
from that scaled image (the window is drawn in scaled pixels, ``crop_size`` is in scaled pixels),
resampling only the source pixels under the window; it comes back as float32 (resampled values,
not rounded), and keypoints are scaled by ``W / w`` and ``H / h`` before the crop. At s = 1
nothing is resampled and crops stay uint8.

Both training and inference then standardise per image: ``(x - x.mean()) / (x.std() + 1e-6)``
over all pixels and channels, and move channels first: ``(3, H, W) float32``.

Augmentation beyond crop and flips (:class:`Augmentation`, from ``TrainConfig``; all off by
default): scale jitter (the crop is cut from the image resized by ``image_scale * j``, ``j``
log-uniform), a rotation by ``k`` x 90 degrees after the flips (``np.rot90``: pixel-edge point
``(x, y)`` of a ``c x c`` crop goes to ``(y, c - x)`` per quarter turn, keypoints too, no left /
right swap since a rotation is not a mirror), then a gamma ``255 (x / 255) ** g`` and per-channel
gains on the float image (a global brightness factor would be undone by :func:`standardize`).

Random draws, in this order, all from the ``rng`` argument: the scale jitter ``j``
(``rng.uniform``, only when jittering), then for each try the crop row offset then the column
offset (``rng.integers``), then the horizontal and vertical flip (``rng.random()`` each, drawn
even when a probability is 0 or 1), then ``k`` (``rng.integers(0, 4)``, only with ``rot90``),
``g`` (``rng.uniform``, only with a gamma range) and the three gains (``rng.uniform(size=3)``,
only with a gain range). An augmentation that is off draws nothing, so the crops of a config
without it are those of the project before it existed. :func:`random_crop_flip` (a decoded
target) and :func:`sample_crop` (a dataset, decoding only the masks near the window) consume the
same draws and return the same crop.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from minimaskrcnn.data.coco import CocoDataset, masks_to_boxes
from minimaskrcnn.model.transform import bilinear_taps, resample_bilinear, scaled_size

__all__ = ["standardize", "random_crop_flip", "sample_crop", "crop_keypoints", "flip_keypoints",
           "rotate_keypoints", "Augmentation", "MAX_CROP_TRIES", "nearest_taps"]

MAX_CROP_TRIES = 10
"""Crop windows drawn before giving up on finding an instance."""


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training augmentations beyond crop and flips (``TrainConfig`` fields of the same
    names; see the module docstring). The default is none of them."""

    scale_jitter: tuple[float, float] = (1.0, 1.0)
    rot90: bool = False
    gamma_jitter: tuple[float, float] = (1.0, 1.0)
    channel_gain_jitter: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_config(cls, train_cfg) -> Augmentation:
        """The augmentations of a :class:`~minimaskrcnn.config.TrainConfig`."""
        return cls(tuple(train_cfg.scale_jitter), bool(train_cfg.rot90),
                   tuple(train_cfg.gamma_jitter), tuple(train_cfg.channel_gain_jitter))

    def draw_scale(self, image_scale: float, rng: np.random.Generator) -> float:
        """``image_scale * j`` (draws ``j`` only when jittering)."""
        lo, hi = self.scale_jitter
        if lo == hi == 1:
            return image_scale
        return image_scale * math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def draw_after_flips(self, rng: np.random.Generator):
        """``(k, gamma, gains)`` (``0, None, None`` for what is off, nothing drawn for it)."""
        k = int(rng.integers(0, 4)) if self.rot90 else 0
        g = None
        if tuple(self.gamma_jitter) != (1, 1):
            lo, hi = self.gamma_jitter
            g = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        gains = None
        if tuple(self.channel_gain_jitter) != (1, 1):
            gains = rng.uniform(*self.channel_gain_jitter, size=3)
        return k, g, gains


NO_AUGMENTATION = Augmentation()


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


def nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    """Nearest-neighbour resampling of one axis (PyTorch ``interpolate(mode="nearest")``):
    output pixel i reads input pixel ``min(floor(i * n_in / n_out), n_in - 1)``; ``(n_out,)
    int64``."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


class _ScaledWindow:
    """The source pixels under a ``crop x crop`` window at ``(y0, x0)`` of the image scaled to
    ``(H, W)``: ``src = (sy0, sx0, sy1, sx1)`` and the taps relative to it."""

    def __init__(self, h, w, big_h, big_w, y0, x0, crop):
        ys = slice(y0, min(y0 + crop, big_h))
        xs = slice(x0, min(x0 + crop, big_w))
        by, bx = bilinear_taps(h, big_h), bilinear_taps(w, big_w)
        by = tuple(t[ys] for t in by)
        bx = tuple(t[xs] for t in bx)
        ny, nx = nearest_taps(h, big_h)[ys], nearest_taps(w, big_w)[xs]
        sy0, sy1 = int(min(by[0].min(), ny.min())), int(max(by[1].max(), ny.max())) + 1
        sx0, sx1 = int(min(bx[0].min(), nx.min())), int(max(bx[1].max(), nx.max())) + 1
        self.src = (sy0, sx0, sy1, sx1)
        self.by = (by[0] - sy0, by[1] - sy0, by[2])
        self.bx = (bx[0] - sx0, bx[1] - sx0, bx[2])
        self.ny, self.nx = ny - sy0, nx - sx0

    def image(self, cut, crop):
        """``(sy1 - sy0, sx1 - sx0, 3)`` source pixels -> ``(crop, crop, 3) float32``."""
        out = resample_bilinear(cut.astype(np.float32), self.by, self.bx, (0, 1))
        return _crop_image(out, 0, 0, crop)

    def masks(self, cut, crop):
        """``(G, sy1 - sy0, sx1 - sx0)`` source masks -> ``(G, crop, crop) uint8``."""
        return _pad_masks(np.ascontiguousarray(cut[:, self.ny][:, :, self.nx]), crop)


class _Window:
    """A ``crop x crop`` window at ``(y0, x0)`` of the image at its own size: ``src`` is the
    window itself (clipped to the image), and the cut is zero-padded, not resampled."""

    def __init__(self, h, w, y0, x0, crop):
        self.src = (y0, x0, min(y0 + crop, h), min(x0 + crop, w))

    def image(self, cut, crop):
        return _crop_image(cut, 0, 0, crop)

    def masks(self, cut, crop):
        return _pad_masks(cut, crop)


def _window(h, w, big_h, big_w, y0, x0, crop):
    """The window at ``(y0, x0)`` of the image scaled to ``(big_h, big_w)``."""
    if (big_h, big_w) == (h, w):
        return _Window(h, w, y0, x0, crop)
    return _ScaledWindow(h, w, big_h, big_w, y0, x0, crop)


def _scale_keypoints(keypoints, fy, fx):
    kp = np.array(keypoints, dtype=np.float32)
    kp[..., 0] *= fx
    kp[..., 1] *= fy
    return kp


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


def rotate_keypoints(keypoints, size: int, k: int) -> np.ndarray:
    """``(G, K, 3)`` keypoints of a ``size x size`` crop turned as ``np.rot90(image, k)`` turns
    the image: ``(x, y) -> (y, size - x)`` per quarter turn (pixel-edge coordinates); keypoints
    not labelled stay ``0, 0, 0``."""
    kp = np.array(keypoints, dtype=np.float32)
    labelled = kp[..., 2] > 0
    for _ in range(k % 4):
        x = kp[..., 0].copy()
        kp[..., 0] = kp[..., 1]
        kp[..., 1] = size - x
    kp[~labelled] = 0
    return kp


def _photometric(image, gamma, gains):
    """Gamma then per-channel gains on an ``(H, W, 3)`` image in [0, 255] -> float32."""
    x = np.asarray(image, dtype=np.float32)
    if gamma is not None:
        x = 255.0 * (x / 255.0) ** np.float32(gamma)
    if gains is not None:
        x = x * gains.astype(np.float32)
    return x


def _finish(image, masks, labels, image_id, hflip, vflip, keypoints=None, pairs=(),
            after=(0, None, None)):
    """Flip, rotate, photometric jitter (``after = (k, gamma, gains)``), recompute boxes;
    return (image, target)."""
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
    k, gamma, gains = after
    if k:
        image = np.rot90(image, k, axes=(0, 1))
        masks = np.rot90(masks, k, axes=(1, 2))
        if keypoints is not None:
            keypoints = rotate_keypoints(keypoints, image.shape[0], k)
    if gamma is not None or gains is not None:
        image = _photometric(image, gamma, gains)
    image = np.ascontiguousarray(image)
    masks = np.ascontiguousarray(masks)
    target = {"boxes": masks_to_boxes(masks), "labels": labels, "masks": masks,
              "image_id": image_id}
    if keypoints is not None:
        target["keypoints"] = keypoints
    return image, target


def random_crop_flip(image: np.ndarray, target: dict, crop_size: int, hflip_prob: float,
                     vflip_prob: float, rng: np.random.Generator, *,
                     max_tries: int = MAX_CROP_TRIES, flip_pairs=(), image_scale: float = 1.0,
                     augment: Augmentation = NO_AUGMENTATION):
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
        image_scale: the crop is cut from the image resized by this factor (see the module;
            ``crop_size`` in scaled pixels).
        augment: scale jitter, rotations, gamma and channel gains (:class:`Augmentation`;
            default none).

    Returns:
        ``(image (crop, crop, 3) uint8, target)`` (the image float32 when it was resampled or
        photometrically jittered)
        with ``boxes (G', 4) float32``, ``labels (G',) int64``, ``masks (G', crop, crop) uint8``,
        ``image_id``, and ``keypoints (G', K, 3) float32`` in crop pixels when the target has
        keypoints.

    Raises:
        ValueError: ``image_scale`` not a finite number > 0.
    """
    h, w = image.shape[:2]
    image_scale = augment.draw_scale(image_scale, rng)
    big_h, big_w = (h, w) if image_scale == 1 else scaled_size(h, w, image_scale)
    masks, labels = target["masks"], np.asarray(target["labels"], dtype=np.int64)
    for _ in range(max_tries):
        y0, x0 = _draw_window(big_h, big_w, crop_size, rng)
        win = _window(h, w, big_h, big_w, y0, x0, crop_size)
        sy0, sx0, sy1, sx1 = win.src
        cut = win.masks(masks[:, sy0:sy1, sx0:sx1], crop_size)
        keep = cut.reshape(cut.shape[0], crop_size * crop_size).any(axis=1)
        if keep.any() or masks.shape[0] == 0:
            break
    hflip = rng.random() < hflip_prob
    vflip = rng.random() < vflip_prob
    after = augment.draw_after_flips(rng)
    kp = target.get("keypoints")
    if kp is not None:
        kp = _scale_keypoints(np.asarray(kp)[keep], big_h / h, big_w / w)
        kp = crop_keypoints(kp, y0, x0, crop_size)
    return _finish(win.image(image[sy0:sy1, sx0:sx1], crop_size), cut[keep], labels[keep],
                   target.get("image_id"), hflip, vflip, kp, flip_pairs, after)


def _boxes_meeting(boxes: np.ndarray, src) -> np.ndarray:
    """Indices of the ``(G, 4)`` boxes that meet the source window ``(y0, x0, y1, x1)``."""
    sy0, sx0, sy1, sx1 = src
    return np.flatnonzero((boxes[:, 0] < sx1) & (boxes[:, 2] > sx0)
                          & (boxes[:, 1] < sy1) & (boxes[:, 3] > sy0))


def crop_instances(dataset: CocoDataset, index: int, crop_size: int, rng: np.random.Generator,
                   *, image_scale: float = 1.0, augment: Augmentation = NO_AUGMENTATION) -> int:
    """How many annotated instances the crop of :func:`sample_crop` with the same arguments and
    a generator in the same state holds, without reading the image or decoding a mask: the
    annotations whose box meets the first window it draws (the same draws). An estimate of the
    crop's work known before the forward pass (each instance brings its foreground RoIs to the
    mask and keypoint heads), for balancing data-parallel ranks
    (:func:`minimaskrcnn.distributed.balance_batch`). It differs from ``len(target["boxes"])``
    only when a box meets the window but its mask does not, or when the first window holds no
    instance and :func:`sample_crop` draws another.

    Raises:
        IndexError: ``index`` out of range.
    """
    info = dataset.image_info(index)
    h, w = int(info["height"]), int(info["width"])
    _, boxes, big_h, big_w = _crop_setup(dataset, index, h, w, image_scale, augment, rng)
    y0, x0 = _draw_window(big_h, big_w, crop_size, rng)
    return int(_boxes_meeting(boxes, _window(h, w, big_h, big_w, y0, x0, crop_size).src).size)


def _crop_setup(dataset, index, h, w, image_scale, augment, rng):
    """What :func:`sample_crop` and :func:`crop_instances` draw and read before the window, in
    the same order: the annotations, their ``(G, 4)`` boxes (source pixels), and the scaled
    image size ``(big_h, big_w)`` after the scale jitter's draw."""
    anns = dataset.annotations(index)
    boxes = np.array([dataset.ann_box(index, a) for a in anns]).reshape(-1, 4)
    image_scale = augment.draw_scale(image_scale, rng)
    big_h, big_w = (h, w) if image_scale == 1 else scaled_size(h, w, image_scale)
    return anns, boxes, big_h, big_w


def sample_crop(dataset: CocoDataset, index: int, crop_size: int, hflip_prob: float,
                vflip_prob: float, rng: np.random.Generator, *,
                max_tries: int = MAX_CROP_TRIES, image_scale: float = 1.0,
                augment: Augmentation = NO_AUGMENTATION):
    """:func:`random_crop_flip` of ``dataset[index]`` without decoding every mask at full size.

    Only annotations whose box meets the crop window are decoded; same draws, same result as
    ``random_crop_flip(*dataset[index], ..., flip_pairs=dataset.keypoint_flip_pairs)``:
    ``(image (crop, crop, 3) uint8, target)``, the target as :func:`random_crop_flip` returns it
    (with ``keypoints`` when the dataset has keypoints). ``crop_size`` in pixels (scaled pixels
    with ``image_scale``: the crop of the image resized by that factor, only the source pixels
    under the window resampled); ``augment`` as in :func:`random_crop_flip`.

    Raises:
        IndexError: ``index`` out of range.
        DatasetError: the image file is missing, unreadable or not of the annotated size.
        ValueError: ``image_scale`` not a finite number > 0.
    """
    image = dataset.load_image(index)
    h, w = image.shape[:2]
    anns, boxes, big_h, big_w = _crop_setup(dataset, index, h, w, image_scale, augment, rng)
    for _ in range(max_tries):
        y0, x0 = _draw_window(big_h, big_w, crop_size, rng)
        win = _window(h, w, big_h, big_w, y0, x0, crop_size)
        sy0, sx0, sy1, sx1 = win.src
        near = _boxes_meeting(boxes, win.src)
        cut = win.masks(dataset.decode_masks(index, [anns[i] for i in near], win.src), crop_size)
        keep = cut.reshape(cut.shape[0], crop_size * crop_size).any(axis=1)
        if keep.any() or not anns:
            break
    labels = np.array([dataset.label_of(anns[i]) for i in near[keep]], dtype=np.int64)
    hflip = rng.random() < hflip_prob
    vflip = rng.random() < vflip_prob
    after = augment.draw_after_flips(rng)
    kp = None
    if getattr(dataset, "num_keypoints", 0):
        kp = _scale_keypoints(dataset.ann_keypoints([anns[i] for i in near[keep]]),
                              big_h / h, big_w / w)
        kp = crop_keypoints(kp, y0, x0, crop_size)
    return _finish(win.image(image[sy0:sy1, sx0:sx1], crop_size), cut[keep], labels,
                   int(dataset.image_ids[index]), hflip, vflip, kp,
                   getattr(dataset, "keypoint_flip_pairs", ()), after)
