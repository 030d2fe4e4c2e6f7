"""Label images (minimaskrcnn.data.labels): numbering by score, overlaps to the higher score,
empty input, the 65535 limit, and the 16-bit PNG round trip (read back by Pillow and by a
minimal PNG decoder written here, so the bytes are checked against the PNG format itself)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from minimaskrcnn._atomic import temporary_files
from minimaskrcnn.data.labels import (
    MAX_LABELS,
    clean_labels,
    label_image,
    read_label_png,
    write_label_png,
)


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_numbered_in_decreasing_score_order():
    masks = np.stack([_box(6, 9, 0, 2, 0, 2), _box(6, 9, 0, 2, 4, 6), _box(6, 9, 4, 6, 0, 9)])
    labels = label_image(masks, np.array([0.2, 0.9, 0.5], np.float32))
    assert labels.dtype == np.uint16 and labels.shape == (6, 9)
    assert labels[0, 0] == 3 and labels[0, 4] == 1 and labels[5, 8] == 2
    assert (labels[2:4] == 0).all()
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    for k, value in enumerate((3, 1, 2)):
        np.testing.assert_array_equal(labels == value, masks[k])


def test_overlaps_go_to_the_higher_score():
    low, high = _box(5, 5, 0, 4, 0, 4), _box(5, 5, 2, 5, 2, 5)
    labels = label_image(np.stack([low, high]), [0.3, 0.8])
    assert (labels[2:4, 2:4] == 1).all()  # the overlap: the 0.8 mask, numbered 1
    np.testing.assert_array_equal(labels == 1, high)
    np.testing.assert_array_equal(labels == 2, low & ~high)
    # listed the other way round: the same image
    np.testing.assert_array_equal(label_image(np.stack([high, low]), [0.8, 0.3]), labels)
    # equal scores: the earlier mask wins and is numbered first
    tie = label_image(np.stack([low, high]), [0.5, 0.5])
    assert tie[3, 3] == 1 and tie[4, 4] == 2


def test_hidden_instance_keeps_its_number():
    big, inner = _box(4, 4, 0, 4, 0, 4), _box(4, 4, 1, 2, 1, 2)
    labels = label_image(np.stack([inner, big, _box(4, 4, 0, 1, 0, 1)]), [0.1, 0.9, 0.05])
    # inner (rank 2) and the corner box (rank 3) lie under big (rank 1): only 1 is left
    assert np.unique(labels).tolist() == [1]


def test_empty_input_is_all_background():
    labels = label_image(np.zeros((0, 7, 3), bool), np.zeros(0))
    assert labels.shape == (7, 3) and labels.dtype == np.uint16 and not labels.any()
    labels = label_image([], [], image_size=(7, 3))
    assert labels.shape == (7, 3) and not labels.any()
    with pytest.raises(ValueError, match="image_size"):
        label_image([], [])
    labels = label_image(np.zeros((2, 4, 4), np.uint8), [0.9, 0.1])  # masks without pixels
    assert labels.shape == (4, 4) and not labels.any()


def test_rle_and_torchvision_layouts_give_the_same_labels():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 11, 13)) < 0.4
    scores = rng.random(6)
    dense = label_image(masks, scores)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    np.testing.assert_array_equal(label_image(rles, scores), dense)
    np.testing.assert_array_equal(label_image([_uncompressed(m) for m in masks], scores), dense)
    bytes_counts = [{"size": r["size"], "counts": bytes(r["counts"])} for r in rles]
    np.testing.assert_array_equal(label_image(bytes_counts, scores), dense)
    np.testing.assert_array_equal(label_image(masks[:, None].astype(np.uint8), scores), dense)
    # every pixel: the rank of the highest-scoring mask covering it
    rank = np.empty(6, int)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, 7)
    covered = np.where(masks, scores[:, None, None], -1.0)
    best = covered.argmax(axis=0)
    expected = np.where(masks.any(axis=0), rank[best], 0)
    np.testing.assert_array_equal(dense, expected)


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, background first."""
    flat = mask.astype(np.uint8).reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))  # where the value changes
    runs = np.diff(np.r_[0, edges]).tolist()
    assert sum(runs) == flat.size
    return {"size": list(mask.shape), "counts": runs}


def test_rle_edge_cases():
    # masks touching the first and the last pixel, a full mask, an empty one
    h, w = 4, 5
    corner = np.zeros((h, w), bool)
    corner[0, 0] = corner[-1, -1] = True
    full, empty = np.ones((h, w), bool), np.zeros((h, w), bool)
    masks = np.stack([corner, empty, full])
    scores = [0.9, 0.8, 0.1]
    dense = label_image(masks, scores)
    for encode in (_uncompressed,
                   lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))):
        np.testing.assert_array_equal(label_image([encode(m) for m in masks], scores), dense)
    assert dense[0, 0] == dense[-1, -1] == 1 and dense[1, 1] == 3
    with pytest.raises(ValueError, match="sum to"):
        label_image([{"size": [h, w], "counts": [3, 4]}], [0.5])


def test_bad_input_is_refused():
    m = np.zeros((2, 3, 3), bool)
    with pytest.raises(ValueError, match="2 masks but 3 scores"):
        label_image(m, [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        label_image(m, [0.5, np.nan])
    with pytest.raises(ValueError, match="threshold"):
        label_image(m.astype(np.float32), [0.5, 0.4])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        label_image(np.zeros((3, 3), bool), [0.5])
    with pytest.raises(ValueError, match="differs"):
        label_image(m, [0.5, 0.4], image_size=(3, 4))
    rles = [mask_utils.encode(np.zeros((3, 3), np.uint8, order="F")),
            mask_utils.encode(np.zeros((3, 4), np.uint8, order="F"))]
    with pytest.raises(ValueError, match="different sizes"):
        label_image(rles, [0.5, 0.4])


def test_more_than_65535_instances_is_refused():
    n = MAX_LABELS + 1
    with pytest.raises(ValueError, match="at most 65535"):
        label_image(np.zeros((n, 1, 1), bool), np.zeros(n))
    # 65535 is fine: the last one numbered 65535
    masks = np.zeros((MAX_LABELS, 1, 2), bool)
    masks[-1, 0, 1] = True
    labels = label_image(masks, -np.arange(MAX_LABELS, dtype=np.float64))
    assert labels.tolist() == [[0, MAX_LABELS]]


def _decode_png_grey16(data: bytes) -> np.ndarray:
    """A minimal PNG reader for 16-bit greyscale, non-interlaced (the PNG specification: IHDR,
    IDAT zlib stream, per-row filters 0-4, big-endian samples): independent of Pillow."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    w, h, depth, colour, _, _, interlace = header
    assert (depth, colour, interlace) == (16, 0, 0), header  # 16-bit grey
    raw = zlib.decompress(idat)
    bpp, stride = 2, 2 * w
    prev = bytearray(stride)
    rows = []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), dtype=">u2").reshape(h, w).astype(np.uint16)


def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, MAX_LABELS + 1, (17, 23)).astype(np.uint16)
    labels[0, :3] = [0, 256, MAX_LABELS]  # byte order shows: 256 is 0x0100
    path = tmp_path / "labels.png"
    write_label_png(path, labels)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "I;16" and img.size == (23, 17)
        np.testing.assert_array_equal(np.asarray(img).astype(np.uint16), labels)
    np.testing.assert_array_equal(_decode_png_grey16(path.read_bytes()), labels)
    np.testing.assert_array_equal(read_label_png(path), labels)
    assert read_label_png(path).dtype == np.uint16
    assert temporary_files(str(tmp_path)) == []


def test_label_image_of_detections_round_trips(tmp_path):
    masks = np.stack([_box(8, 8, 0, 5, 0, 5), _box(8, 8, 3, 8, 3, 8)])
    labels = label_image(masks, [0.4, 0.7])
    write_label_png(tmp_path / "x.png", labels)
    back = _decode_png_grey16((tmp_path / "x.png").read_bytes())
    np.testing.assert_array_equal(back, labels)
    assert back[4, 4] == 1 and back[0, 0] == 2 and back[7, 0] == 0


def test_write_refuses_what_is_not_labels(tmp_path):
    with pytest.raises(ValueError, match="0..65535"):
        write_label_png(tmp_path / "x.png", np.array([[0, 70000]], np.int64))
    with pytest.raises(ValueError, match="0..65535"):
        write_label_png(tmp_path / "x.png", np.array([[-1, 0]], np.int32))
    with pytest.raises(ValueError, match="integer"):
        write_label_png(tmp_path / "x.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        write_label_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint16))
    assert not (tmp_path / "x.png").exists()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a label image"):
        read_label_png(tmp_path / "rgb.png")


# -- clean_labels: the post-processing of a label image -----------------------------------------


def test_clean_labels_fills_enclosed_holes_only():
    lab = np.zeros((9, 9), np.uint16)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0            # a hole of background: filled
    lab[6:9, 5:8] = 2
    lab[7, 6] = 3            # another instance inside 2: stays itself
    lab[0:3, 7:9] = 4
    lab[0, 8] = 0            # a notch open to the image border: not a hole
    out = clean_labels(lab, fill_holes=True)
    want = lab.copy()
    want[3, 3] = 1
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(lab[3, 3], 0)  # the input is not changed


def test_clean_labels_keeps_the_largest_8_connected_piece():
    lab = np.zeros((8, 8), np.int32)
    lab[0:3, 0:3] = 5        # the big piece
    lab[3, 3] = 5            # touches it diagonally: the same 8-connected piece
    lab[6:8, 6:8] = 5        # a fragment: removed
    lab[5, 0] = 7            # a one-pixel instance on its own: kept (its only piece)
    out = clean_labels(lab, largest_component=True)
    want = lab.copy()
    want[6:8, 6:8] = 0
    np.testing.assert_array_equal(out, want)


def test_clean_labels_min_area_and_all_off():
    lab = np.zeros((6, 6), np.uint16)
    lab[0:2, 0:2] = 1        # 4 px
    lab[4:6, 0:3] = 2        # 6 px
    lab[5, 5] = 3            # 1 px
    np.testing.assert_array_equal(clean_labels(lab), lab)  # nothing asked: unchanged
    out = clean_labels(lab, min_area=5)
    assert set(np.unique(out)) == {0, 2}
    assert (out == 2).sum() == 6
    # min_area counts the pixels left after the fragments go
    lab[0, 5] = 2            # a 1 px fragment of 2: 7 px in all, 6 in the largest piece
    assert 2 not in clean_labels(lab, largest_component=True, min_area=7)
    assert 2 in clean_labels(lab, min_area=7)


@pytest.mark.parametrize("labels, kwargs, match", [
    (np.zeros((3, 3), np.float32), {}, "integer"),
    (np.zeros((2, 3, 3), np.uint16), {}, r"\(H, W\)"),
    (-np.ones((3, 3), np.int32), {}, "non-negative"),
    (np.zeros((3, 3), np.uint16), {"min_area": -1}, "min_area"),
])
def test_clean_labels_refuses_bad_input(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        clean_labels(labels, **kwargs)
