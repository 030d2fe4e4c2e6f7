"""The augmentations beyond crop and flips (``TrainConfig.scale_jitter``, ``rot90``,
``gamma_jitter``, ``channel_gain_jitter``; the ``nuclei`` preset's): each against the plain crop
transformed by hand, the dataset path against the decoded one, and nothing drawn when off."""

import math

import numpy as np
import pytest

from minimaskrcnn.config import TrainConfig, get_preset
from minimaskrcnn.data import load_sample, random_crop_flip, sample_crop
from minimaskrcnn.data.transforms import Augmentation, rotate_keypoints

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


class _Rng:
    """Stands in for np.random.Generator with queued answers: integers() the crop offsets and
    k, random() the flips, uniform() the jitters (a size-3 call returns three queued values)."""

    def __init__(self, ints=(), uniforms=(), jitters=()):
        self.ints, self.uniforms, self.jitters = list(ints), list(uniforms), list(jitters)

    def integers(self, low, high):
        v = self.ints.pop(0)
        assert low <= v < high, (low, v, high)
        return v

    def random(self):
        return self.uniforms.pop(0)

    def uniform(self, low, high, size=None):
        if size is None:
            v = self.jitters.pop(0)
            assert low <= v <= high, (low, v, high)
            return v
        v = np.array([self.jitters.pop(0) for _ in range(size)])
        assert ((low <= v) & (v <= high)).all()
        return v


def _toy():
    """8x8 image, every pixel its own value in channel 0; two instances and one keypoint each
    at a pixel centre."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :, 0] = 10 * np.arange(8)[:, None] + np.arange(8)[None, :]
    image[:, :, 1] = 100
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 0:2, 0:3] = 1
    masks[1, 5:8, 4:6] = 1
    kp = np.array([[[1.5, 0.5, 2]], [[4.5, 6.5, 2]]], np.float32)
    return image, {"masks": masks, "labels": np.array([1, 2]), "image_id": 1, "keypoints": kp}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_turns_image_masks_boxes_and_keypoints_together(k):
    image, target = _toy()
    rot = Augmentation(rot90=True)
    plain_img, plain = random_crop_flip(image, target, 8, 0.0, 0.0, _Rng([0, 0], [0.9, 0.9]))
    img, t = random_crop_flip(image, target, 8, 0.0, 0.0, _Rng([0, 0, k], [0.9, 0.9]),
                              augment=rot)
    np.testing.assert_array_equal(img, np.rot90(plain_img, k))
    np.testing.assert_array_equal(t["masks"], np.rot90(plain["masks"], k, axes=(1, 2)))
    for box, m in zip(t["boxes"], t["masks"], strict=True):  # boxes are the turned masks'
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    # each keypoint still lies on the pixel it marked before the turn
    for before, after in zip(plain["keypoints"][:, 0], t["keypoints"][:, 0], strict=True):
        value = plain_img[int(before[1]), int(before[0]), 0]
        assert img[int(after[1]), int(after[0]), 0] == value and after[2] == 2


def test_rotate_keypoints_four_turns_is_identity_and_keeps_unlabelled_at_zero():
    kp = np.array([[[1.0, 2.0, 2], [0.0, 0.0, 0], [3.5, 0.25, 1]]], np.float32)
    np.testing.assert_array_equal(rotate_keypoints(kp, 5, 4), kp)
    one = rotate_keypoints(kp, 5, 1)
    np.testing.assert_array_equal(one[0, 0], [2.0, 4.0, 2])  # (x, y) -> (y, 5 - x)
    np.testing.assert_array_equal(one[0, 1], 0)


def test_scale_jitter_multiplies_the_image_scale():
    # image_scale 1.5 jittered by j = 2 is the crop at image_scale 3
    image, target = _toy()
    jit = Augmentation(scale_jitter=(0.5, 2.0))
    want_img, want = random_crop_flip(image, target, 10, 0.0, 0.0, _Rng([3, 5], [0.9, 0.9]),
                                      image_scale=3.0)
    img, t = random_crop_flip(image, target, 10, 0.0, 0.0,
                              _Rng([3, 5], [0.9, 0.9], [math.log(2.0)]), image_scale=1.5,
                              augment=jit)
    np.testing.assert_allclose(img, want_img, atol=1e-4)
    for key in ("masks", "labels", "boxes", "keypoints"):
        np.testing.assert_allclose(t[key], want[key], atol=1e-4)


def test_gamma_and_channel_gains_by_hand():
    image, target = _toy()
    aug = Augmentation(gamma_jitter=(0.5, 2.0), channel_gain_jitter=(0.8, 1.2))
    plain_img, plain = random_crop_flip(image, target, 8, 0.0, 0.0, _Rng([0, 0], [0.9, 0.9]))
    img, t = random_crop_flip(image, target, 8, 0.0, 0.0,
                              _Rng([0, 0], [0.9, 0.9], [math.log(1.5), 0.8, 1.0, 1.2]),
                              augment=aug)
    want = 255.0 * (plain_img.astype(np.float64) / 255.0) ** 1.5 * np.array([0.8, 1.0, 1.2])
    assert img.dtype == np.float32
    np.testing.assert_allclose(img, want, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(t["masks"], plain["masks"])


def test_sample_crop_equals_random_crop_flip_with_every_augmentation():
    ds = load_sample("val")
    aug = Augmentation.from_config(get_preset("nuclei").train)
    assert aug.rot90 and aug.scale_jitter != (1, 1)
    for i in range(len(ds)):
        for seed in range(3):
            a_img, a = random_crop_flip(*ds[i], 96, 0.5, 0.5, np.random.default_rng(seed),
                                        image_scale=2.0, augment=aug)
            b_img, b = sample_crop(ds, i, 96, 0.5, 0.5, np.random.default_rng(seed),
                                   image_scale=2.0, augment=aug)
            np.testing.assert_array_equal(a_img, b_img)
            for key in ("boxes", "labels", "masks"):
                np.testing.assert_array_equal(a[key], b[key])
            assert b_img.shape == (96, 96, 3) and len(b["labels"]) > 0


def test_augmentations_off_draw_nothing():
    # the stream after a crop without augmentation is where it was before they existed: the
    # next draw is the same, so presets without them keep their crops
    ds = load_sample("val")
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    sample_crop(ds, 0, 96, 0.5, 0.5, r1)
    sample_crop(ds, 0, 96, 0.5, 0.5, r2, augment=Augmentation.from_config(TrainConfig()))
    assert r1.random() == r2.random()
    r3, r4 = np.random.default_rng(5), np.random.default_rng(5)
    sample_crop(ds, 0, 96, 0.5, 0.5, r3, augment=Augmentation(rot90=True))
    sample_crop(ds, 0, 96, 0.5, 0.5, r4)
    r4.integers(0, 4)  # rot90 on: exactly one more draw, after the flips
    assert r3.random() == r4.random()


@pytest.mark.parametrize("field, value", [("scale_jitter", (2.0, 1.0)), ("scale_jitter", (0.0, 1.0)),
                                          ("gamma_jitter", (1.0,)), ("channel_gain_jitter", (1.0, math.inf)),
                                          ("rot90", 1)])
def test_train_config_refuses_bad_ranges(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
