"""CocoDataset and read_image: every image kind, every segmentation kind, crowds, empty images,
and the errors (malformed file, missing image, annotation outside its image)."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.data import CocoDataset, DatasetError, read_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

# ------------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_read_8bit_kinds(tmp_path, mode):
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)  # (1, 2, 3)
    if mode in ("L", "LA"):
        grey = np.array([[7, 200]], dtype=np.uint8)
        img = Image.fromarray(grey, "L")
        expected = np.repeat(grey[:, :, None], 3, axis=2)
        if mode == "LA":
            img = Image.merge("LA", [img, Image.fromarray(np.full_like(grey, 9), "L")])
    elif mode == "P":
        img = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        expected = rgb
    else:
        img = Image.fromarray(rgb, "RGB")
        expected = rgb
        if mode == "RGBA":  # alpha dropped, colours untouched even where alpha is 0
            img = Image.fromarray(np.dstack([rgb, np.array([[0, 255]], np.uint8)]), "RGBA")
    path = tmp_path / f"x_{mode}.png"
    img.save(path)
    out = read_image(str(path))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out, expected)


def test_read_16bit_scaled_by_image_max(tmp_path):
    # 12-bit data in a 16-bit PNG: scaled by 255 / 4000, rounded: 0 -> 0, 1000 -> 63.75 -> 64,
    # 2000 -> 127.5 -> 128 (round half to even: 128), 4000 -> 255.
    a = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(a).save(path)
    out = read_image(str(path))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 64], [128, 255]])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_read_missing_and_corrupt_image(tmp_path):
    with pytest.raises(DatasetError, match="nothere.png: image file not found"):
        read_image(str(tmp_path / "nothere.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="bad.png: cannot read image"):
        read_image(str(bad))


# ------------------------------------------------------------------------------- annotations


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _write(tmp_path, d, images=None):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    for im in d["images"]:
        arr = np.zeros((im["height"], im["width"], 3), np.uint8) if images is None else images[im["id"]]
        Image.fromarray(arr).save(img_dir / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(d))
    return str(ann), str(img_dir)


def _base():
    m_rle = np.zeros((8, 10), np.uint8)
    m_rle[2:5, 3:7] = 1  # rows 2..4, cols 3..6 -> box [3, 2, 7, 5]
    m_crowd = np.zeros((8, 10), np.uint8)
    m_crowd[6:8, 0:2] = 1
    # uncompressed RLE (column-major runs) of rows 0..1, col 9: skip 72 (cols 0..8), 2 ones, 6
    uncompressed = {"size": [8, 10], "counts": [72, 2, 6]}
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 8, "width": 10},
            {"id": 9, "file_name": "empty.png", "height": 4, "width": 4},
        ],
        "categories": [{"id": 5, "name": "cat5"}, {"id": 2, "name": "cat2"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "segmentation": _rle(m_rle),
             "bbox": [3, 2, 4, 3], "iscrowd": 0, "area": 12},
            # polygon: the square with corners (0, 0) and (2, 2) -> pixels rows 0..1, cols 0..1
            {"id": 2, "image_id": 7, "category_id": 2,
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]], "bbox": [0, 0, 2, 2], "iscrowd": 0,
             "area": 4},
            {"id": 3, "image_id": 7, "category_id": 5, "segmentation": _rle(m_crowd),
             "bbox": [0, 6, 2, 2], "iscrowd": 1, "area": 4},
            {"id": 4, "image_id": 7, "category_id": 2, "segmentation": uncompressed,
             "iscrowd": 0, "area": 2},
        ],
    }


def test_dataset_reads_rle_polygon_uncompressed_crowd_and_empty(tmp_path):
    ds = CocoDataset(*_write(tmp_path, _base()))
    assert len(ds) == 2 and ds.image_ids == [7, 9]
    assert ds.category_ids == [2, 5] and ds.class_names == ["cat2", "cat5"]  # sorted by id
    image, t = ds[0]
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    assert t["image_id"] == 7
    assert t["masks"].shape == (3, 8, 10) and t["masks"].dtype == np.uint8
    np.testing.assert_array_equal(t["labels"], [2, 1, 1])  # cat5 -> 2, cat2 -> 1
    assert t["labels"].dtype == np.int64 and t["boxes"].dtype == np.float32
    np.testing.assert_array_equal(t["boxes"], [[3, 2, 7, 5], [0, 0, 2, 2], [9, 0, 10, 2]])
    assert t["masks"][0].sum() == 12 and t["masks"][0][2:5, 3:7].all()
    assert t["masks"][1].sum() == 4 and t["masks"][1][0:2, 0:2].all()
    assert t["masks"][2].sum() == 2 and t["masks"][2][0:2, 9].all()
    np.testing.assert_array_equal(t["crowd_boxes"], [[0, 6, 2, 8]])
    assert len(ds.coco.anns) == 4  # crowd kept for COCOeval
    image, t = ds[1]
    assert image.shape == (4, 4, 3)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 4, 4)
    assert not ds.has_instances(1) and ds.has_instances(0)


def test_dataset_in_memory_images():
    d = _base()
    images = {7: np.full((8, 10), 3, np.uint8), 9: np.zeros((4, 4, 4), np.uint8)}
    ds = CocoDataset(d, images=images)
    np.testing.assert_array_equal(ds.load_image(0), np.full((8, 10, 3), 3))
    assert ds.load_image(1).shape == (4, 4, 3)


def test_malformed_json_names_file(tmp_path):
    ann, img_dir = _write(tmp_path, _base())
    with open(ann) as f:
        text = f.read()
    with open(ann, "w") as f:
        f.write(text[: len(text) // 2])  # truncated
    with pytest.raises(DatasetError, match=r"ann\.json: not valid JSON"):
        CocoDataset(ann, img_dir)
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDataset(str(tmp_path / "nope.json"), img_dir)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("annotations"), "missing top-level key 'annotations'"),
    (lambda d: d["images"][0].pop("height"), r"images\[0\] \(id 7\) has no 'height'"),
    (lambda d: d["annotations"][1].update(category_id=99),
     r"annotations\[1\] \(id 2\): category_id 99 is not in 'categories'"),
    (lambda d: d["annotations"][0].update(image_id=3),
     r"annotations\[0\] \(id 1\): image_id 3 is not in 'images'"),
    (lambda d: d["annotations"][0].update(bbox=[8, 2, 4, 3]),
     r"annotations\[0\] \(id 1\) of image 'a.png' \(10x8\): bbox \[8, 2, 4, 3\] lies outside"),
    (lambda d: d["annotations"][1].update(segmentation=[[0, 0, 20, 0, 20, 2]]),
     r"annotations\[1\] \(id 2\) of image 'a.png' \(10x8\): polygon reaches outside"),
    (lambda d: d["annotations"][0]["segmentation"].update(size=[9, 10]),
     r"annotations\[0\] \(id 1\) .*RLE size \[9, 10\] is not the image's"),
    (lambda d: d["annotations"][0].update(segmentation=5), "segmentation must be"),
])
def test_bad_records_name_file_and_record(tmp_path, breakage, message):
    d = _base()
    ann, img_dir = _write(tmp_path, d)
    breakage(d)
    with open(ann, "w") as f:
        json.dump(d, f)
    with pytest.raises(DatasetError, match=message) as info:
        CocoDataset(ann, img_dir)
    assert "ann.json" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_image_names_file_and_record(tmp_path):
    ann, img_dir = _write(tmp_path, _base())
    (tmp_path / "imgs" / "empty.png").unlink()
    with pytest.raises(DatasetError, match=r"ann\.json: image id 9: file .*empty\.png not found"):
        CocoDataset(ann, img_dir)


def test_image_size_differs_from_record(tmp_path):
    d = _base()
    ann, img_dir = _write(tmp_path, d, images={7: np.zeros((8, 10, 3), np.uint8),
                                               9: np.zeros((5, 4, 3), np.uint8)})
    ds = CocoDataset(ann, img_dir)
    with pytest.raises(DatasetError, match=r"empty\.png: image is 4x5 but its record \(id 9\) says 4x4"):
        ds[1]
