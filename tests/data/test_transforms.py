"""Training transforms (crop, pad, flips, redraw, boxes from masks), standardisation, the seeded
batches, the embedded sample and the synthetic shapes."""

import numpy as np
import pytest

from minimaskrcnn.data import (
    CocoDataset,
    TrainBatches,
    load_sample,
    random_crop_flip,
    sample_crop,
    shapes,
    standardize,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

class _FixedRng:
    """Stands in for np.random.Generator: integers() returns the queued offsets, random() the
    queued uniforms, so a test chooses the crop window and the flips."""

    def __init__(self, ints, uniforms):
        self.ints, self.uniforms = list(ints), list(uniforms)

    def integers(self, low, high):
        v = self.ints.pop(0)
        assert low <= v < high, (low, v, high)
        return v

    def random(self):
        return self.uniforms.pop(0)


def test_standardize_by_hand():
    # half the values 0, half 2 -> mean 1, population std 1 -> -1 and +1 (up to the 1e-6)
    image = np.zeros((2, 3, 3), np.uint8)
    image[0] = 2
    out = standardize(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], -1.0, rtol=1e-5)
    flat = np.zeros((4, 4, 3), np.uint8) + 7  # constant image -> zeros, no division by zero
    np.testing.assert_array_equal(standardize(flat), 0.0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        standardize(np.zeros((4, 4), np.uint8))


def _toy():
    """6x6 image with pixel values 10 * row + col in channel 0; two instances."""
    image = np.zeros((6, 6, 3), np.uint8)
    image[:, :, 0] = 10 * np.arange(6)[:, None] + np.arange(6)[None, :]
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 0:2, 0:3] = 1  # top-left, rows 0..1 cols 0..2
    masks[1, 4:6, 3:5] = 1  # rows 4..5 cols 3..4
    return image, {"masks": masks, "labels": np.array([1, 2]), "boxes": None, "image_id": 3}


def test_crop_keeps_inside_instances_and_recomputes_boxes():
    image, target = _toy()
    # window rows 1..4, cols 1..4: instance 0 keeps rows 1, cols 1..2; instance 1 rows 4, cols 3..4
    img, t = random_crop_flip(image, target, 4, 0.5, 0.5, _FixedRng([1, 1], [0.9, 0.9]))
    np.testing.assert_array_equal(img[:, :, 0], image[1:5, 1:5, 0])
    np.testing.assert_array_equal(t["labels"], [1, 2])
    np.testing.assert_array_equal(t["boxes"], [[0, 0, 2, 1], [2, 3, 4, 4]])
    assert t["masks"].shape == (2, 4, 4) and t["image_id"] == 3


def test_crop_drops_empty_instances_and_flips():
    image, target = _toy()
    # window rows 2..5, cols 2..5: instance 0 gone; instance 1 at rows 2..3, cols 1..2 of the crop.
    # hflip (0.1 < 0.5): cols -> 3 - col: cols 1..2 -> 1..2; vflip: rows 2..3 -> 0..1
    img, t = random_crop_flip(image, target, 4, 0.5, 0.5, _FixedRng([2, 2], [0.1, 0.1]))
    np.testing.assert_array_equal(img[:, :, 0], image[2:6, 2:6, 0][::-1, ::-1])
    np.testing.assert_array_equal(t["labels"], [2])
    np.testing.assert_array_equal(t["boxes"], [[1, 0, 3, 2]])
    np.testing.assert_array_equal(t["masks"][0], np.pad(np.ones((2, 2)), ((0, 2), (1, 1))))


def test_crop_without_instance_is_redrawn():
    image, target = _toy()
    target["masks"][1] = 0  # only instance 0 (rows 0..1, cols 0..2) remains
    # first window rows 2..5 / cols 2..5 has nothing -> redrawn at (0, 0)
    img, t = random_crop_flip(image, target, 4, 0.5, 0.5, _FixedRng([2, 2, 0, 0], [0.9, 0.9]))
    np.testing.assert_array_equal(img[:, :, 0], image[0:4, 0:4, 0])
    np.testing.assert_array_equal(t["boxes"], [[0, 0, 3, 2]])
    # after max_tries empty windows the last one is returned with empty targets
    img, t = random_crop_flip(image, target, 4, 0.5, 0.5, _FixedRng([2, 2, 2, 2], [0.9, 0.9]),
                              max_tries=2)
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 4, 4) and t["labels"].shape == (0,)


def test_small_image_is_zero_padded_bottom_right():
    image, target = _toy()
    img, t = random_crop_flip(image, target, 8, 0.0, 0.0, np.random.default_rng(0))
    assert img.shape == (8, 8, 3)
    np.testing.assert_array_equal(img[:6, :6], image)
    assert not img[6:].any() and not img[:, 6:].any()
    np.testing.assert_array_equal(t["boxes"], [[0, 0, 3, 2], [3, 4, 5, 6]])
    assert t["masks"].shape == (2, 8, 8)


def test_sample_crop_equals_random_crop_flip_on_the_sample():
    ds = load_sample("val")
    for i in range(len(ds)):
        for seed in range(2):
            a_img, a = random_crop_flip(*ds[i], 128, 0.5, 0.5, np.random.default_rng(seed))
            b_img, b = sample_crop(ds, i, 128, 0.5, 0.5, np.random.default_rng(seed))
            np.testing.assert_array_equal(a_img, b_img)
            for key in ("boxes", "labels", "masks"):
                np.testing.assert_array_equal(a[key], b[key])
            assert len(b["labels"]) > 0
            # boxes are the tight boxes of the masks
            for box, m in zip(b["boxes"], b["masks"], strict=True):
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def test_crop_instances_counts_the_crop_without_reading_it():
    """TrainBatches.instance_counts (crop_instances: annotation boxes against the first window,
    the same draws) against the instances of the crops themselves. nuclei-mini's 256-px crops
    at scale 1: every count exact. nuclei's (scale 2, jitter, rotations): a box may meet the
    window while its mask does not, or the first window hold nobody (then sample_crop draws
    another): most counts exact."""
    from minimaskrcnn.config import get_preset

    for preset, exact in (("nuclei-mini", 1.0), ("nuclei", 0.8)):
        cfg = get_preset(preset)
        batches = TrainBatches.from_config(load_sample("train"), cfg.train,
                                           image_scale=cfg.model.image_scale)
        pairs = []
        for t in range(10):
            counts = batches.instance_counts(t)
            assert len(counts) == cfg.train.batch_size
            pairs += zip(counts, [len(b[1]["boxes"]) for b in batches.batch(t)], strict=True)
        assert sum(n == k for n, k in pairs) >= exact * len(pairs), (preset, pairs)
        assert max(n for n, _ in pairs) > 0


def test_batches_are_a_function_of_seed_and_iteration():
    ds = load_sample("train")
    a = TrainBatches(ds, 2, 64, 0.5, 0.5, seed=3)
    b = TrainBatches(ds, 2, 64, 0.5, 0.5, seed=3)
    first = a.batch(13)
    for t in (0, 5):
        b.batch(t)  # other calls in between change nothing
    second = b.batch(13)
    for (ia, ta), (ib, tb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta["masks"], tb["masks"])
    assert first[0][0].shape == (3, 64, 64) and first[0][0].dtype == np.float32
    # one epoch visits every image exactly once
    n = len(a.indices)
    assert sorted(a.image_index(p) for p in range(n)) == list(range(n))
    other = TrainBatches(ds, 2, 64, 0.5, 0.5, seed=4)
    assert [other.image_index(p) for p in range(n)] != [a.image_index(p) for p in range(n)]


def test_batches_skip_images_without_instances():
    d = {"images": [{"id": 1, "file_name": "a", "height": 4, "width": 4},
                    {"id": 2, "file_name": "b", "height": 4, "width": 4}],
         "categories": [{"id": 1}],
         "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "iscrowd": 0,
                          "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}]}
    ds = CocoDataset(d, images={1: np.zeros((4, 4, 3), np.uint8), 2: np.zeros((4, 4, 3), np.uint8)})
    assert list(TrainBatches(ds, 1, 4, 0, 0, 0).indices) == [1]
    d["annotations"] = []
    with pytest.raises(ValueError, match="no image with instances"):
        TrainBatches(CocoDataset(d, images={1: np.zeros((4, 4)), 2: np.zeros((4, 4))}), 1, 4, 0, 0, 0)


def test_embedded_sample():
    train, val = load_sample("train"), load_sample("val")
    assert (len(train), len(val)) == (24, 8)
    assert train.category_ids == [1] and train.class_names == ["nucleus"]
    image, t = val[0]
    assert image.dtype == np.uint8 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
    assert len(t["labels"]) >= 10
    assert not set(train.coco.imgs[i]["file_name"] for i in train.image_ids) & set(
        val.coco.imgs[i]["file_name"] for i in val.image_ids)
    with pytest.raises(ValueError, match="split must be"):
        load_sample("test")


def test_shapes_deterministic_occlusion_and_files(tmp_path):
    images, coco = shapes.make_shapes(6, seed=1, image_size=64, max_shapes=5, max_size=30)
    images2, coco2 = shapes.make_shapes(6, seed=1, image_size=64, max_shapes=5, max_size=30)
    assert coco == coco2 and all((images[k] == images2[k]).all() for k in images)
    assert coco != shapes.make_shapes(6, seed=2, image_size=64, max_shapes=5, max_size=30)[1]
    ds = CocoDataset(coco, images=images)
    assert ds.class_names == ["square", "circle", "triangle"]
    total = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (64, 64, 3)
        assert set(t["labels"].tolist()) <= {1, 2, 3}
        # occlusion: visible masks never overlap
        assert (t["masks"].sum(axis=0) <= 1).all()
        total += len(t["labels"])
    assert total >= 6
    ann_file, image_dir = shapes.write_shapes(str(tmp_path), 6, seed=1, image_size=64,
                                              max_shapes=5, max_size=30)
    disk = CocoDataset(ann_file, image_dir)
    for i in range(len(ds)):
        np.testing.assert_array_equal(disk[i][0], ds[i][0])
        np.testing.assert_array_equal(disk[i][1]["masks"], ds[i][1]["masks"])


def test_shape_masks_by_hand():
    # square of side 4 centred at (4, 4): pixel centres 2.5..5.5 -> cols/rows 2..5
    m = shapes._shape_mask(1, 4.0, 4.0, 4.0, 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(m, expected)
    # circle of diameter 2 at (4, 4): centres at distance sqrt(0.5) -> the 2x2 block rows/cols 3..4
    c = shapes._shape_mask(2, 4.0, 4.0, 2.0, 8, 8)
    np.testing.assert_array_equal(np.argwhere(c), [[3, 3], [3, 4], [4, 3], [4, 4]])
    # triangle apex (4, 0), base y = 8 from x = 0 to 8: row 7 (y 7.5) spans |x - 4| <= 3.75
    t = shapes._shape_mask(3, 4.0, 4.0, 8.0, 8, 8)
    np.testing.assert_array_equal(np.flatnonzero(t[7]), np.arange(0, 8))
    # row 0 (y 0.5): |x - 4| <= 0.25 holds for no centre; row 1 (y 1.5): <= 0.75 -> cols 3, 4
    assert not t[0].any()
    np.testing.assert_array_equal(np.flatnonzero(t[1]), [3, 4])


# -- image_scale: crops of the resized image ----------------------------------------------------


def test_scaled_crop_is_the_crop_of_the_scaled_image():
    # integer scale 3: the masks' nearest-neighbour resize is np.repeat; the image is the whole
    # image resized (resize_bilinear) and then cut, while the crop resamples only the window
    from minimaskrcnn.model.transform import resize_bilinear

    image, target = _toy()
    target["keypoints"] = np.array([[[1.0, 1.0, 2]], [[4.0, 5.0, 2]]], np.float32)
    big = resize_bilinear(image.transpose(2, 0, 1).astype(np.float32), (18, 18)).transpose(1, 2, 0)
    big_masks = target["masks"].repeat(3, axis=1).repeat(3, axis=2)
    for y0, x0, crop in ((0, 0, 9), (7, 5, 8), (8, 6, 10), (0, 0, 20)):
        img, t = random_crop_flip(image, target, crop, 0.0, 0.0, _FixedRng([y0, x0], [0.9, 0.9]),
                                  image_scale=3.0)
        assert img.dtype == np.float32 and img.shape == (crop, crop, 3)
        want = big[y0:y0 + crop, x0:x0 + crop]
        np.testing.assert_allclose(img[:want.shape[0], :want.shape[1]], want, atol=1e-4)
        assert not img[want.shape[0]:].any() and not img[:, want.shape[1]:].any()
        cut = big_masks[:, y0:y0 + crop, x0:x0 + crop]
        keep = cut.reshape(2, -1).any(axis=1)
        np.testing.assert_array_equal(t["masks"][:, :cut.shape[1], :cut.shape[2]], cut[keep])
        np.testing.assert_array_equal(t["labels"], target["labels"][keep])
        # keypoints scale with the image: (x, y) -> (3x - x0, 3y - y0), dropped outside the crop
        kp = target["keypoints"][keep, 0]
        for (x, y, _), got in zip(kp, t["keypoints"][:, 0], strict=True):
            inside = 0 <= 3 * x - x0 <= crop and 0 <= 3 * y - y0 <= crop
            np.testing.assert_array_equal(got, [3 * x - x0, 3 * y - y0, 2] if inside else 0)


def test_scaled_sample_crop_equals_random_crop_flip_and_scale_one_is_untouched():
    ds = load_sample("val")
    for i in range(len(ds)):
        for seed, scale in ((0, 2.5), (1, 0.75)):
            a_img, a = random_crop_flip(*ds[i], 96, 0.5, 0.5, np.random.default_rng(seed),
                                        image_scale=scale)
            b_img, b = sample_crop(ds, i, 96, 0.5, 0.5, np.random.default_rng(seed),
                                   image_scale=scale)
            np.testing.assert_array_equal(a_img, b_img)
            for key in ("boxes", "labels", "masks"):
                np.testing.assert_array_equal(a[key], b[key])
        one, _ = sample_crop(ds, i, 96, 0.5, 0.5, np.random.default_rng(0), image_scale=1.0)
        plain, _ = sample_crop(ds, i, 96, 0.5, 0.5, np.random.default_rng(0))
        assert one.dtype == np.uint8
        np.testing.assert_array_equal(one, plain)
    with pytest.raises(ValueError, match="image scale must be a finite number > 0"):
        sample_crop(ds, 0, 96, 0.5, 0.5, np.random.default_rng(0), image_scale=-2.0)
