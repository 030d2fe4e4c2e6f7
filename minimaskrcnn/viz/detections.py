"""Pictures of detections: mask overlays and predictions next to the ground truth.

Overlays are plain NumPy (no plotting state): each instance gets a colour, its mask is blended
into the image and its box outline drawn; keypoints and skeletons are drawn with Pillow. Figures
use matplotlib's object API with the Agg canvas (:func:`minimaskrcnn.viz.figure.agg_figure`), so
nothing touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from minimaskrcnn._atomic import open_atomic
from minimaskrcnn.data import standardize
from minimaskrcnn.viz.figure import agg_figure

__all__ = ["instance_colours", "overlay", "plot_dataset_predictions", "plot_predictions_vs_gt",
           "save_overlay", "shown_detections"]


def instance_colours(n: int) -> np.ndarray:
    """``(n, 3) uint8`` well-separated colours (golden-ratio hue steps, bright and saturated)."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues],
                    dtype=np.uint8).reshape(n, 3)


def overlay(image: np.ndarray, instances: dict, *, score_thresh: float = 0.5,
            alpha: float = 0.45, boxes: bool = True, skeleton=None) -> np.ndarray:
    """Blend instance masks, box outlines and keypoints into an image.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        instances: a prediction (``masks (D, H, W)``, ``boxes (D, 4)``, ``scores (D,)``, and
            optionally ``keypoints (D, K, 3)`` ``[x, y, v]`` pixels) or a target (no ``scores``:
            every instance is drawn).
        score_thresh: predictions below it are not drawn.
        alpha: mask opacity.
        boxes: draw the box outlines.
        skeleton: pairs ``[a, b]`` of 1-based keypoint numbers (the COCO category's
            ``skeleton``) drawn as lines between keypoints; the keypoints with ``v > 0`` are
            drawn as dots.

    Returns:
        ``(H, W, 3) uint8`` new image.
    """
    out = np.asarray(image, dtype=np.float32).copy()
    h, w = out.shape[:2]
    masks = np.asarray(instances.get("masks", np.zeros((0, h, w))), dtype=bool)
    box_arr = np.asarray(instances.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    keep = np.arange(len(box_arr)) if "scores" not in instances else np.flatnonzero(
        np.asarray(instances["scores"]) >= score_thresh)
    colours = instance_colours(len(keep)).astype(np.float32)
    for c, d in zip(colours, keep, strict=True):
        if d < len(masks):
            m = masks[d]
            out[m] = (1 - alpha) * out[m] + alpha * c
    if boxes:
        for c, d in zip(colours, keep, strict=True):
            x1, y1, x2, y2 = box_arr[d]
            c0, c1 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.ceil(x2) - 1, 0, w - 1))
            r0, r1 = int(np.clip(np.floor(y1), 0, h - 1)), int(np.clip(np.ceil(y2) - 1, 0, h - 1))
            out[r0, c0:c1 + 1] = c
            out[r1, c0:c1 + 1] = c
            out[r0:r1 + 1, c0] = c
            out[r0:r1 + 1, c1] = c
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if instances.get("keypoints") is not None and len(keep):
        out = _draw_keypoints(out, np.asarray(instances["keypoints"], np.float64), keep,
                              colours, skeleton or [])
    return out


def _draw_keypoints(image, keypoints, keep, colours, skeleton):
    """Skeleton lines and keypoint dots of the kept instances (Pillow's ImageDraw)."""
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    r = max(1.5, min(image.shape[:2]) / 150)
    for c, d in zip(colours, keep, strict=True):
        kp = keypoints[d]  # (K, 3)
        colour = tuple(int(v) for v in np.clip(c * 0.6 + 255 * 0.4, 0, 255))
        for a, b in skeleton:
            if 1 <= a <= len(kp) and 1 <= b <= len(kp) and kp[a - 1, 2] > 0 and kp[b - 1, 2] > 0:
                draw.line([tuple(kp[a - 1, :2]), tuple(kp[b - 1, :2])], fill=colour, width=2)
        for x, y, v in kp:
            if v > 0:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
    return np.asarray(pil)


def save_overlay(path: str, image: np.ndarray, instances: dict, **kwargs) -> None:
    """Write :func:`overlay` as a PNG (Pillow), atomically (:func:`minimaskrcnn._atomic.open_atomic`:
    a full disk leaves no partial PNG, and the ``OSError`` names ``path``)."""
    picture = Image.fromarray(overlay(image, instances, **kwargs))
    with open_atomic(os.fspath(path), "wb") as f:
        picture.save(f, format="PNG")


def plot_predictions_vs_gt(images, targets, predictions, path: str, *, titles=None,
                           score_thresh: float = 0.5) -> None:
    """A figure with one row per image: the image, its ground truth, the predictions.

    Args:
        images: list of ``(H, W, 3) uint8``.
        targets: list of ground-truth dicts (``masks``, ``boxes``).
        predictions: list of prediction dicts (``masks``, ``boxes``, ``scores``).
        path: output PNG.
        titles: optional row titles.
        score_thresh: predictions below it are not drawn.
    """
    n = len(images)
    fig = agg_figure(9.0, 3.0 * n + 0.3)
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        panels = [
            (images[r], "image" if titles is None else titles[r]),
            (overlay(images[r], targets[r]), f"ground truth ({len(targets[r]['boxes'])})"),
            (overlay(images[r], predictions[r], score_thresh=score_thresh),
             f"predictions >= {score_thresh} "
             f"({int((np.asarray(predictions[r]['scores']) >= score_thresh).sum())})"),
        ]
        for ax, (picture, title) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    with open_atomic(os.fspath(path), "wb") as f:  # no partial PNG on a full disk
        fig.savefig(f, format="png")


def plot_dataset_predictions(model, dataset, path: str, n: int, results=None) -> None:
    """:func:`plot_predictions_vs_gt` for the first ``n`` images of a dataset (what ``minimaskrcnn
    demo`` and ``evaluate --figure`` draw).

    Args:
        model: has ``predict([image (3, H, W) float32 standardised]) -> [prediction]``.
        dataset: a ``CocoDataset`` (``dataset[i] -> (image (H, W, 3) uint8, target)``).
        path: output PNG.
        n: images to draw (fewer if the dataset is smaller).
        results: ``{image id: prediction}`` already computed (``evaluate_model``'s
            ``"_results"``); images missing from it are predicted here.
    """
    images, targets, preds, titles = [], [], [], []
    for i in range(min(n, len(dataset))):
        image, target = dataset[i]
        image_id = int(dataset.image_ids[i])
        pred = results[image_id] if results and image_id in results else model.predict(
            [standardize(image)])[0]
        images.append(image)
        targets.append(target)
        preds.append(pred)
        titles.append(dataset.image_info(i)["file_name"][:16])
    plot_predictions_vs_gt(images, targets, preds, path, titles=titles)


def shown_detections(prediction: dict, score_thresh: float, image_size) -> dict:
    """The detections of ``prediction`` with ``scores >= score_thresh``, their masks decoded to
    ``(D, H, W) bool`` from run-length encodings (``model.predict(..., mask_format="rle")``):
    what :func:`overlay` draws.

    Args:
        prediction: ``scores (D,)``, ``masks`` (D pycocotools RLEs; absent without a mask
            head, and then absent from the result), ``boxes (D, 4)``, ...
        score_thresh: the lowest score kept.
        image_size: ``(H, W)`` of the image (the mask shape when nothing is kept).
    """
    keep = [d for d in range(len(prediction["scores"]))
            if prediction["scores"][d] >= score_thresh]
    h, w = image_size
    shown = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in prediction.items()}
    if "masks" in prediction:  # none from a model without a mask head
        shown["masks"] = (mask_utils.decode([prediction["masks"][d] for d in keep])
                          .transpose(2, 0, 1).astype(bool) if keep else np.zeros((0, h, w), bool))
    return shown
