"""CocoDataset and read_image: every image kind, every segmentation kind, crowds, empty images,
and the errors (malformed file, missing image, annotation outside its image)."""

import contextlib
import json
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn.data import CocoDataset, DatasetError, read_image
from minimaskrcnn.data.coco import rle_string_counts

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


# ------------------------------------------------------------------------------- hostile records
# Each of these once crashed pycocotools (a NaN polygon: segfault), hung it for minutes (an RLE
# whose counts are garbage or sum past h * w), or raised a bare TypeError / OverflowError naming
# no record. A SIGALRM deadline turns a hang into a failure instead of a stalled CI job.


@contextlib.contextmanager
def deadline(seconds):
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _set_seg(k, seg):
    return lambda d: d["annotations"][k].update(segmentation=seg)


@pytest.mark.parametrize("breakage, message", [
    (_set_seg(1, [[0, 0, float("nan"), 0, 2, 2]]),
     r"annotations\[1\] \(id 2\) .*polygon coordinates must be finite numbers, got nan"),
    (_set_seg(1, [[0, 0, float("inf"), 0, 2, 2]]), r"\(id 2\) .*must be finite numbers, got inf"),
    (_set_seg(1, [[0, 0, "a", 0, 2, 2]]), r"\(id 2\) .*must be finite numbers, got 'a'"),
    (_set_seg(0, {"size": [8, 10], "counts": "zz{{garbage"}),
     r"annotations\[0\] \(id 1\) .*character 'z' at 0"),
    (_set_seg(0, {"size": [8, 10], "counts": "X2"}), r"\(id 1\) .*sum to 72, not h \* w = 80"),
    (_set_seg(0, {"size": [8, 10], "counts": "X2262"}), r"\(id 1\) .*sum to 84, not h \* w = 80"),
    (_set_seg(0, {"size": [8, 10], "counts": "X2f"}), r"\(id 1\) .*ends in the middle of a number"),
    (_set_seg(0, {"size": [8, 10], "counts": "X22O"}),
     r"\(id 1\) .*decodes to a negative run length"),
    (_set_seg(3, {"size": [8, 10], "counts": [72, 2, 60]}),
     r"annotations\[3\] \(id 4\) .*sum to 134, not h \* w = 80"),
    (_set_seg(3, {"size": [8, 10], "counts": [82, -2]}), r"\(id 4\) .*negative run length -2"),
    (_set_seg(3, {"size": [8, 10], "counts": [72, None, 8]}),
     r"\(id 4\) .*RLE counts must be integers, got None"),
    (_set_seg(3, {"size": [8, 10], "counts": None}), r"\(id 4\) .*got NoneType"),
    (_set_seg(3, {"size": 8, "counts": [80]}), r"\(id 4\) .*RLE size must be \[h, w\]"),
    (lambda d: d["categories"].append({"id": "7", "name": "seven"}),
     r"categories\[2\]: category id '7' is not an integer"),
    (lambda d: d["categories"].append({"id": 5, "name": "again"}),
     r"categories\[2\]: duplicate category id 5"),
    (lambda d: d["images"][1].update(id=[9]), r"images\[1\]: image id \[9\] is not an integer"),
    (lambda d: d["annotations"][0].update(image_id=[7]), r"\(id 1\): image_id \[7\] is not in"),
    (lambda d: d["annotations"][0].update(bbox=[3, 2, "a", 3]),
     r"\(id 1\) of image 'a.png' .*bbox must be \[x, y, w, h\] finite numbers"),
    (lambda d: d["annotations"][0].update(id=2), r"annotations\[1\] \(id 2\): duplicate annotation id"),
    (lambda d: d["annotations"][0].update(iscrowd="yes"), r"\(id 1\): iscrowd must be 0 or 1"),
    (lambda d: d["images"][0].update(height=10**6, width=10**6), r"images\[0\] \(id 7\).*pixels"),
])
def test_hostile_records_give_one_clear_error(tmp_path, breakage, message):
    d = _base()
    ann, img_dir = _write(tmp_path, d)
    breakage(d)
    with open(ann, "w") as f:
        json.dump(d, f)  # NaN and Infinity are written as Python's json reads them
    with deadline(20), pytest.raises(DatasetError, match=message) as info:
        CocoDataset(ann, img_dir)
    assert "ann.json" in str(info.value) and "\n" not in str(info.value)


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        r = mask_utils.encode(np.asfortranarray(m))
        counts = rle_string_counts(r["counts"].decode("ascii"))
        np.testing.assert_array_equal(
            np.repeat(np.arange(len(counts)) % 2, counts).reshape(w, h).T, m, err_msg=str(t))
    # a large run (several 5-bit groups, negative differences)
    m = np.zeros((3000, 3000), np.uint8)
    m[1000:2000, 5:2999] = 1
    counts = rle_string_counts(mask_utils.encode(np.asfortranarray(m))["counts"].decode())
    assert list(counts[:4]) == [16000, 1000, 2000, 1000] and counts.sum() == 9_000_000


def test_non_canonical_rle_string_is_read_as_its_runs(tmp_path):
    # "X226" (runs 72, 2, 6) with 72 written in three 5-bit groups instead of two ("X" = 8 and
    # more, "R" = 2 and more, "0" = 0): the same runs; pycocotools is handed its own encoding
    d = _base()
    d["annotations"][3]["segmentation"] = {"size": [8, 10], "counts": "XR026"}
    ds = CocoDataset(*_write(tmp_path, d))
    assert ds.coco.anns[4]["segmentation"]["counts"] == "X226"
    assert ds[0][1]["masks"][2][0:2, 9].all() and ds[0][1]["masks"][2].sum() == 2


# ------------------------------------------------------------------------------- property test

_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(-1, 3), max_size=2),
                  st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.just(10**30),
                  st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 20))
_counts_text = st.text(alphabet="0123456789:;<=>?@ABCXYZ[\\]^_`aefghimno{~\u00e9", max_size=8)


def _uncompressed(m):
    """Column-major run lengths of a binary mask, starting with a run of zeros."""
    flat = m.T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return runs if flat[0] == 0 else [0, *runs]


@st.composite
def _segmentation(draw):
    kind = draw(st.sampled_from(["polygon", "rle", "uncompressed"]))
    if kind == "polygon":
        n = draw(st.integers(3, 4))
        return [draw(st.lists(st.floats(0, 3), min_size=2 * n, max_size=2 * n))]
    m = np.array(draw(st.lists(st.booleans(), min_size=12, max_size=12)), np.uint8).reshape(3, 4)
    if kind == "rle":
        return {"size": [3, 4], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}
    return {"size": [3, 4], "counts": _uncompressed(m)}


@st.composite
def _valid_coco(draw):
    n_img = draw(st.integers(1, 2))
    cat_ids = draw(st.lists(st.integers(0, 9), min_size=1, max_size=2, unique=True))
    anns = []
    for k in range(draw(st.integers(0, 3))):
        a = {"id": k + 1, "image_id": draw(st.integers(0, n_img - 1)),
             "category_id": draw(st.sampled_from(cat_ids)), "segmentation": draw(_segmentation())}
        if draw(st.booleans()):
            a["iscrowd"] = draw(st.integers(0, 1))
            a["bbox"] = draw(st.lists(st.floats(0, 1), min_size=4, max_size=4))
            a["area"] = draw(st.floats(0, 12))
        anns.append(a)
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": 3, "width": 4}
                       for i in range(n_img)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids], "annotations": anns}


@st.composite
def _coco(draw):
    """A valid COCO dict, then up to three fields replaced by something hostile."""
    d = draw(_valid_coco())
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["images", "categories", "annotations", "segmentation"]))
        if where == "segmentation":
            if not d["annotations"]:
                continue
            seg = draw(st.sampled_from(d["annotations"])).get("segmentation")
            if isinstance(seg, list) and seg and isinstance(seg[0], list) and seg[0]:
                poly = seg[0]
                poly[draw(st.integers(0, len(poly) - 1))] = draw(_junk)
            elif isinstance(seg, dict) and "counts" in seg:
                key = draw(st.sampled_from(["size", "counts", "counts-item"]))
                if key == "counts-item" and isinstance(seg["counts"], list) and seg["counts"]:
                    seg["counts"][draw(st.integers(0, len(seg["counts"]) - 1))] = draw(_junk)
                else:
                    seg["size" if key == "size" else "counts"] = draw(st.one_of(_junk, _counts_text))
            continue
        if not d[where]:
            continue
        record = draw(st.sampled_from(d[where]))
        keys = {"images": ["id", "file_name", "height", "width"], "categories": ["id", "name"],
                "annotations": ["id", "image_id", "category_id", "segmentation", "iscrowd",
                                "bbox", "area"]}[where]
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            record.pop(key, None)
        else:
            record[key] = draw(_junk)
    return d


@given(d=_coco())
@settings(max_examples=300)
def test_generated_records_give_a_clear_error_or_a_valid_dataset(tmp_path_factory, d):
    """Whatever the records hold: a one-line DatasetError naming the file, or a dataset whose
    every image and mask can be read; never another exception, a crash or a hang."""
    path = tmp_path_factory.mktemp("prop") / "gen.json"
    path.write_text(json.dumps(d))
    images = {}
    for im in d["images"]:
        try:
            images[im.get("id")] = np.zeros((3, 4, 3), np.uint8)
        except TypeError:  # an unhashable id: the reader must refuse it before it looks
            pass
    with deadline(20):
        try:
            ds = CocoDataset(str(path), images=images)
        except DatasetError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return
        for i in range(len(ds)):
            image, target = ds[i]
            assert target["masks"].shape[1:] == image.shape[:2]
            assert len(target["labels"]) == len(target["masks"]) == len(target["boxes"])


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "ABS"])
def test_file_name_outside_the_image_folder_refused(tmp_path, name):
    """issue 27: ``../`` or an absolute path in file_name was read (``/etc/passwd`` opened);
    now refused at construction with one line naming the record, though the file exists."""
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "outside.png")
    d = _base()
    d["images"][1]["file_name"] = str(tmp_path / "outside.png") if name == "ABS" else name
    ann, img_dir = _write(tmp_path, {**d, "images": d["images"][:1]})
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps(d))
    with pytest.raises(DatasetError, match=r"ann\.json: images\[1\] \(id 9\): file_name .*"
                                           r"outside\.png' lies outside the image folder"):
        CocoDataset(str(ann_path), img_dir)
    d["images"][1]["file_name"] = "sub/../empty.png"  # climbs back in: read as empty.png
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "empty.png")
    (tmp_path / "imgs" / "sub").mkdir()
    ann_path.write_text(json.dumps(d))
    assert len(CocoDataset(str(ann_path), img_dir)) == 2


def test_an_image_over_pillows_limit_is_one_line(tmp_path, monkeypatch):
    """issue 27: a PNG over Pillow's size limit (20000 x 20000) gave a DecompressionBombError
    traceback; the limit is lowered here so that a small file trips it."""
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"big\.png: cannot read image: Image size \(10000 "
                                           r"pixels\) exceeds limit.*over 2000 pixels"):
        read_image(str(path))
