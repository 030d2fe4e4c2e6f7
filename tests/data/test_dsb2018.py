"""The DSB2018 converter (minimaskrcnn.data.dsb2018): the public stage1_train layout to the
project's COCO files.

The data is tests/data/dsb2018_raw_sample: five images of the public download in its own layout
(four of the project's train split, one of val). Its expected.json was computed once from the
project's converted DSB2018 (its train.json, val.json and images/, which CI does not have): for
each image the split, size, number of nuclei, total area, a sha256 of the RGB pixels and one of
the sorted decoded masks, each hash defined in the file and recomputed here independently of the
package's own fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from minimaskrcnn._atomic import temporary_files
from minimaskrcnn.data import dsb2018
from minimaskrcnn.data.coco import CocoDataset, DatasetError
from minimaskrcnn.data.dsb2018 import (
    CATEGORY,
    SPLIT_DIR,
    convert_dsb2018,
    image_fingerprint,
    masks_fingerprint,
    project_fingerprints,
    read_mask,
    split_ids,
)

SAMPLE = os.path.join(os.path.dirname(__file__), "dsb2018_raw_sample")
STAGE1 = os.path.join(SAMPLE, "stage1_train")
with open(os.path.join(SAMPLE, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)["images"]
VAL_ID = "e5f8ad0f0a43af8ca57e31e16800108abdfb44a7e962a71d246f72d2dbde42bf"
SMALL_TRAIN_ID = "58c593bcb98386e7fd42a1d34e291db93477624b164e83ab2afa3caa90d1d921"


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _copy(tmp_path, ids=(SMALL_TRAIN_ID,)) -> str:
    """A stage1_train folder in tmp_path holding copies of the sample's ``ids``."""
    root = tmp_path / "stage1_train"
    for i in ids:
        shutil.copytree(os.path.join(STAGE1, i), root / i)
    return str(root)


def _masks_of(ds_json: dict, image_id: int) -> list[np.ndarray]:
    return [mask_utils.decode(a["segmentation"]) for a in ds_json["annotations"]
            if a["image_id"] == image_id]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsb2018")
    summary = convert_dsb2018(STAGE1, out, progress=False)
    return str(out), summary


# --------------------------------------------------------------------------------------------
# The sample converts to what the project's files hold
# --------------------------------------------------------------------------------------------


def test_sample_gives_the_projects_images_masks_and_split(converted):
    out, _ = converted
    files = {s: _load(os.path.join(out, f"{s}.json")) for s in ("train", "val", "rest")}
    assert sorted(i["file_name"] for i in files["val"]["images"]) == [f"{VAL_ID}.png"]
    assert len(files["train"]["images"]) == 4 and files["rest"]["images"] == []
    seen = set()
    for split, d in files.items():
        for im in d["images"]:
            image_id = im["file_name"][:-4]
            exp = EXPECTED[image_id]
            seen.add(image_id)
            assert exp["split"] == split
            assert (im["height"], im["width"]) == (exp["height"], exp["width"])
            with Image.open(os.path.join(out, "images", im["file_name"])) as img:
                assert img.mode == "RGB"
                rgb = np.asarray(img)
            assert rgb.shape == (exp["height"], exp["width"], 3)
            assert hashlib.sha256(rgb.tobytes()).hexdigest() == exp["image_sha256"]
            masks = _masks_of(d, im["id"])
            assert len(masks) == exp["nuclei"]
            joined = b"".join(sorted(m.astype(np.uint8).tobytes() for m in masks))
            assert hashlib.sha256(joined).hexdigest() == exp["masks_sha256"]
            assert sum(int(m.sum()) for m in masks) == exp["area"]
    assert seen == set(EXPECTED)


def test_masks_are_the_public_files_pixel_for_pixel(converted):
    out, _ = converted
    d = _load(os.path.join(out, "val.json"))
    mask_dir = os.path.join(STAGE1, VAL_ID, "masks")
    public = [np.asarray(Image.open(os.path.join(mask_dir, n))) > 0
              for n in sorted(os.listdir(mask_dir))]
    mine = [m.astype(bool) for m in _masks_of(d, 1)]
    # in the sorted order of the mask files' names
    assert len(mine) == len(public) == 6
    for a, b in zip(mine, public, strict=True):
        np.testing.assert_array_equal(a, b)


def test_records_follow_the_projects_conventions(converted):
    out, _ = converted
    d = _load(os.path.join(out, "train.json"))
    assert list(d) == ["images", "annotations", "categories"]
    assert d["categories"] == [{"id": 1, "name": "nucleus", "supercategory": "cell"}]
    assert CATEGORY == d["categories"][0]
    names = [im["file_name"] for im in d["images"]]
    assert names == sorted(names)
    assert [im["id"] for im in d["images"]] == [1, 2, 3, 4]
    anns = d["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1)) and len(anns) == 24
    assert [a["image_id"] for a in anns] == sorted(a["image_id"] for a in anns)
    sizes = {im["id"]: [im["height"], im["width"]] for im in d["images"]}
    # key order too: converting the full download writes the project's files byte for byte
    assert all(list(im) == ["id", "file_name", "height", "width"] for im in d["images"])
    for a in anns:
        assert list(a) == ["id", "image_id", "category_id", "iscrowd", "segmentation", "area",
                           "bbox"]
        assert list(a["segmentation"]) == ["size", "counts"]
        assert a["category_id"] == 1 and a["iscrowd"] == 0
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["segmentation"]["size"] == sizes[a["image_id"]]
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        ys, xs = np.nonzero(m)
        # [x, y, w, h] of the mask's pixels, as the project's files (w = x_max - x_min + 1)
        assert a["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                             float(ys.max() - ys.min() + 1)]
        assert a["area"] == float(m.sum()) and isinstance(a["area"], float)


def test_summary_counts_and_agreement(converted):
    out, s = converted
    assert s.out_dir == out
    assert s.images == {"train": 4, "val": 1, "rest": 0}
    assert s.nuclei == {"train": 24, "val": 6, "rest": 0}
    assert s.empty_masks == () and s.empty_masks_skipped == 0
    assert s.missing == {"train": 477, "val": 81}
    assert s.agree == 5 and s.differ == ()
    assert s.identical_files == ()  # the split is incomplete: not the project's file
    text = str(s)
    assert "5 images, 30 nuclei" in text and "5 of 5 images" in text
    assert "val.json: 1 images, 6 nuclei" in text
    assert temporary_files(out) == [] and temporary_files(os.path.join(out, "images")) == []


def test_output_loads_with_pycocotools_and_coco_dataset(converted):
    out, _ = converted
    for split, n in (("train", 4), ("val", 1), ("rest", 0)):
        coco = COCO(os.path.join(out, f"{split}.json"))
        assert len(coco.getImgIds()) == n
        ds = CocoDataset(os.path.join(out, f"{split}.json"), os.path.join(out, "images"))
        assert len(ds.image_ids) == n
    ds = CocoDataset(os.path.join(out, "val.json"), os.path.join(out, "images"))
    image, target = ds[0]
    assert image.shape == (256, 256, 3) and target["masks"].shape == (6, 256, 256)
    assert ds.class_names == ["nucleus"]


def test_rerun_writes_the_same_files(converted, tmp_path, monkeypatch):
    out, _ = converted
    # a rerun is byte-identical, and the summary says so when the sha256 of a written file is
    # the project's (as it is for the full download; here the project's is faked by the first run)
    wanted = {name: hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
              for name in ("train.json", "val.json")}
    monkeypatch.setattr(dsb2018, "_project_file_hashes", lambda: {**wanted, "val.json": "0"})
    again = tmp_path / "again"
    s = convert_dsb2018(STAGE1, again, progress=False)
    for name in ("train.json", "val.json", "rest.json"):
        assert (again / name).read_bytes() == open(os.path.join(out, name), "rb").read()
    assert s.identical_files == ("train.json",)
    assert "train.json: 4 images, 24 nuclei (477 of" in str(s)
    assert "(byte-identical to the project's)" in str(s).splitlines()[1]


# --------------------------------------------------------------------------------------------
# The split and the fingerprints that ship with the package
# --------------------------------------------------------------------------------------------


def test_split_lists_and_fingerprints_ship_with_the_package():
    train, val = split_ids("train"), split_ids("val")
    assert len(train) == 481 and len(val) == 82 and not set(train) & set(val)
    assert all(len(i) == 64 and int(i, 16) >= 0 for i in train + val)
    fp = project_fingerprints()
    assert set(fp) == set(train) | set(val)
    for image_id, exp in EXPECTED.items():
        assert image_id in (train if exp["split"] == "train" else val)
        assert fp[image_id][0] == exp["nuclei"]
    with pytest.raises(ValueError, match="split must be"):
        split_ids("test")
    assert sorted(os.listdir(SPLIT_DIR)) == ["README.md", "files.sha256", "fingerprints.tsv",
                                             "train.txt", "val.txt"]


def test_fingerprints_are_order_free_and_see_one_pixel():
    rng = np.random.default_rng(0)
    masks = [rng.random((8, 9)) < 0.3 for _ in range(3)]
    fp = masks_fingerprint(masks, 8, 9)
    assert masks_fingerprint(masks[::-1], 8, 9) == fp
    assert masks_fingerprint([m.astype(np.uint8) for m in masks], 8, 9) == fp
    changed = [m.copy() for m in masks]
    changed[1][0, 0] = ~changed[1][0, 0]
    assert masks_fingerprint(changed, 8, 9) != fp
    assert masks_fingerprint(masks[:2], 8, 9) != fp
    assert masks_fingerprint([], 8, 9) != masks_fingerprint([], 9, 8)
    image = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    other = image.copy()
    other[3, 4, 2] ^= 1
    assert image_fingerprint(image) != image_fingerprint(other)
    assert len(image_fingerprint(image)) == len(fp) == 16


def test_changed_masks_or_pixels_are_named_in_the_summary(tmp_path):
    root = _copy(tmp_path, (SMALL_TRAIN_ID, VAL_ID))
    mask_dir = os.path.join(root, SMALL_TRAIN_ID, "masks")
    os.remove(os.path.join(mask_dir, sorted(os.listdir(mask_dir))[0]))  # one nucleus less
    path = os.path.join(root, VAL_ID, "images", f"{VAL_ID}.png")
    rgba = np.array(Image.open(path))
    rgba[0, 0, 0] ^= 1
    Image.fromarray(rgba).save(path)
    s = convert_dsb2018(root, tmp_path / "out", progress=False)
    assert s.agree == 0
    assert sorted(s.differ) == [f"{SMALL_TRAIN_ID} (masks)", f"{VAL_ID} (image)"]
    assert "0 of 2 images" in str(s) and f"{SMALL_TRAIN_ID} (masks)" in str(s)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_rgb_and_grey_inputs_give_the_same_rgb(tmp_path, mode):
    root = _copy(tmp_path)
    path = os.path.join(root, SMALL_TRAIN_ID, "images", f"{SMALL_TRAIN_ID}.png")
    rgba = np.array(Image.open(path))
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 0] == rgba[..., 2]).all()
    Image.open(path).convert(mode).save(path)  # a grey image: R = G = B, so nothing is lost
    s = convert_dsb2018(root, tmp_path / "out", progress=False)
    assert s.agree == 1 and s.differ == ()


def test_image_in_neither_list_goes_to_rest(tmp_path):
    root = _copy(tmp_path, (VAL_ID,))
    new_id = "0" * 64
    shutil.copytree(os.path.join(STAGE1, SMALL_TRAIN_ID), os.path.join(root, new_id))
    os.rename(os.path.join(root, new_id, "images", f"{SMALL_TRAIN_ID}.png"),
              os.path.join(root, new_id, "images", f"{new_id}.png"))
    out = tmp_path / "out"
    s = convert_dsb2018(root, out, progress=False)
    assert s.images == {"train": 0, "val": 1, "rest": 1}
    assert s.nuclei == {"train": 0, "val": 6, "rest": 3}
    assert s.agree == 1  # the rest image is not in the project's split: not compared
    rest = _load(out / "rest.json")
    assert [im["file_name"] for im in rest["images"]] == [f"{new_id}.png"]
    assert len(rest["annotations"]) == 3
    assert (out / "images" / f"{new_id}.png").is_file()
    assert _load(out / "train.json")["images"] == []


# --------------------------------------------------------------------------------------------
# Bad input: one line naming the file
# --------------------------------------------------------------------------------------------


def _one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_empty_mask_is_skipped_and_counted(tmp_path):
    root = _copy(tmp_path)
    empty = os.path.join(root, SMALL_TRAIN_ID, "masks", "zz_empty.png")
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(empty)
    s = convert_dsb2018(root, tmp_path / "out", progress=False)
    assert s.empty_masks == (empty,) and s.empty_masks_skipped == 1
    assert s.nuclei["train"] == 3 and s.agree == 1
    assert "empty masks skipped: 1" in str(s)


def test_unreadable_image_png(tmp_path):
    root = _copy(tmp_path)
    path = os.path.join(root, SMALL_TRAIN_ID, "images", f"{SMALL_TRAIN_ID}.png")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError) as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    assert "cannot read image" in _one_line_naming(e, path)


@pytest.mark.parametrize("content", [b"", b"GIF89a garbage", "truncated"])
def test_unreadable_mask_png(tmp_path, content):
    root = _copy(tmp_path)
    mask_dir = os.path.join(root, SMALL_TRAIN_ID, "masks")
    path = os.path.join(mask_dir, sorted(os.listdir(mask_dir))[1])
    if content == "truncated":
        content = open(path, "rb").read()[:60]
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(DatasetError) as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    assert "cannot read mask PNG" in _one_line_naming(e, path)


def test_mask_of_another_size(tmp_path):
    root = _copy(tmp_path)
    path = os.path.join(root, SMALL_TRAIN_ID, "masks", "small.png")
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(path)
    with pytest.raises(DatasetError) as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    msg = _one_line_naming(e, path)
    assert "10x12" in msg and "256x256" in msg


def test_folder_that_is_not_stage1_train(tmp_path):
    # the download's parent folder: names stage1_train as the likely meaning
    _copy(tmp_path)
    (tmp_path / "stage1_train.zip").write_bytes(b"PK")
    with pytest.raises(DatasetError) as e:
        convert_dsb2018(tmp_path, tmp_path / "out", progress=False)
    msg = _one_line_naming(e, tmp_path)
    assert "not a DSB2018 stage1_train folder" in msg and "stage1_train?" in msg
    # a folder of other things
    other = tmp_path / "other"
    (other / "a").mkdir(parents=True)
    (other / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a DSB2018 stage1_train folder") as e:
        convert_dsb2018(other, tmp_path / "out", progress=False)
    _one_line_naming(e, other)
    # not a folder at all
    with pytest.raises(DatasetError, match="not a folder") as e:
        convert_dsb2018(tmp_path / "missing", tmp_path / "out", progress=False)
    _one_line_naming(e, tmp_path / "missing")
    assert not (tmp_path / "out").exists()  # nothing written before the layout is checked


def test_stage1_test_without_masks(tmp_path):
    root = _copy(tmp_path, (SMALL_TRAIN_ID, VAL_ID))
    for i in (SMALL_TRAIN_ID, VAL_ID):
        shutil.rmtree(os.path.join(root, i, "masks"))
    with pytest.raises(DatasetError, match="stage1_test") as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    _one_line_naming(e, root)


def test_one_folder_without_its_image_or_masks(tmp_path):
    root = _copy(tmp_path, (SMALL_TRAIN_ID, VAL_ID))
    os.remove(os.path.join(root, VAL_ID, "images", f"{VAL_ID}.png"))
    with pytest.raises(DatasetError, match="missing") as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    _one_line_naming(e, os.path.join(root, VAL_ID, "images", f"{VAL_ID}.png"))
    shutil.rmtree(os.path.join(root, VAL_ID))
    shutil.copytree(os.path.join(STAGE1, VAL_ID), os.path.join(root, VAL_ID))
    shutil.rmtree(os.path.join(root, VAL_ID, "masks"))
    with pytest.raises(DatasetError, match="missing") as e:
        convert_dsb2018(root, tmp_path / "out", progress=False)
    _one_line_naming(e, os.path.join(root, VAL_ID, "masks"))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_read_mask_kinds(tmp_path, mode):
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    path = tmp_path / "m.png"
    if mode == "1":
        Image.fromarray(m).save(path)
    elif mode == "I;16":
        Image.fromarray(m.astype(np.uint16) * 300).save(path)
    else:
        Image.fromarray(m.astype(np.uint8) * 255).convert(mode).save(path)
    np.testing.assert_array_equal(read_mask(str(path)), m)
