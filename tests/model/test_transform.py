"""The model's transform (torchvision's ``GeneralizedRCNNTransform``): padding into an
``ImageList``, the target checks, the ``image_scale`` resize and the postprocess back to input
pixels; ``resize_bilinear`` / ``resize_boxes`` / ``resize_keypoints`` by hand."""

import numpy as np
import pytest

from minimaskrcnn.model.transform import (
    GeneralizedRCNNTransform,
    ImageList,
    resize_bilinear,
    resize_boxes,
    resize_keypoints,
    scaled_size,
)
from minimaskrcnn.ops import paste_binary_masks


@pytest.mark.parametrize("h,w,scale", [(7, 9, 4.0), (13, 5, 2.5), (31, 17, 1.7), (20, 20, 0.6)])
def test_resize_bilinear_reproduces_linear_functions(h, w, scale):
    # bilinear interpolation is exact on a linear function: output pixel i must hold f at the
    # source coordinate (i + 0.5) * h / H - 0.5, clamped to the image (align_corners=False)
    big_h, big_w = scaled_size(h, w, scale)
    assert (big_h, big_w) == (int(h * scale), int(w * scale))
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    image = np.stack([1.0 + 2.0 * yy - 3.0 * xx, 0.5 * xx, np.full((h, w), 7.0)])
    out = resize_bilinear(image, (big_h, big_w))
    sy = np.clip((np.arange(big_h) + 0.5) * h / big_h - 0.5, 0, h - 1)[:, None]
    sx = np.clip((np.arange(big_w) + 0.5) * w / big_w - 0.5, 0, w - 1)[None, :]
    np.testing.assert_allclose(out[0], 1.0 + 2.0 * sy - 3.0 * sx, atol=1e-9)
    np.testing.assert_allclose(out[1], np.broadcast_to(0.5 * sx, (big_h, big_w)), atol=1e-9)
    np.testing.assert_allclose(out[2], 7.0, atol=1e-12)


def test_scaled_size_floors_and_refuses_bad_scales():
    assert scaled_size(10, 7, 1.5) == (15, 10)
    assert scaled_size(3, 1, 0.1) == (1, 1)  # at least one pixel
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="image scale must be a finite number > 0"):
            scaled_size(4, 4, bad)


def test_resize_boxes_and_keypoints_by_hand():
    boxes = np.array([[2, 4, 10, 8]], np.float32)
    out = resize_boxes(boxes, (20, 40), (10, 10))  # y / 2, x / 4
    np.testing.assert_array_equal(out, [[0.5, 2, 2.5, 4]])
    assert out.dtype == np.float32 and boxes[0, 0] == 2  # a new array
    kp = np.array([[[8, 6, 2], [4, 2, 0]]], np.float32)
    out = resize_keypoints(kp, (20, 40), (10, 10))
    np.testing.assert_array_equal(out, [[[2, 3, 2], [1, 1, 0]]])  # v unchanged
    assert kp[0, 0, 0] == 8


def _transform(**kw):
    args = {"size_divisible": 32, "image_scale": 1.0, "num_classes": 2}
    return GeneralizedRCNNTransform(**{**args, **kw})


def test_batch_is_an_image_list_padded_at_the_bottom_and_right():
    rng = np.random.default_rng(0)
    ims = [rng.standard_normal((3, 40, 33)).astype(np.float32),
           rng.standard_normal((3, 20, 70)).astype(np.float32)]
    images, targets = _transform()(ims, dtype=np.float64)
    assert isinstance(images, ImageList) and targets is None
    assert images.tensors.shape == (2, 3, 64, 96) and images.tensors.dtype == np.float64
    assert images.image_sizes == [(40, 33), (20, 70)]
    np.testing.assert_array_equal(images.tensors[0, :, :40, :33], ims[0])
    assert not images.tensors[0, :, 40:].any() and not images.tensors[0, :, :, 33:].any()
    np.testing.assert_array_equal(images.tensors[1, :, :20, :70], ims[1])


def test_inference_resizes_by_image_scale_training_does_not():
    rng = np.random.default_rng(0)
    im = rng.standard_normal((3, 10, 12)).astype(np.float32)
    t = _transform(image_scale=2.5)
    images, _ = t([im])
    assert images.image_sizes == [(25, 30)]
    np.testing.assert_array_equal(images.tensors[0, :, :25, :30],
                                  resize_bilinear(im, (25, 30)))
    target = {"boxes": np.array([[1, 1, 5, 5]], np.float32), "labels": np.array([1]),
              "masks": np.zeros((1, 10, 12), np.uint8)}
    images, targets = t([im], [target])
    assert images.image_sizes == [(10, 12)]  # training crops come scaled from the data path
    assert targets[0]["boxes"].dtype == np.float32 and targets[0]["labels"].dtype == np.int64


def test_keypoint_targets_are_checked_and_kept():
    t = _transform(num_keypoints=2)
    target = {"boxes": np.array([[1, 1, 5, 5]], np.float32), "labels": np.array([1]),
              "masks": np.zeros((1, 8, 8), np.uint8)}
    with pytest.raises(ValueError, match=r"targets\[0\] needs 'boxes' and 'keypoints'"):
        t.check_targets([target], [(8, 8)])
    with pytest.raises(ValueError, match=r"= \(1, 2, 3\) \(K = num_keypoints"):
        t.check_targets([{**target, "keypoints": np.zeros((1, 3, 3))}], [(8, 8)])
    with pytest.raises(ValueError, match="finite numbers"):
        t.check_targets([{**target, "keypoints": np.full((1, 2, 3), np.nan)}], [(8, 8)])
    out = t.check_targets([{**target, "keypoints": np.ones((1, 2, 3), np.int64)}], [(8, 8)])
    assert out[0]["keypoints"].dtype == np.float32
    assert "keypoints" not in _transform().check_targets([target], [(8, 8)])[0]


def test_postprocess_maps_boxes_keypoints_and_masks_to_the_input_image():
    t = _transform(mask_threshold=0.5)
    probs = np.zeros((1, 4, 4), np.float32)
    probs[0, :2] = 1.0  # the top half of the box
    det = {"boxes": np.array([[4, 8, 12, 16]], np.float32), "masks": probs,
           "keypoints": np.array([[[6, 10, 1]]], np.float32)}
    out = t.postprocess([det], [(20, 20)], [(10, 40)])[0]  # y / 2, x * 2
    np.testing.assert_array_equal(out["boxes"], [[8, 4, 24, 8]])
    np.testing.assert_array_equal(out["keypoints"], [[[12, 5, 1]]])
    assert out["masks"].shape == (1, 10, 40) and out["masks"].dtype == bool
    # pasted at the rescaled box (not at the network's), its top half
    np.testing.assert_array_equal(out["masks"], paste_binary_masks(probs, out["boxes"], (10, 40),
                                                                   0.5))
    ys, xs = np.nonzero(out["masks"][0])
    assert 7 <= xs.min() and xs.max() <= 24 and 3 <= ys.min() and ys.max() <= 6
