"""The command line's real-data paths (issue 24): ``minimaskrcnn data dsb2018`` on the public
layout's 5-image sample, ``minimaskrcnn weights``, weights by name (``--weights``, with
``--checkpoint`` the same option), and ``predict --labels`` on TIFF files, folders and under
``mpiexec -n 2``.

Predictions use the shipped ``nuclei-mini-dsb2018`` weights on images of the embedded DSB2018
sample (real nuclei: every image has detections above 0.5), about a second an image.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from test_cli import _one_line_error  # the one-line-error check, shared (tests/ is on the path)

from minimaskrcnn.cli import main
from minimaskrcnn.data import CocoDataset, sample_paths
from minimaskrcnn.data.labels import read_label_png
from minimaskrcnn.distributed import FORCE_ENV_VAR, MPI_LAUNCHER_ENV_VARS
from minimaskrcnn.model_zoo import WEIGHTS_DIR, list_weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

RAW_SAMPLE = os.path.join(os.path.dirname(__file__), "data", "dsb2018_raw_sample")
STAGE1 = os.path.join(RAW_SAMPLE, "stage1_train")
VAL_ID = "e5f8ad0f0a43af8ca57e31e16800108abdfb44a7e962a71d246f72d2dbde42bf"  # the sample's val image
WEIGHTS = "nuclei-mini-dsb2018"
VAL_JSON, IMAGES = sample_paths("val")
with open(VAL_JSON) as _f:
    VAL_FILES = [os.path.join(IMAGES, im["file_name"]) for im in json.load(_f)["images"]]
BINDIR = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BINDIR + os.pathsep + os.environ.get("PATH", ""))


@pytest.fixture(autouse=True)
def _deadline(deadline):
    """Every test of this module fails on a hang (tests/conftest.py: ``deadline``)."""
    yield


def _env():
    """The environment of a fresh ``minimaskrcnn`` process: no MPI launcher variables of ours,
    one Numba thread (two ranks on two cores; the same in the one-process run compared)."""
    env = {k: v for k, v in os.environ.items()
           if k not in MPI_LAUNCHER_ENV_VARS and k != FORCE_ENV_VAR}
    env["NUMBA_NUM_THREADS"] = "1"
    return env


def _cli(*argv, ranks=1, timeout=240):
    cmd = [sys.executable, "-m", "minimaskrcnn", *argv]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------ data dsb2018


def test_data_dsb2018_converts_the_public_layout(tmp_path, capsys):
    out = tmp_path / "dsb2018"
    assert main(["data", "dsb2018", STAGE1, "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "dsb2018: 5 images, 30 nuclei converted in" in text and str(out) in text
    assert "train.json: 4 images, 24 nuclei" in text and "val.json: 1 images, 6 nuclei" in text
    assert "empty masks skipped: 0" in text
    assert "5 of 5 images of the split equal the project's copy" in text
    assert sorted(os.listdir(out)) == ["images", "rest.json", "train.json", "val.json"]
    assert len(os.listdir(out / "images")) == 5
    # what `minimaskrcnn train --train-json DIR/train.json --images DIR/images` reads
    train = CocoDataset(str(out / "train.json"), str(out / "images"))
    val = CocoDataset(str(out / "val.json"), str(out / "images"))
    assert (len(train), len(val)) == (4, 1) and train.category_ids == [1]
    assert [im["file_name"] for im in _load(out / "val.json")["images"]] == [f"{VAL_ID}.png"]
    assert _load(out / "rest.json")["images"] == []


def test_data_dsb2018_errors_are_one_line_naming_the_file(tmp_path, capsys):
    _one_line_error(["data", "dsb2018", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                    capsys, "minimaskrcnn data dsb2018: error:", "nope")
    (tmp_path / "empty").mkdir()
    _one_line_error(["data", "dsb2018", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                    capsys, "minimaskrcnn data dsb2018: error:", "empty")
    # a mask of another size than its image
    root = tmp_path / "stage1_train"
    shutil.copytree(os.path.join(STAGE1, VAL_ID), root / VAL_ID)
    mask = sorted((root / VAL_ID / "masks").iterdir())[0]
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    _one_line_error(["data", "dsb2018", str(root), "--out", str(tmp_path / "o"), "--no-progress"],
                    capsys, "minimaskrcnn data dsb2018: error:", str(mask), "8x8")
    with pytest.raises(SystemExit) as e:  # argparse: the dataset is required
        main(["data"])
    assert e.value.code == 2


def test_data_dsb2018_from_a_real_process(tmp_path):
    out = tmp_path / "dsb2018"
    proc = _cli("data", "dsb2018", STAGE1, "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train.json: 4 images, 24 nuclei" in proc.stdout
    assert "dsb2018: 100%" in proc.stderr  # the progress bar, on stderr
    assert len(CocoDataset(str(out / "train.json"), str(out / "images"))) == 4
    proc = _cli("data", "dsb2018", str(tmp_path / "nope"), "--out", str(out), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("minimaskrcnn data dsb2018: error:")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ weights


def test_weights_lists_the_shipped_names_with_their_cards(capsys):
    assert main(["weights"]) == 0
    text = capsys.readouterr().out
    cards = list_weights()
    assert WEIGHTS in cards
    for name, card in cards.items():
        assert f"\n{name}\n" in f"\n{text}"  # each name on a line of its own
        first = next(line for line in card.splitlines() if line.strip() and not line.startswith("#"))
        assert f"    {first.rstrip()}\n" in text  # its card's first lines, indented
    assert card.strip() not in text  # not whole cards
    assert main(["weights", WEIGHTS]) == 0
    with open(os.path.join(WEIGHTS_DIR, f"{WEIGHTS}.md"), encoding="utf-8") as f:
        assert capsys.readouterr().out.strip() == f.read().strip()


def test_unknown_weights_are_one_line_listing_the_shipped_ones(tmp_path, capsys):
    _one_line_error(["weights", "nope"], capsys, "minimaskrcnn weights: error:",
                    "unknown weights 'nope'", WEIGHTS)
    _one_line_error(["predict", VAL_FILES[0], "--weights", "nope", "--out", str(tmp_path / "p")],
                    capsys, "minimaskrcnn predict: error:", "'nope'", WEIGHTS)
    _one_line_error(["evaluate", "--weights", "nope", "--coco-json", VAL_JSON, "--images", IMAGES,
                     "--out", str(tmp_path / "e")], capsys, "'nope'", WEIGHTS)


def test_evaluate_takes_shipped_weights_by_name(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--weights", WEIGHTS, "--coco-json", VAL_JSON, "--images", IMAGES,
                 "--out", str(out), "--limit", "1", "--no-progress"]) == 0
    m = _load(out / "metrics.json")
    assert m["num_images"] == 1 and m["segm"]["AP50"] > 0.3  # trained weights find nuclei
    assert "mask" in capsys.readouterr().out


# ------------------------------------------------------------------------------ predict --labels


def _expected_labels(results, image_id, score_thresh, size):
    """A label image painted from the results JSON, independently of label_image: the
    detections of ``image_id`` scoring >= ``score_thresh``, value i for the i-th highest score
    (ties: file order), painted from the lowest score up so that higher scores win overlaps."""
    dets = [r for r in results if r["image_id"] == image_id and r["score"] >= score_thresh]
    order = sorted(range(len(dets)), key=lambda d: -dets[d]["score"])  # stable: file order
    out = np.zeros(size, np.int64)
    for value in range(len(order), 0, -1):
        out[mask_utils.decode(dets[order[value - 1]]["segmentation"]).astype(bool)] = value
    return out, len(dets)


def test_predict_writes_label_images_by_weights_name(tmp_path, capsys):
    out = tmp_path / "pred"
    files = VAL_FILES[:2]
    assert main(["predict", *files, "--weights", WEIGHTS, "--out", str(out), "--labels"]) == 0
    text = capsys.readouterr().out
    results = _load(out / "results.json")
    for image_id, path in enumerate(files, start=1):
        stem = f"{image_id:04d}_{os.path.splitext(os.path.basename(path))[0]}"
        assert (out / f"{stem}.png").is_file()  # the overlay, as before
        labels = read_label_png(out / f"{stem}.labels.png")
        with Image.open(out / f"{stem}.labels.png") as im:
            assert im.mode == "I;16"  # a 16-bit grey PNG on disk
        image = np.asarray(Image.open(path))
        assert labels.dtype == np.uint16 and labels.shape == image.shape[:2]
        expected, n = _expected_labels(results, image_id, 0.5, labels.shape)
        assert n > 0 and f"{path}: {n} detections with score >= 0.5" in text
        assert np.array_equal(labels, expected)
        assert labels.max() <= n and len(np.unique(labels)) - 1 <= n
        assert len(np.unique(labels)) - 1 >= 0.9 * n  # few detections wholly covered by others
    # --checkpoint is the same option: the same results
    old = tmp_path / "old"
    assert main(["predict", *files, "--checkpoint", WEIGHTS, "--out", str(old)]) == 0
    assert _load(old / "results.json") == results
    assert not any(f.endswith(".labels.png") for f in os.listdir(old))  # only with --labels


def test_predict_reads_tiff_like_the_same_png(tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    png = VAL_FILES[2]
    pixels = np.asarray(Image.open(png).convert("RGB"))
    tif = tmp_path / "nuclei.tif"
    tifffile.imwrite(tif, pixels, photometric="rgb")
    for name, path in (("png", png), ("tif", str(tif))):
        assert main(["predict", path, "--weights", WEIGHTS, "--out", str(tmp_path / name),
                     "--labels", "--score-thresh", "0.3"]) == 0
    assert _load(tmp_path / "tif" / "results.json") == _load(tmp_path / "png" / "results.json")
    stem = os.path.splitext(os.path.basename(png))[0]
    from_png = read_label_png(tmp_path / "png" / f"0001_{stem}.labels.png")
    from_tif = read_label_png(tmp_path / "tif" / "0001_nuclei.labels.png")
    assert from_tif.shape == pixels.shape[:2] and from_tif.max() > 0
    assert np.array_equal(from_tif, from_png)
    assert (tmp_path / "tif" / "0001_nuclei.png").is_file()


def test_predict_on_a_folder_takes_its_image_files_sorted(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(VAL_FILES[3], folder / "b.png")
    Image.open(VAL_FILES[4]).convert("RGB").save(folder / "a.TIF")  # any case of a suffix
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()  # not searched
    shutil.copy(VAL_FILES[5], folder / "sub" / "c.png")
    out = tmp_path / "pred"
    assert main(["predict", str(folder), VAL_FILES[5], "--weights", WEIGHTS, "--out", str(out),
                 "--labels"]) == 0
    images = _load(out / "images.json")["images"]
    assert [os.path.basename(im["file_name"]) for im in images] == [
        "a.TIF", "b.png", os.path.basename(VAL_FILES[5])]
    assert [im["id"] for im in images] == [1, 2, 3]
    names = set(os.listdir(out))
    assert {"0001_a.png", "0001_a.labels.png", "0002_b.png", "0002_b.labels.png"} <= names
    assert len([n for n in names if n.endswith(".labels.png")]) == 3
    # a folder without an image file, and a missing path: one line each
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("x")
    _one_line_error(["predict", str(tmp_path / "none"), "--weights", WEIGHTS, "--out",
                     str(tmp_path / "p2")], capsys, str(tmp_path / "none"), "no image file",
                    ".tif")
    _one_line_error(["predict", str(tmp_path / "missing"), "--weights", WEIGHTS, "--out",
                     str(tmp_path / "p2")], capsys, "missing: image file not found")
    assert not (tmp_path / "p2").exists()  # refused before anything was written


@pytest.mark.skipif(MPIEXEC is None or shutil.which("mpiexec", path=BINDIR) is None,
                    reason="needs mpich's mpiexec beside the interpreter (pip install mpi4py mpich)")
def test_predict_under_mpiexec_equals_one_process(tmp_path):
    """Two ranks share the images (one writes images 1 and 2, the other image 3): the same
    overlays, label images and results JSON as one process, every line printed once."""
    pytest.importorskip("mpi4py")
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        shutil.copy(VAL_FILES[k], folder / f"im{k}.png")
    runs = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        proc = _cli("predict", str(folder), "--weights", WEIGHTS, "--out", str(out), "--labels",
                    ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("detections with score >=") == 3
        assert proc.stdout.count("wrote ") == 1
        runs[ranks] = out
    one, two = runs[1], runs[2]
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    assert _load(one / "results.json") == _load(two / "results.json")
    assert _load(one / "images.json") == _load(two / "images.json")
    for k in range(3):
        a = read_label_png(one / f"{k + 1:04d}_im{k}.labels.png")
        assert a.max() > 0
        assert np.array_equal(a, read_label_png(two / f"{k + 1:04d}_im{k}.labels.png"))


def _mpmd(first, second, timeout=120):
    """``mpiexec -n 1 minimaskrcnn FIRST : -n 1 minimaskrcnn SECOND`` (two programs)."""
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "minimaskrcnn", *first,
           ":", "-n", "1", sys.executable, "-m", "minimaskrcnn", *second]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(MPIEXEC is None or shutil.which("mpiexec", path=BINDIR) is None,
                    reason="needs mpich's mpiexec beside the interpreter (pip install mpi4py mpich)")
@pytest.mark.parametrize("case", ["train --iters", "train --train-json", "evaluate --coco-json",
                                  "predict images"])
def test_ranks_that_disagree_stop_before_any_work(tmp_path, case):
    """issue 27: ``mpiexec -n 1 minimaskrcnn train ... --iters 2 : -n 1 ... --iters 3`` hung;
    another --train-json trained to the end with rc 0; MPMD evaluate with another --coco-json
    per rank mixed the images; MPMD predict with other image lists wrote one file's detections
    under another's name. Now every rank prints one line naming the option and the rank, rc 2,
    before any work (nothing written), well within the timeout."""
    train_json, images = sample_paths("train")
    out = str(tmp_path / "out")
    if case.startswith("train"):
        base = ["train", "--preset", "shapes-mini", "--train-json", train_json, "--images",
                images, "--out", out, "--batch-size", "2", "--crop-size", "64", "--no-progress"]
        if case == "train --iters":
            first, second, key = [*base, "--iters", "2"], [*base, "--iters", "3"], "--iters"
        else:
            first = [*base, "--iters", "2"]
            second = [*first]
            second[second.index(train_json)] = VAL_JSON
            key = "--train-json"
    elif case == "evaluate --coco-json":
        base = ["evaluate", "--weights", WEIGHTS, "--images", IMAGES, "--out", out,
                "--no-progress", "--coco-json"]
        first, second, key = [*base, VAL_JSON], [*base, train_json], "--coco-json"
    else:
        base = ["predict", "--weights", WEIGHTS, "--out", out]
        first, second, key = [*base, *VAL_FILES[:2]], [*base, *VAL_FILES[1:3]], "--images"
    r = _mpmd(first, second)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    for rank in (0, 1):  # one line each (mpiexec may join the ranks' output on one line)
        mine = re.findall(rf"\[rank {rank}\] minimaskrcnn \w+: error: the ranks disagree: "
                          rf"{re.escape(key)} .*? on rank 1 but .*? on rank 0; every rank must "
                          r"run the same command on the same data", r.stderr)
        assert len(mine) == 1, r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(out)


def test_predict_tta_and_the_weights_post_processing_in_label_images(tmp_path, capsys):
    # nuclei-dsb2018 carries dsb_min_area 20 (its card): no instance of its label images is
    # smaller; --tta runs the mirror pass too and still writes every output
    out = tmp_path / "tta"
    path = VAL_FILES[0]
    assert main(["predict", path, "--weights", "nuclei-dsb2018", "--out", str(out), "--labels",
                 "--tta"]) == 0
    stem = f"0001_{os.path.splitext(os.path.basename(path))[0]}"
    labels = read_label_png(out / f"{stem}.labels.png")
    values, areas = np.unique(labels[labels > 0], return_counts=True)
    assert len(values) > 0 and areas.min() >= 20
    # exactly the results' label image (painted independently) cleaned as the card says
    from minimaskrcnn.data.labels import clean_labels

    raw, n = _expected_labels(_load(out / "results.json"), 1, 0.5, labels.shape)
    want = clean_labels(raw, fill_holes=True, largest_component=True, min_area=20)
    np.testing.assert_array_equal(labels, want)
    assert n > 0 and not np.array_equal(raw, want)  # the cleaning removed or filled something
