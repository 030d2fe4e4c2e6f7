"""Horizontal-flip test-time augmentation (Detectron2's ``GeneralizedRCNNWithTTA`` with
``TEST.AUG.FLIP``, restricted to the flip; the 5th-place DSB2018 solution's TTA).

For each image the network runs on the image and on its mirror image:

1. boxes: the box branch's detections of both (the mirror's boxes mirrored back, ``x -> w - x``
   in pixel-edge coordinates of the network's image of width ``w``) are pooled and reduced by
   per-class NMS at ``box_nms_thresh`` to the ``detections_per_img`` best, as Detectron2 merges
   the augmented detections;
2. masks: the mask branch runs on those merged boxes in both images (the boxes mirrored for the
   mirror image), the mirror's ``M x M`` probabilities are mirrored back and the two are
   averaged (Detectron2 averages the augmented mask probabilities);
3. keypoints, if the model has them, come from the image alone (a mirror would need the left /
   right pairs of the dataset).

Everything after is :meth:`~minimaskrcnn.model.MaskRCNN.predict`'s: the transform's postprocess
maps boxes and masks back to the input image. It costs two passes of the backbone, FPN, RPN and
box head, and two of the mask head.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.backend import get_array_module
from minimaskrcnn.ops import batched_nms

__all__ = ["flip_boxes", "merge_detections", "predict_hflip_tta"]


def flip_boxes(boxes, width: float):
    """``(D, 4)`` ``[x1, y1, x2, y2]`` boxes of an image ``width`` pixels wide, mirrored:
    ``[w - x2, y1, w - x1, y2]`` (a copy)."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def merge_detections(a: dict, b: dict, nms_thresh: float, detections_per_img: int) -> dict:
    """The detections of two passes over one image (``boxes (D, 4)``, ``scores (D,)``,
    ``labels (D,)``; the same pixels) pooled, per-class NMS at ``nms_thresh``, the
    ``detections_per_img`` best by decreasing score."""
    xp = get_array_module(a["boxes"])
    boxes = xp.concatenate([a["boxes"], b["boxes"]])
    scores = xp.concatenate([a["scores"], b["scores"]])
    labels = xp.concatenate([a["labels"], b["labels"]])
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def predict_hflip_tta(model, images):
    """Detections of ``images`` (already through ``model.transform``: an ``ImageList``) with
    horizontal-flip TTA, in pixels of the network's images, before the transform's
    postprocess: N dicts ``boxes``, ``scores``, ``labels``, ``masks (D, M, M) float32`` (with a
    mask head), ``keypoints`` / ``keypoint_scores`` (with a keypoint head).

    The mirror image is ``images.tensors[..., ::-1]`` cut to each image's own width: each image
    is mirrored within its own ``(h_i, w_i)``, not within the padded batch.
    """
    xp = model.xp
    tensors = images.tensors
    mirrored = xp.zeros_like(tensors)
    for i, (h, w) in enumerate(images.image_sizes):
        mirrored[i, :, :h, :w] = tensors[i, :, :h, w - 1::-1] if w else 0
    mirror_images = type(images)(mirrored, images.image_sizes)
    heads = model.roi_heads
    passes = []
    for ims in (images, mirror_images):
        pyramid = model.fpn.predict(model._fpn_inputs(model.backbone.predict(ims.tensors)))
        proposals = model.rpn.predict(pyramid, ims)
        features = model._roi_maps(pyramid)
        passes.append((features, heads.predict_boxes(features, proposals, ims)))
    (features, plain), (mirror_features, mirror) = passes
    detections = []
    for d, m, (_, w) in zip(plain, mirror, images.image_sizes, strict=True):
        m = dict(m, boxes=flip_boxes(m["boxes"], w))
        detections.append(merge_detections(d, m, heads.nms_thresh, heads.detections_per_img))
    if heads.has_mask():
        probs = heads.predict_masks(features, detections, images)
        back = heads.predict_masks(
            mirror_features,
            [dict(d, boxes=flip_boxes(d["boxes"], w))
             for d, (_, w) in zip(detections, images.image_sizes, strict=True)],
            mirror_images)
        for d, p, q in zip(detections, probs, back, strict=True):
            d["masks"] = (p + q[:, :, ::-1]) * np.float32(0.5)
    if heads.has_keypoint():
        heads.predict_keypoints(features, detections, images)
    return detections
