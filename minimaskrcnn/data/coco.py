"""COCO instance-segmentation datasets: annotation file + image folder, read with pycocotools.

A :class:`CocoDataset` checks the whole annotation file when it is built (so a bad record is
reported at once, naming the file and the record, instead of crashing mid-training) and reads
images and masks lazily, one image at a time. Nothing reaches pycocotools unchecked: ids are
integers (image, category and annotation ids unique), sizes positive with at most
:data:`MAX_PIXELS` pixels, polygon coordinates finite numbers inside the image, bbox and area
finite, and every RLE decodes to exactly ``h * w`` pixels in non-negative runs (a compressed
``counts`` string is decoded here first, :func:`rle_string_counts`), because pycocotools
segfaults on a NaN polygon and runs for minutes on runs that sum past ``h * w``.

Image kinds read: by Pillow grey, grey+alpha, palette, RGB, RGBA, 8 or 16 bit; ``.tif`` /
``.tiff`` files by tifffile (microscopy's format: a 2D plane ``(H, W)``, or ``(H, W, C)`` / ``(C,
H, W)`` with C <= 4 channels or samples, any integer or float dtype; axes of length 1 are
dropped, stacks of planes refused). The result is
always ``(H, W, 3) uint8`` RGB: grey is replicated to three channels, alpha is dropped, and a
16-bit (or 32-bit / float) image is scaled to 8 bit by ``round(x * 255 / max(x))`` over the
image (its own maximum, not 65535, so a 12-bit microscopy image keeps its full range; an all-zero
image stays zero; negative values are clipped to 0). The scaling is linear and the model
standardises every image, so only the 8-bit quantisation is lost.

Annotations: segmentations as compressed RLE, uncompressed RLE or polygons (all decoded by
``pycocotools.mask``). ``iscrowd=1`` annotations are kept out of the training targets (their
boxes are reported apart as ``crowd_boxes``) but stay in ``ds.coco`` so that ``COCOeval``
ignores detections on them, as COCO intends. Images without annotations are fine (empty
targets). Category ids are mapped to contiguous labels 1..K in increasing id order.

Keypoints (COCO keypoints format): a category may name its keypoints (``keypoints``: a list of
names; ``skeleton``: pairs of 1-based keypoint indices; and, a minimaskrcnn extension, ``sigmas``:
the per-keypoint OKS sigmas), and an annotation of such a category may carry ``keypoints``
(``x, y, v`` triplets, one per name: v = 0 not labelled, 1 labelled but occluded, 2 visible) and
``num_keypoints`` (the number with v > 0; filled in when absent). An annotation with keypoints
and a ``bbox`` may have no ``segmentation`` (lego-battery has none): its mask is then its box
(``has_masks`` is False: mask AP and the mask loss of such data measure boxes, not shapes).
Every category with keypoints
must name the same keypoints (the model predicts one set of K). An annotation whose number of
triplets is not its category's K is a :class:`DatasetError` naming the record. Left/right pairs
for flips are read from the names (``left_x`` with ``right_x``, COCO's convention).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import struct
import warnings
from collections.abc import Mapping

import numpy as np
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "TIFF_SUFFIXES", "CocoDataset", "DatasetError",
           "flip_pairs", "read_image", "rle_string_counts", "to_rgb_uint8"]

TIFF_SUFFIXES = (".tif", ".tiff")
"""File name endings (any case) that :func:`read_image` reads with tifffile, not Pillow."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", *TIFF_SUFFIXES)
"""File name endings (any case) of the images a folder of inputs is taken to hold."""

_OUTSIDE_TOLERANCE = 1.0
"""Pixels a bbox or polygon may reach past the image border before it counts as outside."""


class DatasetError(ValueError):
    """A malformed annotation file, a missing or unreadable image, or an annotation that does
    not fit its image. The message names the file and the record."""


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert a decoded image array to ``(H, W, 3) uint8`` RGB.

    Args:
        arr: ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 2)`` grey+alpha, ``(H, W, 3)`` RGB or
            ``(H, W, 4)`` RGBA; uint8 is kept as is, any other dtype (uint16, int32, float) is
            scaled by ``255 / max`` of the image (see the module docstring).

    Raises:
        ValueError: any other shape.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):  # drop alpha
        arr = arr[:, :, :-1]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be (H, W) grey or (H, W, 1|2|3|4) channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        x = np.clip(arr.astype(np.float64), 0.0, None)
        peak = float(x.max()) if x.size else 0.0
        if peak > 0:
            x = x * (255.0 / peak)
        arr = np.rint(x).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_image(path: str) -> np.ndarray:
    """Read an image file into ``(H, W, 3) uint8`` RGB (see :func:`to_rgb_uint8`): ``.tif`` /
    ``.tiff`` with tifffile (:func:`_read_tiff`), any other with Pillow.

    Raises:
        DatasetError: the file is missing, cannot be decoded, or is not one 2D image (a TIFF
            stack); the message names the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    if path.lower().endswith(TIFF_SUFFIXES):
        arr = _read_tiff(path)
        try:
            return to_rgb_uint8(arr)
        except ValueError as e:
            raise DatasetError(f"{path}: {e}") from None
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode == "1":
                img = img.convert("L")
            elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except Image.DecompressionBombError as e:  # not an OSError: Pillow's size limit
        raise DatasetError(f"{path}: cannot read image: {e} (Pillow refuses images over "
                           f"{2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None
    try:
        return to_rgb_uint8(arr)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None


_TIFF_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, struct.error,
                NotImplementedError)
"""What tifffile raises on a file it cannot decode (its ``TiffFileError`` is a ValueError; a
compression it lacks the codec for, a truncated file, a file with no image)."""


def _read_tiff(path: str) -> np.ndarray:
    """The first image series of a TIFF file as ``(H, W)`` or ``(H, W, C)``, C <= 4, in the
    file's dtype (``tifffile.TiffFile(path).series[0]``; its ``axes`` say which axis is which).

    Axes of length 1 are dropped; one channel or sample axis (``C`` or ``S``) of at most 4 is
    moved last (``(C, H, W)`` planar or ImageJ hyperstacks become ``(H, W, C)``).

    Raises:
        DatasetError: the file cannot be decoded; more than one plane (a Z stack, a time series,
            a multi-page file of unknown axes ``Q``) or more than 4 channels; a float image with
            NaN or infinite values.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    except _TIFF_ERRORS as e:
        raise DatasetError(f"{path}: cannot read TIFF image ({e})") from None
    shape = arr.shape
    keep = [k for k, n in enumerate(shape) if n > 1 or axes[k] in "YX"]
    arr = arr.reshape([shape[k] for k in keep])
    axes = "".join(axes[k] for k in keep)
    other = [k for k, a in enumerate(axes) if a not in "YX"]
    if (axes.replace("S", "").replace("C", "") != "YX" or len(other) > 1
            or (other and arr.shape[other[0]] > 4)):
        raise DatasetError(f"{path}: a TIFF of shape {shape} (tifffile axes {series.axes}): "
                           "read_image takes one 2D image, grey or up to 4 channels; save one "
                           "plane of the stack")
    if other:
        arr = np.moveaxis(arr, other[0], -1)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DatasetError(f"{path}: the TIFF image has NaN or infinite values")
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: TIFF pixel type {arr.dtype} is not a number read_image "
                           "converts (integers or floats)")
    return arr


# --------------------------------------------------------------------------------------------
# Annotation file checks
# --------------------------------------------------------------------------------------------


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from None


MAX_PIXELS = 2**31 - 1
"""Largest ``height * width`` an image record may have: pycocotools counts pixels and run
lengths in 32-bit integers."""


def _is_int(v) -> bool:
    """A JSON integer (bool is not one, although Python's ``bool`` subclasses ``int``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite JSON number (NaN and +-Infinity, which Python's json accepts, are not; nor are
    integers too large for a float64)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -(2**63) < v < 2**63
    return isinstance(v, float) and math.isfinite(v)


def rle_string_counts(s: str) -> np.ndarray:
    """Decode the ``counts`` string of a COCO compressed RLE into its run lengths.

    The format (pycocotools ``rleToString``): each run length is written as the difference to
    the run two places before it (for runs 3, 4, ...), in little-endian groups of 5 bits, one
    character ``chr(48 + c)`` per group, ``c & 0x20`` meaning "more groups follow" and
    ``c & 0x10`` of the last group the sign. Decoded here in NumPy so that a file can be checked
    before pycocotools (whose C decoder reads past a truncated string and, given run lengths that
    sum past ``h * w`` or are negative, runs for minutes) ever sees it.

    Args:
        s: the ``counts`` string.

    Returns:
        ``(m,) int64`` run lengths (not checked: may be negative).

    Raises:
        ValueError: a character outside ``'0'..'o'``, a number of more than 7 groups, or a
            string that ends in the middle of a number.
    """
    try:
        b = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raise ValueError("RLE counts string has non-ASCII characters") from None
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = b.astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c > 63))
    if bad.size:
        raise ValueError(f"RLE counts string has the character {s[bad[0]]!r} at {bad[0]} "
                         f"(allowed: '0'..'o')")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 7:
        raise ValueError(f"RLE counts string has a number of {int(lengths.max())} characters "
                         f"(at most 7 for 32-bit run lengths)")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    vals = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    vals = np.where((c[ends] & 0x10) != 0, vals - (np.int64(1) << (5 * lengths)), vals)
    counts = vals.copy()
    counts[1::2] = np.cumsum(vals[1::2])  # run i >= 3 is stored relative to run i - 2
    counts[2::2] = np.cumsum(vals[2::2])
    return counts


def _check_segmentation(seg, h: int, w: int, where: str):
    """Check one segmentation against its ``h x w`` image; return it, with a compressed RLE's
    ``counts`` rewritten by pycocotools' own encoder from the checked run lengths (the same
    mask), so that pycocotools only ever decodes what it wrote."""
    tol = _OUTSIDE_TOLERANCE
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise DatasetError(f"{where}: RLE segmentation needs 'size' and 'counts'")
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise DatasetError(f"{where}: RLE size must be [h, w] integers, got {size!r:.80}")
        if size != [h, w]:
            raise DatasetError(f"{where}: RLE size {size} is not the image's [h, w] = [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(_is_int(v) for v in counts):
                bad = next(v for v in counts if not _is_int(v))
                raise DatasetError(f"{where}: RLE counts must be integers, got {bad!r:.40}")
            if any(v < 0 for v in counts):
                raise DatasetError(f"{where}: RLE counts has a negative run length "
                                   f"{min(counts)}")
            total = int(sum(counts))
        elif isinstance(counts, str):
            try:
                runs = rle_string_counts(counts)
            except ValueError as e:
                raise DatasetError(f"{where}: {e}") from None
            if runs.size and runs.min() < 0:
                raise DatasetError(f"{where}: RLE counts string decodes to a negative run "
                                   f"length {int(runs.min())}")
            total = int(runs.sum())
        else:
            raise DatasetError(f"{where}: RLE counts must be a list of run lengths or a "
                               f"compressed string, got {type(counts).__name__}")
        if total != h * w:
            raise DatasetError(f"{where}: RLE run lengths sum to {total}, not h * w = {h * w}")
        if isinstance(counts, str):
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(v) for v in runs]}, h, w)
            canonical = rle["counts"].decode("ascii")
            if canonical != counts:
                seg = {**seg, "counts": canonical}
        return seg
    if isinstance(seg, list):
        if not seg:
            raise DatasetError(f"{where}: empty polygon list")
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise DatasetError(f"{where}: a polygon must be a flat list of >= 3 x, y pairs")
            if not all(_is_number(v) for v in poly):
                bad = next(v for v in poly if not _is_number(v))
                raise DatasetError(f"{where}: polygon coordinates must be finite numbers, got "
                                   f"{bad!r:.40}")
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            if (xy[:, 0].min() < -tol or xy[:, 1].min() < -tol
                    or xy[:, 0].max() > w + tol or xy[:, 1].max() > h + tol):
                raise DatasetError(f"{where}: polygon reaches outside the image")
        return seg
    raise DatasetError(f"{where}: segmentation must be an RLE object or a list of polygons")


def _check_dataset(d, source: str) -> None:
    """Check the COCO structure and the geometry of every annotation; raise DatasetError.

    Compressed RLE ``counts`` strings are replaced by pycocotools' encoding of the same runs
    (see :func:`_check_segmentation`)."""
    if not isinstance(d, dict):
        raise DatasetError(f"{source}: top level must be a JSON object, got {type(d).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise DatasetError(f"{source}: missing top-level key {key!r}")
        if not isinstance(d[key], list):
            raise DatasetError(f"{source}: {key!r} must be a list")

    cat_ids = set()
    num_kp = {}  # category id -> K, for categories that name keypoints
    for k, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise DatasetError(f"{source}: categories[{k}] has no 'id'")
        if not _is_int(c["id"]):
            raise DatasetError(f"{source}: categories[{k}]: category id {c['id']!r:.40} is not "
                               f"an integer")
        if c["id"] in cat_ids:
            raise DatasetError(f"{source}: categories[{k}]: duplicate category id {c['id']}")
        cat_ids.add(c["id"])
        if "keypoints" in c:
            num_kp[c["id"]] = _check_keypoint_category(c, f"{source}: categories[{k}]")
    if not cat_ids:
        raise DatasetError(f"{source}: 'categories' is empty")

    images = {}
    for k, im in enumerate(d["images"]):
        where = f"{source}: images[{k}]"
        if not isinstance(im, dict):
            raise DatasetError(f"{where} is not an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise DatasetError(f"{where} (id {im.get('id')!r:.40}) has no {key!r}")
        if not _is_int(im["id"]):
            raise DatasetError(f"{where}: image id {im['id']!r:.40} is not an integer")
        if im["id"] in images:
            raise DatasetError(f"{where}: duplicate image id {im['id']}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DatasetError(f"{where} (id {im['id']}): file_name must be a non-empty string")
        if not (_is_int(im["height"]) and _is_int(im["width"])
                and im["height"] > 0 and im["width"] > 0):
            raise DatasetError(f"{where} (id {im['id']}): height and width must be positive integers")
        if im["height"] * im["width"] > MAX_PIXELS:
            raise DatasetError(f"{where} (id {im['id']}): {im['width']}x{im['height']} is more "
                               f"than {MAX_PIXELS} pixels")
        images[im["id"]] = im

    tol = _OUTSIDE_TOLERANCE
    ann_ids = set()
    kp_seen = kp_in_box = 0  # labelled keypoints of annotations with a bbox, those inside it
    for k, a in enumerate(d["annotations"]):
        where = f"{source}: annotations[{k}] (id {a.get('id') if isinstance(a, dict) else None!r:.40})"
        if not isinstance(a, dict):
            raise DatasetError(f"{where} is not an object")
        if "id" in a:
            if not _is_int(a["id"]):
                raise DatasetError(f"{where}: annotation id is not an integer")
            if a["id"] in ann_ids:
                raise DatasetError(f"{where}: duplicate annotation id {a['id']}")
            ann_ids.add(a["id"])
        for key in ("image_id", "category_id"):
            if key not in a:
                raise DatasetError(f"{where} has no {key!r}")
        if "segmentation" not in a and not ("keypoints" in a and "bbox" in a):
            raise DatasetError(f"{where} has no 'segmentation' (only an annotation with "
                               "'keypoints' and a 'bbox' may go without one)")
        if not _is_int(a["image_id"]) or a["image_id"] not in images:
            raise DatasetError(f"{where}: image_id {a['image_id']!r:.40} is not in 'images'")
        if not _is_int(a["category_id"]) or a["category_id"] not in cat_ids:
            raise DatasetError(f"{where}: category_id {a['category_id']!r:.40} is not in "
                               f"'categories'")
        if "iscrowd" in a and a["iscrowd"] not in (0, 1):
            raise DatasetError(f"{where}: iscrowd must be 0 or 1, got {a['iscrowd']!r:.40}")
        if "area" in a and not (_is_number(a["area"]) and a["area"] >= 0):
            raise DatasetError(f"{where}: area must be a finite number >= 0, got "
                               f"{a['area']!r:.40}")
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        where += f" of image {im['file_name']!r} ({w}x{h})"
        if "segmentation" in a:
            a["segmentation"] = _check_segmentation(a["segmentation"], h, w, where)
        if "keypoints" in a:
            _check_keypoints(a, num_kp.get(a["category_id"]), where, h, w)
            kp_seen, kp_in_box = _count_in_box(a, kp_seen, kp_in_box)
        if "bbox" in a:
            b = a["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)):
                raise DatasetError(f"{where}: bbox must be [x, y, w, h] finite numbers, got "
                                   f"{b!r:.80}")
            x, y, bw, bh = (float(v) for v in b)
            if bw < 0 or bh < 0 or x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
                raise DatasetError(f"{where}: bbox {b} lies outside the image")
    if kp_seen and not kp_in_box:
        warnings.warn(f"{source}: none of the {kp_seen} labelled keypoints lies inside its "
                      "instance's bbox: the keypoint head gets no target (loss_keypoint 0); are "
                      "x and y swapped, or the boxes in another frame?", stacklevel=3)


def _count_in_box(a: dict, seen: int, inside: int) -> tuple[int, int]:
    """``(seen, inside)`` plus the labelled keypoints of annotation ``a`` (with a valid bbox)
    and those inside its bbox."""
    b = a.get("bbox")
    if not (isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)):
        return seen, inside
    x0, y0, bw, bh = (float(v) for v in b)
    kp = a["keypoints"]
    for x, y, v in zip(kp[0::3], kp[1::3], kp[2::3], strict=True):
        if v > 0:
            seen += 1
            inside += x0 <= x <= x0 + bw and y0 <= y <= y0 + bh
    return seen, inside


def _check_keypoint_category(c: dict, where: str) -> int:
    """Check a category's ``keypoints`` names, ``skeleton`` and ``sigmas``; return K."""
    names = c["keypoints"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DatasetError(f"{where}: 'keypoints' must be a non-empty list of names")
    K = len(names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # a name twice would make one keypoint part of two flip pairs
        raise DatasetError(f"{where}: keypoint names must be distinct, {duplicates!r:.80} "
                           "appear more than once")
    skeleton = c.get("skeleton", [])
    if not (isinstance(skeleton, list) and all(
            isinstance(e, list) and len(e) == 2 and all(_is_int(v) and 1 <= v <= K for v in e)
            for e in skeleton)):
        raise DatasetError(f"{where}: 'skeleton' must be a list of [a, b] keypoint numbers in "
                           f"1..{K}")
    if "sigmas" in c and not (isinstance(c["sigmas"], list) and len(c["sigmas"]) == K and all(
            _is_number(v) and v > 0 for v in c["sigmas"])):
        raise DatasetError(f"{where}: 'sigmas' must be {K} positive numbers (one per keypoint)")
    return K


def _check_keypoints(a: dict, K: int | None, where: str, h: int, w: int) -> None:
    """Check an annotation's ``keypoints`` against its category's K and its ``h x w`` image
    (a labelled keypoint, v > 0, must lie inside it, as polygons and boxes must); fill
    ``num_keypoints``."""
    kp = a["keypoints"]
    if K is None:
        raise DatasetError(f"{where}: has keypoints but category {a['category_id']} names none "
                           "(the category needs a 'keypoints' list of names)")
    if not isinstance(kp, list) or len(kp) % 3 or not all(_is_number(v) for v in kp):
        raise DatasetError(f"{where}: keypoints must be a flat list of finite x, y, v numbers")
    if len(kp) != 3 * K:
        raise DatasetError(f"{where}: {len(kp) // 3} keypoints, but category "
                           f"{a['category_id']} defines K = {K} (3 K = {3 * K} numbers)")
    v = kp[2::3]
    if any(x not in (0, 1, 2) for x in v):
        raise DatasetError(f"{where}: keypoint visibilities must be 0, 1 or 2, got {v}")
    tol = _OUTSIDE_TOLERANCE
    for j, (x, y, vis) in enumerate(zip(kp[0::3], kp[1::3], v, strict=True)):
        if vis > 0 and not (-tol <= x <= w + tol and -tol <= y <= h + tol):
            raise DatasetError(f"{where}: keypoint {j + 1} ({x:.6g}, {y:.6g}) lies outside the "
                               "image")
    labelled = sum(1 for x in v if x > 0)
    if "num_keypoints" not in a:
        a["num_keypoints"] = labelled
    elif a["num_keypoints"] != labelled:
        raise DatasetError(f"{where}: num_keypoints is {a['num_keypoints']!r:.20} but "
                           f"{labelled} keypoints have v > 0")


def flip_pairs(names) -> list[tuple[int, int]]:
    """Left/right keypoint pairs ``(i, j)`` (0-based, ``i < j``) read from the names: ``left``
    and ``right`` swapped in a name give its mirror (COCO's ``left_eye`` / ``right_eye``). A
    mirror image swaps them; other keypoints keep their index."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        if "left" in n:
            j = index.get(n.replace("left", "right"))
            if j is not None:
                pairs.append((min(i, j), max(i, j)))
    return sorted(set(pairs))


def _fill_defaults(d: dict) -> None:
    """Add what COCOeval needs and a file may omit: ``iscrowd`` (0), ``area`` and ``bbox`` (from
    the mask) and ``id`` (running number) of annotations."""
    heights = {im["id"]: (im["height"], im["width"]) for im in d["images"]}
    used = {a["id"] for a in d["annotations"] if "id" in a}
    next_id = max(used, default=0) + 1
    for a in d["annotations"]:
        a.setdefault("iscrowd", 0)
        if "id" not in a:
            a["id"] = next_id
            next_id += 1
        if "segmentation" not in a:  # keypoint-only: the bbox is given (checked)
            a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        elif "area" not in a or "bbox" not in a:
            h, w = heights[a["image_id"]]
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            a.setdefault("area", float(mask_utils.area(rle)))
            a.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])


def _make_coco(d: dict) -> COCO:
    _fill_defaults(d)
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class CocoDataset:
    """A COCO instance-segmentation dataset.

    Args:
        annotation_file: path of a COCO instances JSON file, or the already-parsed dict.
        image_dir: folder holding the images named by ``file_name``; ``None`` when ``images``
            is given.
        images: optional in-memory images, ``{image_id: (H, W, 3) uint8}`` (used by the
            synthetic shapes); when given, ``image_dir`` is not read.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` object (every annotation, crowds included).
        image_ids: COCO image ids in file order; ``ds[i]`` is image ``image_ids[i]``.
        category_ids: ``category_ids[label - 1]`` is the COCO category id of contiguous label
            ``label`` (1..K).
        class_names: category names, same order.

    ``ds[i]`` returns ``(image, target)``: image ``(H, W, 3) uint8`` RGB and target a dict
    ``boxes (G, 4) float32 [x1, y1, x2, y2]`` pixels (from the masks: ``[x_min, y_min,
    x_max + 1, y_max + 1]``), ``labels (G,) int64`` in 1..K, ``masks (G, H, W) uint8``,
    ``image_id`` int, ``crowd_boxes (C, 4) float32`` (iscrowd annotations, not in the G), and
    for a dataset with keypoints ``keypoints (G, K, 3) float32`` ``[x, y, v]`` image pixels.
    Annotations whose mask is empty are left out of the targets (nothing to learn from).

    Raises:
        DatasetError: malformed file, missing image file, annotation outside its image
            (checked at construction); an image whose size differs from its record or cannot
            be decoded (when read).
    """

    def __init__(self, annotation_file: str | dict, image_dir: str | None = None, *,
                 images: Mapping[int, np.ndarray] | None = None):
        if isinstance(annotation_file, dict):
            self.source = "<in-memory COCO dict>"
            d = copy.deepcopy(annotation_file)  # defaults are filled in below
        else:
            self.source = os.fspath(annotation_file)
            d = _load_json(self.source)
        _check_dataset(d, self.source)
        self.coco = _make_coco(d)
        self.image_dir = None if image_dir is None else os.fspath(image_dir)
        self._images = images
        self.image_ids = [im["id"] for im in d["images"]]
        cats = sorted(d["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self._label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        kp_cats = [c for c in cats if "keypoints" in c]
        if any(c["keypoints"] != kp_cats[0]["keypoints"] for c in kp_cats):
            raise DatasetError(f"{self.source}: categories name different keypoints; one model "
                               "predicts one set of K keypoints")
        self.keypoint_names = list(kp_cats[0]["keypoints"]) if kp_cats else []
        self.skeleton = [list(e) for e in kp_cats[0].get("skeleton", [])] if kp_cats else []
        self.keypoint_sigmas = (list(kp_cats[0]["sigmas"]) if kp_cats and "sigmas" in kp_cats[0]
                                else None)
        self.keypoint_flip_pairs = flip_pairs(self.keypoint_names)
        self.has_masks = all("segmentation" in a for a in d["annotations"])
        if images is None:
            if self.image_dir is None:
                raise DatasetError(f"{self.source}: image_dir is required when images are not given")
            if not os.path.isdir(self.image_dir):
                raise DatasetError(f"{self.image_dir}: image folder not found")
            for k, im in enumerate(d["images"]):
                name = im["file_name"]
                parts = os.path.normpath(name).replace(os.sep, "/").split("/")
                if os.path.isabs(name) or parts[0] == "..":  # never read outside the folder
                    raise DatasetError(
                        f"{self.source}: images[{k}] (id {im['id']}): file_name {name!r:.200} "
                        f"lies outside the image folder {self.image_dir} (an absolute path, or "
                        "one that climbs out with ..); give it relative to the folder")
                path = os.path.join(self.image_dir, name)
                if not os.path.isfile(path):
                    raise DatasetError(
                        f"{self.source}: image id {im['id']}: file {path} not found")
        else:
            missing = [i for i in self.image_ids if i not in images]
            if missing:
                raise DatasetError(f"{self.source}: no in-memory image for image ids {missing[:5]}")

    @property
    def num_keypoints(self) -> int:
        """K keypoint types named by the categories (0: a dataset without keypoints)."""
        return len(self.keypoint_names)

    def ann_keypoints(self, anns: list[dict]) -> np.ndarray:
        """``(G, K, 3) float32`` ``[x, y, v]`` keypoints of annotations, image pixels (zeros for
        an annotation without keypoints: nothing labelled)."""
        out = np.zeros((len(anns), self.num_keypoints, 3), np.float32)
        for g, a in enumerate(anns):
            if "keypoints" in a:
                out[g] = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
        return out

    @property
    def num_classes(self) -> int:
        """K, the number of categories (background not counted)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, index: int) -> dict:
        """The COCO image record of ``ds[index]`` (id, file_name, height, width)."""
        return self.coco.imgs[self.image_ids[index]]

    def image_path(self, index: int) -> str | None:
        if self.image_dir is None:
            return None
        return os.path.join(self.image_dir, self.image_info(index)["file_name"])

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB of ``ds[index]``; raises DatasetError on a size mismatch."""
        info = self.image_info(index)
        if self._images is not None:
            image = to_rgb_uint8(self._images[info["id"]])
            where = f"{self.source}: in-memory image id {info['id']}"
        else:
            where = self.image_path(index)
            image = read_image(where)
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"{where}: image is {image.shape[1]}x{image.shape[0]} but its record "
                f"(id {info['id']}) says {info['width']}x{info['height']}")
        return image

    def annotations(self, index: int, *, crowd: bool = False) -> list[dict]:
        """The COCO annotations of ``ds[index]``: non-crowd ones, or crowd ones with ``crowd=True``."""
        anns = self.coco.imgToAnns.get(self.image_ids[index], [])
        return [a for a in anns if bool(a.get("iscrowd", 0)) == crowd]

    def has_instances(self, index: int) -> bool:
        """True if the image has at least one non-crowd annotation."""
        return bool(self.annotations(index))

    def _rle(self, ann: dict, h: int, w: int):
        if "segmentation" not in ann:  # keypoint-only annotation: its box as the mask
            return mask_utils.frPyObjects(np.array([ann["bbox"]], np.float64), h, w)[0]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, h, w)
        return seg

    def ann_box(self, index: int, ann: dict) -> np.ndarray:
        """``(4,) float64 [x1, y1, x2, y2]`` bounding box of an annotation's mask (from its RLE)."""
        info = self.image_info(index)
        x, y, bw, bh = mask_utils.toBbox(self._rle(ann, info["height"], info["width"]))
        return np.array([x, y, x + bw, y + bh])

    def decode_masks(self, index: int, anns: list[dict],
                     window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Decode annotations to ``(G, h, w) uint8`` masks, optionally cut to ``window =
        (y0, x0, y1, x1)`` (pixel rows y0..y1-1, columns x0..x1-1)."""
        info = self.image_info(index)
        h, w = info["height"], info["width"]
        y0, x0, y1, x1 = window if window is not None else (0, 0, h, w)
        out = np.zeros((len(anns), y1 - y0, x1 - x0), dtype=np.uint8)
        for g, ann in enumerate(anns):
            out[g] = mask_utils.decode(self._rle(ann, h, w))[y0:y1, x0:x1]
        return out

    def label_of(self, ann: dict) -> int:
        """Contiguous label 1..K of an annotation."""
        return self._label_of[ann["category_id"]]

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = self.load_image(index)
        anns = self.annotations(index)
        masks = self.decode_masks(index, anns)
        keep = masks.reshape(len(anns), -1).any(axis=1) if anns else np.zeros(0, dtype=bool)
        masks = masks[keep]
        labels = np.array([self.label_of(a) for a, k in zip(anns, keep, strict=True) if k], dtype=np.int64)
        crowd = self.annotations(index, crowd=True)
        crowd_boxes = np.array([self.ann_box(index, a) for a in crowd],
                               dtype=np.float32).reshape(-1, 4)
        target = {
            "boxes": masks_to_boxes(masks),
            "labels": labels,
            "masks": masks,
            "image_id": int(self.image_ids[index]),
            "crowd_boxes": crowd_boxes,
        }
        if self.num_keypoints:
            target["keypoints"] = self.ann_keypoints([a for a, k in zip(anns, keep, strict=True)
                                                      if k])
        return image, target


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks.

    Args:
        masks: ``(G, H, W)`` uint8/bool (``G`` may be 0).

    Returns:
        ``(G, 4) float32 [x_min, y_min, x_max + 1, y_max + 1]`` pixels: the box covers every
        pixel of the mask (pixel (i, j) covers [j, j+1) x [i, i+1)). An empty mask gets the
        all-zero box (no error; callers drop such instances).
    """
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for g in range(masks.shape[0]):
        rows = np.flatnonzero(masks[g].any(axis=1))
        cols = np.flatnonzero(masks[g].any(axis=0))
        if rows.size:
            boxes[g] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes
