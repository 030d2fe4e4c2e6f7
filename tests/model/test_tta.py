"""Horizontal-flip test-time augmentation (:mod:`minimaskrcnn.model.tta`) and the unpasted
``mask_format="roi"`` of ``predict``."""

from __future__ import annotations

import numpy as np
import pytest

from minimaskrcnn import ops
from minimaskrcnn.model import build_model
from minimaskrcnn.model.tta import flip_boxes, merge_detections
from minimaskrcnn.testing.tiny import TINY, tiny_batch


def test_flip_boxes_by_hand():
    boxes = np.array([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 10.0, 3.0]], np.float32)
    np.testing.assert_array_equal(flip_boxes(boxes, 10),
                                  [[6.0, 2.0, 9.0, 6.0], [0.0, 0.0, 10.0, 3.0]])
    np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, 10), 10), boxes)


def test_merge_detections_is_per_class_nms_of_both_passes():
    a = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
         "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([1, 1])}
    b = {"boxes": np.array([[1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32),
         "scores": np.array([0.95, 0.8, 0.6], np.float32), "labels": np.array([1, 2, 1])}
    m = merge_detections(a, b, 0.5, 10)
    # [1, 0, 11, 10] (0.95) suppresses a's [0, 0, 10, 10] (IoU 9/11); class 2's box stays
    np.testing.assert_array_equal(m["scores"], np.array([0.95, 0.8, 0.6, 0.4], np.float32))
    np.testing.assert_array_equal(m["labels"], [1, 2, 1, 1])
    assert len(merge_detections(a, b, 0.5, 2)["scores"]) == 2  # detections_per_img


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, np.random.default_rng(0))


def test_tta_of_the_mirror_image_is_the_mirror_of_tta(model):
    # the two passes of TTA on a mirror image are the two passes on the image, swapped: the
    # merged detections are the mirror of the image's
    images, _ = tiny_batch()
    plain = model.predict(images)
    tta = model.predict(images, hflip_tta=True)
    mirror = model.predict([im[:, :, ::-1].copy() for im in images], hflip_tta=True)
    for p, t, m, im in zip(plain, tta, mirror, images, strict=True):
        assert len(t["scores"]) > 0
        np.testing.assert_allclose(m["scores"], t["scores"], rtol=1e-6)
        np.testing.assert_allclose(flip_boxes(m["boxes"], im.shape[2]), t["boxes"], atol=1e-4)
        agree = (m["masks"][:, :, ::-1] == t["masks"]).mean()
        assert agree > 0.995  # pasting rounds at the threshold differently on a mirror
        # TTA is not the plain prediction: the mirror pass found other boxes or scores
        assert (len(p["scores"]) != len(t["scores"])
                or not np.allclose(p["scores"], t["scores"]))


def test_roi_masks_pasted_are_the_bool_masks(model):
    images, _ = tiny_batch()
    dense = model.predict(images)
    roi = model.predict(images, mask_format="roi")
    for d, r, im in zip(dense, roi, images, strict=True):
        assert r["masks"].dtype == np.float32 and r["masks"].shape[1:] == (28, 28)
        np.testing.assert_array_equal(r["boxes"], d["boxes"])
        pasted = ops.paste_binary_masks(r["masks"], r["boxes"], im.shape[1:],
                                        model.config.mask_threshold)
        np.testing.assert_array_equal(pasted, d["masks"])
    with pytest.raises(ValueError, match="mask_format must be one of"):
        model.predict(images, mask_format="png")
