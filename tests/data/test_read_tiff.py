"""read_image on TIFF files (tifffile), microscopy's format: the conventions of the PNG path
(grey to 3 channels, alpha dropped, 16-bit and float scaled by the image's maximum), planar and
singleton axes, and one clear error naming the file for what is not one 2D image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from minimaskrcnn.data.coco import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    CocoDataset,
    DatasetError,
    read_image,
)


def _one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_grey_uint8_to_three_channels(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, a)
    out = read_image(str(path))
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], a)


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".TIF"])
def test_uint16_scaled_as_the_16bit_png_path(tmp_path, suffix):
    # 12-bit data: 255 / 4000 of the image's own maximum, as read_image scales a 16-bit PNG
    a = np.array([[0, 1000, 7], [2000, 4000, 3999]], dtype=np.uint16)
    tif = tmp_path / f"x16{suffix}"
    tifffile.imwrite(tif, a)
    png = tmp_path / "x16.png"
    Image.fromarray(a).save(png)
    from_tiff, from_png = read_image(str(tif)), read_image(str(png))
    np.testing.assert_array_equal(from_tiff, from_png)
    np.testing.assert_array_equal(from_tiff[:, :, 0], [[0, 64, 0], [128, 255, 255]])


def test_rgb_rgba_and_planar(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb.tif")), rgb)
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=2)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.tif")), rgb)  # alpha dropped
    planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, H, W), as microscopes write
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(str(tmp_path / "planar.tif")), rgb)
    rgb16 = rgb.astype(np.uint16) * 10
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16)
    expected = np.rint(rgb16 * (255.0 / rgb16.max())).astype(np.uint8)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb16.tif")), expected)


def test_float_and_singleton_axes(tmp_path):
    a = np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", a[None])  # (1, H, W): a one-plane stack
    out = read_image(str(tmp_path / "f.tif"))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 64], [128, 255]])
    hyper = np.zeros((1, 1, 3, 4), np.uint8)
    hyper[0, 0, 1, 2] = 9
    tifffile.imwrite(tmp_path / "ij.tif", hyper, imagej=True, metadata={"axes": "TZYX"})
    out = read_image(str(tmp_path / "ij.tif"))
    assert out.shape == (3, 4, 3) and out[1, 2].tolist() == [9, 9, 9] and out.sum() == 27


def test_stacks_nan_and_corrupt_files_name_the_file(tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 4, 6), np.uint8))
    with pytest.raises(DatasetError) as e:
        read_image(str(stack))
    assert "one 2D image" in _one_line_naming(e, stack)
    many = tmp_path / "channels.tif"
    tifffile.imwrite(many, np.zeros((6, 4, 5), np.uint8), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(DatasetError, match="one 2D image") as e:
        read_image(str(many))
    _one_line_naming(e, many)
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(DatasetError, match="NaN") as e:
        read_image(str(nan))
    _one_line_naming(e, nan)
    for name, content in (("empty.tif", b""), ("junk.tiff", b"II*\x00 not a tiff at all")):
        with open(tmp_path / name, "wb") as f:
            f.write(content)
        with pytest.raises(DatasetError, match="cannot read TIFF image") as e:
            read_image(str(tmp_path / name))
        _one_line_naming(e, tmp_path / name)
    with pytest.raises(DatasetError, match="not found"):
        read_image(str(tmp_path / "missing.tif"))


def test_coco_dataset_reads_tiff_images(tmp_path):
    a = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 100)
    tifffile.imwrite(tmp_path / "a.tif", a)
    d = {"images": [{"id": 1, "file_name": "a.tif", "height": 4, "width": 5}],
         "annotations": [], "categories": [{"id": 1, "name": "nucleus"}]}
    image, target = CocoDataset(d, str(tmp_path))[0]
    assert image.shape == (4, 5, 3) and image.max() == 255 and target["masks"].shape[0] == 0


def test_suffix_lists():
    assert set(TIFF_SUFFIXES) == {".tif", ".tiff"} and set(TIFF_SUFFIXES) <= set(IMAGE_SUFFIXES)
    assert ".png" in IMAGE_SUFFIXES
