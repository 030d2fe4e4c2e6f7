"""The ``minimaskrcnn`` command on the embedded DSB2018 sample, a few iterations with small crops
and the small ``shapes-mini`` network so that it stays quick in CI; and its one-line errors."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minimaskrcnn._atomic import TMP_PREFIX
from minimaskrcnn.cli import demo_config, main
from minimaskrcnn.data import sample_paths

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

TRAIN_JSON, IMAGES = sample_paths("train")
VAL_JSON, _ = sample_paths("val")
SMALL = ["--preset", "shapes-mini", "--batch-size", "1", "--crop-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    code = main(["train", "--train-json", TRAIN_JSON, "--images", IMAGES, "--val-json", VAL_JSON,
                 "--out", out, "--iters", "2", "--checkpoint-every", "1", "--val-every", "2",
                 "--val-limit", "1", *SMALL])
    assert code == 0
    return out


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_train_writes_run_folder(run_dir, capsys):
    names = set(os.listdir(run_dir))
    assert {"checkpoint_000001.npz", "checkpoint_000002.npz", "last_checkpoint", "log.jsonl",
            "val.jsonl", "config.json", "loss_curve.png"} <= names
    assert [r["iteration"] for r in _lines(os.path.join(run_dir, "log.jsonl"))] == [0, 1]
    val = _lines(os.path.join(run_dir, "val.jsonl"))
    assert val[0]["iteration"] == 2 and val[0]["num_images"] == 1
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model"]["num_classes"] == 1  # taken from the dataset
    assert cfg["dataset"] == {"category_ids": [1], "class_names": ["nucleus"], "num_images": 24}


def test_train_resume_continues(run_dir, capsys):
    code = main(["train", "--train-json", TRAIN_JSON, "--images", IMAGES, "--out", run_dir,
                 "--iters", "3", "--checkpoint-every", "1", "--resume", *SMALL])
    assert code == 0
    assert [r["iteration"] for r in _lines(os.path.join(run_dir, "log.jsonl"))] == [0, 1, 2]
    assert "trained 3 iterations" in capsys.readouterr().out


def test_evaluate_writes_metrics(run_dir, tmp_path, capsys):
    out = str(tmp_path / "eval")
    code = main(["evaluate", "--checkpoint", os.path.join(run_dir, "checkpoint_000002.npz"),
                 "--coco-json", VAL_JSON, "--images", IMAGES, "--out", out, "--limit", "1",
                 "--figure", "1", "--no-progress"])
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    for kind in ("segm", "bbox"):
        assert set(m[kind]) == {"AP", "AP50", "AP75"} and 0 <= m[kind]["AP"] <= 1
    assert 0 <= m["dsb_score"] <= 1 and m["seconds_per_image"] > 0 and m["num_images"] == 1
    assert m["max_dets"] == [10, 100, 100]  # shapes-mini's evaluation
    assert os.path.isfile(os.path.join(out, "results.json"))
    assert os.path.isfile(os.path.join(out, "predictions.png"))
    assert "mask" in capsys.readouterr().out


def test_predict_writes_overlays_and_coco_json(run_dir, tmp_path, capsys):
    out = str(tmp_path / "pred")
    with open(VAL_JSON) as f:
        files = [os.path.join(IMAGES, im["file_name"]) for im in json.load(f)["images"][:2]]
    code = main(["predict", *files, "--checkpoint", os.path.join(run_dir, "checkpoint_000002.npz"),
                 "--out", out, "--score-thresh", "0.0"])
    assert code == 0
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert len(pngs) == 2 and pngs[0].startswith("0001_")
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert {r["image_id"] for r in res} <= {1, 2}
    assert all(r["category_id"] == 1 and len(r["bbox"]) == 4 and "counts" in r["segmentation"]
               for r in res)
    with open(os.path.join(out, "images.json")) as f:
        assert [im["id"] for im in json.load(f)["images"]] == [1, 2]


def test_train_shapes_mini_on_generated_shapes(tmp_path, capsys):
    out = str(tmp_path / "shapes")
    assert main(["train", "--preset", "shapes-mini", "--shapes", "4", "--out", out, "--iters", "1",
                 "--batch-size", "1", "--crop-size", "64", "--val-limit", "1",
                 "--no-progress"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dataset"]["class_names"] == ["square", "circle", "triangle"]
    assert _lines(os.path.join(out, "val.jsonl"))[0]["num_images"] == 1
    assert main(["train", "--preset", "nuclei-mini", "--out", out]) == 2
    assert "--train-json and --images are required" in capsys.readouterr().err


def test_demo_smoke(tmp_path, capsys):
    out = str(tmp_path / "demo")
    code = main(["demo", "--preset", "shapes-mini", "--iters", "1", "--crop-size", "64",
                 "--val-images", "1", "--out", out, "--no-progress", "--workers", "1"])
    assert code == 0
    for name in ("metrics.json", "predictions.png", "loss_curve.png", "checkpoint_000001.npz"):
        assert os.path.isfile(os.path.join(out, name)), name
    text = capsys.readouterr().out
    assert "DSB 2018 score" in text and "s per iteration" in text
    # a second demo into the same folder replaces the first (a demo folder is the demo's)
    assert main(["demo", "--preset", "shapes-mini", "--iters", "2", "--crop-size", "64",
                 "--val-images", "1", "--out", out, "--no-progress", "--workers", "1"]) == 0
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint_")) == ["checkpoint_000002.npz"]


@pytest.mark.skipif(shutil.which("mpiexec", path=os.path.dirname(sys.executable)) is None,
                    reason="needs mpich's mpiexec beside the interpreter")
def test_demo_runs_on_every_core_through_mpiexec(tmp_path, capfd):
    """Without --workers the demo starts itself under mpiexec, one rank per core (two here),
    and says so; rank 0 alone prints the results and writes the run folder."""
    out = str(tmp_path / "demo")
    code = main(["demo", "--preset", "shapes-mini", "--iters", "2", "--crop-size", "64",
                 "--val-images", "2", "--out", out, "--no-progress", "--workers", "2"])
    text = capfd.readouterr().out
    assert code == 0, text
    assert "minimaskrcnn demo: 2 processes on" in text
    assert "median, 2 process(es)" in text
    assert text.count("DSB 2018 score") == 1
    assert os.path.isfile(os.path.join(out, "checkpoint_000002.npz"))


def test_demo_config_is_nuclei_mini_with_a_short_schedule():
    cfg = demo_config(90)
    assert cfg.name == "nuclei-mini-demo"
    assert cfg.train.iterations == 90 and cfg.train.milestones == (60, 80)
    assert cfg.train.warmup_iters == 9 and cfg.train.crop_size == 256
    assert cfg.train.base_lr == 0.01 and cfg.eval.max_dets == (10, 100, 500)


@pytest.mark.parametrize("argv, message", [
    (["train", "--train-json", "nope.json", "--images", IMAGES, "--out", "x"],
     "nope.json: annotation file not found"),
    (["train", "--preset", "big", "--train-json", TRAIN_JSON, "--images", IMAGES, "--out", "x"],
     "unknown preset 'big'"),
    (["evaluate", "--checkpoint", "none.npz", "--coco-json", VAL_JSON, "--images", IMAGES,
      "--out", "x"], "none.npz: checkpoint not found"),
    (["predict", "missing.png", "--checkpoint", "none.npz", "--out", "x"],
     "missing.png: image file not found"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_corrupt_annotation_file_and_resume_without_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    assert main(["train", "--train-json", str(bad), "--images", IMAGES, "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.json: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--train-json", TRAIN_JSON, "--images", IMAGES, "--out",
                 str(tmp_path / "o"), "--resume", *SMALL]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_error_exit_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minimaskrcnn", "evaluate", "--checkpoint",
                           str(tmp_path / "no.npz"), "--coco-json", VAL_JSON, "--images", IMAGES,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("minimaskrcnn evaluate: error:")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- nothing lost, nothing hung


@pytest.fixture(autouse=True)
def _deadline(deadline):
    """Every test of this module fails on a hang (tests/conftest.py: ``deadline``)."""
    yield


def _one_line_error(argv, capsys, *messages):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for m in messages:
        assert m in err, err
    return err


TRAIN = ["train", "--train-json", TRAIN_JSON, "--images", IMAGES]


@pytest.mark.parametrize("argv, message", [
    (TRAIN + ["--out", "x", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (TRAIN + ["--out", "x", "--val-every", "0"], "--val-every must be >= 1, got 0"),
    (TRAIN + ["--out", "x", "--iters", "-1"], "--iters must be >= 1, got -1"),
    (TRAIN + ["--out", "x", "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (TRAIN + ["--out", "x", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (TRAIN + ["--out", "x", "--resume", "--overwrite"], "give one"),
    (["demo", "--iters", "0", "--out", "x"], "--iters must be >= 1, got 0"),
    (["evaluate", "--checkpoint", "none.npz", "--coco-json", VAL_JSON, "--images", IMAGES,
      "--out", "x", "--limit", "0"], "--limit must be >= 1, got 0"),
])
def test_bad_numbers_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(argv, capsys, message)
    assert not os.path.exists(tmp_path / "x")  # refused before anything was written


def test_fresh_train_into_a_run_is_refused_and_overwrite_replaces_it(run_dir, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(run_dir, out)
    before = sorted(os.listdir(out))
    _one_line_error(TRAIN + ["--out", out, "--iters", "1", *SMALL], capsys,
                    f"{out} already holds a run", "--resume", "--overwrite")
    assert sorted(os.listdir(out)) == before
    assert main(TRAIN + ["--out", out, "--iters", "1", "--lr", "0.003", "--overwrite", *SMALL]) == 0
    assert not os.path.exists(os.path.join(out, "checkpoint_000002.npz"))
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "checkpoint_000001.npz"
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["train"]["base_lr"] == 0.003
    assert [r["iteration"] for r in _lines(os.path.join(out, "log.jsonl"))] == [0]


def test_resume_refuses_changed_options_and_keeps_the_runs_own(run_dir, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(run_dir, out)
    for option, value, field in (("--seed", "5", "train.seed 5"),
                                 ("--batch-size", "2", "train.batch_size 2"),
                                 ("--crop-size", "96", "train.crop_size 96"),
                                 ("--lr", "0.5", "train.base_lr 0.5")):
        _one_line_error(TRAIN + ["--out", out, "--resume", option, value], capsys,
                        f"--resume with {field}, but the run was trained with")
    _one_line_error(TRAIN + ["--out", out, "--resume", "--preset", "nuclei-mini"], capsys,
                    "--resume with --preset nuclei-mini, but the run was trained with shapes-mini")
    # no options: the run's own (shapes-mini, batch 1, crop 64), only --iters changes
    assert main(TRAIN + ["--out", out, "--resume", "--iters", "3", "--no-progress"]) == 0
    assert [r["iteration"] for r in _lines(os.path.join(out, "log.jsonl"))] == [0, 1, 2]


def _edit_checkpoint(src, dst, edit):
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    edit(meta, arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return str(dst)


def _first_param(arrays):
    return next(k for k in arrays if k.startswith("param/"))


@pytest.mark.parametrize("edit, message", [
    (lambda m, a: m["config"].update(model=None), "config.model must be an object, got None"),
    (lambda m, a: m["config"]["model"].update(num_classes="2"),
     "config.model.num_classes must be an integer, got '2'"),
    (lambda m, a: m["config"]["model"].update(size_divisible=0),
     "config.model.size_divisible must be >= 1, got 0"),
    (lambda m, a: m["config"]["model"].update(detections_per_img=-1),
     "config.model.detections_per_img must be >= 1, got -1"),
    (lambda m, a: m["config"]["model"].update(mask_threshold=float("nan")),
     "config.model.mask_threshold must be finite, got nan"),
    (lambda m, a: m.pop("iteration"), "the iteration must be an integer >= 0, got None"),
    (lambda m, a: m["config"]["dataset"].update(class_names=["a", "b"]),
     "config.dataset.class_names must be 1 strings (one per category id)"),
    (lambda m, a: a.update({_first_param(a): a[_first_param(a)].astype(np.int32)}),
     "is stored as int32, not floating point"),
    (lambda m, a: a.update({_first_param(a): a[_first_param(a)].astype(np.complex64)}),
     "is stored as complex64, not floating point"),
    (lambda m, a: a.update({_first_param(a): np.full_like(a[_first_param(a)], np.nan)}),
     "non-finite values"),
])
def test_a_bad_checkpoint_is_one_line_naming_the_file(run_dir, tmp_path, capsys, edit, message):
    bad = _edit_checkpoint(os.path.join(run_dir, "checkpoint_000002.npz"), tmp_path / "bad.npz", edit)
    _one_line_error(["evaluate", "--checkpoint", bad, "--coco-json", VAL_JSON, "--images", IMAGES,
                     "--out", str(tmp_path / "e"), "--limit", "1", "--no-progress"],
                    capsys, f"minimaskrcnn evaluate: error: {bad}", message)
    _one_line_error(["predict", os.path.join(IMAGES, os.listdir(IMAGES)[0]), "--checkpoint", bad,
                     "--out", str(tmp_path / "p")], capsys, bad, message)


def _with_category_id(tmp_path, category_id):
    with open(VAL_JSON) as f:
        d = json.load(f)
    for c in d["categories"]:
        c["id"] = category_id
    for a in d["annotations"]:
        a["category_id"] = category_id
    path = tmp_path / f"val_{category_id}.json"
    path.write_text(json.dumps(d))
    return str(path)


def test_evaluate_maps_labels_through_the_checkpoints_category_ids(run_dir, tmp_path, capsys):
    ckpt = _edit_checkpoint(os.path.join(run_dir, "checkpoint_000002.npz"), tmp_path / "c17.npz",
                            lambda m, a: m["config"]["dataset"].update(category_ids=[17]))
    _one_line_error(["evaluate", "--checkpoint", ckpt, "--coco-json", VAL_JSON, "--images",
                     IMAGES, "--out", str(tmp_path / "e"), "--no-progress"], capsys,
                    "val.json has category ids [1], but the checkpoint's model was trained on [17]")
    out = str(tmp_path / "e17")
    assert main(["evaluate", "--checkpoint", ckpt, "--coco-json", _with_category_id(tmp_path, 17),
                 "--images", IMAGES, "--out", out, "--limit", "1", "--no-progress"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results and {r["category_id"] for r in results} == {17}


def test_hostile_annotation_file_is_one_line_and_never_hangs(run_dir, tmp_path):
    """A real process on an RLE whose counts sum past h * w (pycocotools would decode it for
    minutes) and a NaN polygon (a pycocotools segfault): one line, exit 2, within the timeout."""
    with open(VAL_JSON) as f:
        d = json.load(f)
    d["annotations"][0]["segmentation"] = {"size": [d["images"][0]["height"],
                                                    d["images"][0]["width"]],
                                           "counts": "0" + "ooooon" * 20}
    d["annotations"][1]["segmentation"] = [[1.0, 1.0, float("nan"), 2.0, 3.0, 3.0]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    proc = subprocess.run([sys.executable, "-m", "minimaskrcnn", "evaluate", "--checkpoint",
                           os.path.join(run_dir, "checkpoint_000002.npz"), "--coco-json", str(bad),
                           "--images", IMAGES, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "bad.json: annotations[0] (id " in proc.stderr and "RLE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "minimaskrcnn", "train", "--train-json", str(bad),
                           "--images", IMAGES, "--out", str(tmp_path / "t"), *SMALL],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "bad.json: annotations[0] (id " in proc.stderr and "RLE" in proc.stderr


def test_demo_replaces_its_own_folder_but_not_a_training_run(run_dir, tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(run_dir, out)
    _one_line_error(["demo", "--preset", "shapes-mini", "--iters", "1", "--out", out,
                     "--no-progress"], capsys, f"{out} already holds a run")


def test_divergence_at_a_huge_lr_stops_with_one_line_and_a_log_record(tmp_path, capsys):
    """A huge lr (30: the parameters pass 1e4 by the second checkpoint; 1e6 stops before the
    first): one line naming the last good checkpoint, which holds finite, small values and from
    which --resume runs (issue 27: one at 8.7e29 failed at once with "rel_codes contains NaN")."""
    out = str(tmp_path / "lr")
    argv = ["train", "--preset", "shapes-mini", "--shapes", "4", "--out", out, "--iters", "12",
            "--batch-size", "1", "--crop-size", "64", "--checkpoint-every", "2", "--val-every",
            "100", "--no-progress", "--lr", "30"]
    err = _one_line_error(argv, capsys, "training stopped")
    m = re.search(r"error: iteration (\d+): .*the last good checkpoint is (\S+)$", err.strip())
    assert m, err
    last = _lines(os.path.join(out, "log.jsonl"))[-1]
    assert last["iteration"] == int(m.group(1)) and last["error"] in err
    # the checkpoint named holds finite values only, and it is the newest one
    from minimaskrcnn.checkpoint import load_checkpoint

    ck = load_checkpoint(m.group(2))
    assert all(np.isfinite(v).all() for v in ck.params.values())
    assert all(np.isfinite(v).all() for v in ck.optimizer_state["buffers"].values())
    assert all(np.abs(v).max() <= 1e4 for v in ck.params.values())
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert os.path.join(out, f.read().strip()) == m.group(2)
    # resuming from it trains on (and diverges again at this lr) instead of failing at once
    err = _one_line_error([*argv, "--resume"], capsys, "training is diverging")
    assert "NaN or inf" not in err


@pytest.mark.parametrize("argv", [
    ["demo", "--quick", "--device", "cuda", "--out", "x"],
    ["train", "--preset", "shapes-mini", "--out", "x", "--device", "cuda"],
    ["evaluate", "--checkpoint", "CKPT", "--coco-json", "JSON", "--images", "IMG", "--out", "x",
     "--device", "cuda"],
    ["predict", "IMG", "--checkpoint", "CKPT", "--out", "x", "--device", "cuda"],
])
def test_device_cuda_without_a_gpu_is_one_line(argv, run_dir, tmp_path, capsys, monkeypatch):
    from minimaskrcnn import backend

    if backend.tier_unavailable_reason("cupy") is None:
        pytest.skip("a GPU is here: --device cuda works")
    monkeypatch.chdir(tmp_path)
    ckpt = os.path.join(run_dir, open(os.path.join(run_dir, "last_checkpoint")).read().strip())
    image = tmp_path / "im.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    json_path, images = sample_paths("val")
    argv = [{"CKPT": ckpt, "JSON": json_path, "IMG": images if "evaluate" in argv else str(image)}
            .get(a, a) for a in argv]
    _one_line_error(argv, capsys, "--device cuda needs CuPy and a CUDA GPU")


def test_train_and_predict_keypoints_mini(tmp_path, capsys):
    """keypoints-mini trains on generated triangles without data; predict draws the predicted
    keypoints with the training data's skeleton and writes them to the results JSON."""
    from PIL import Image

    from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset

    out = str(tmp_path / "kp")
    assert main(["train", "--preset", "keypoints-mini", "--shapes", "4", "--out", out,
                 "--iters", "1", "--batch-size", "1", "--crop-size", "64", "--val-limit", "1",
                 "--no-progress"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        ds = json.load(f)["dataset"]
    assert len(ds["keypoint_names"]) == 3 and ds["skeleton"]
    image = keypoint_shapes_dataset(1, seed=5).load_image(0)
    Image.fromarray(image).save(tmp_path / "tri.png")
    ckpt = os.path.join(out, open(os.path.join(out, "last_checkpoint")).read().strip())
    assert main(["predict", str(tmp_path / "tri.png"), "--checkpoint", ckpt, "--out",
                 str(tmp_path / "pred"), "--score-thresh", "0"]) == 0
    with open(tmp_path / "pred" / "results.json") as f:
        results = json.load(f)
    assert results and all(len(r["keypoints"]) == 9 for r in results)
    assert os.path.isfile(tmp_path / "pred" / "0001_tri.png")


def test_overlay_draws_keypoints_and_the_skeleton():
    from minimaskrcnn.viz import overlay

    image = np.zeros((40, 40, 3), np.uint8)
    inst = {"boxes": np.array([[5, 5, 35, 35]], np.float32), "scores": np.array([0.9]),
            "masks": np.zeros((1, 40, 40), bool),
            "keypoints": np.array([[[10, 10, 1], [30, 10, 1], [20, 30, 0]]], np.float32)}
    plain = overlay(image, {k: v for k, v in inst.items() if k != "keypoints"})
    drawn = overlay(image, inst, skeleton=[[1, 2], [2, 3]])
    assert drawn[10, 10].any() and drawn[10, 20].any()  # the dots and the line between them
    assert not plain[10, 20].any()
    assert not drawn[30, 20].any()  # an invisible keypoint is not drawn, nor its edge


def test_train_keypoints_on_the_shipped_lego_battery_photos(tmp_path, capsys):
    """The real keypoint data that ships with the package (5 keypoints, the preset has 3): the
    keypoint head follows the data, validation reports OKS keypoint AP."""
    from minimaskrcnn.data.lego_battery import lego_battery_paths

    train_json, images = lego_battery_paths("train")
    val_json, _ = lego_battery_paths("val")
    out = str(tmp_path / "lego")
    assert main(["train", "--preset", "keypoints-mini", "--train-json", train_json, "--images",
                 images, "--val-json", val_json, "--out", out, "--iters", "1", "--batch-size",
                 "1", "--crop-size", "128", "--val-limit", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "5 keypoints per instance" in text
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model"]["num_keypoints"] == 5 and len(cfg["dataset"]["keypoint_names"]) == 5
    assert "keypoints" in _lines(os.path.join(out, "val.jsonl"))[0]
    # issue 27: resuming it on generated data said "...but None has 3"
    _one_line_error(["train", "--out", out, "--resume", "--iters", "2", "--no-progress"], capsys,
                    "the run predicts 5 keypoints per instance, but the generated triangles (no "
                    "--train-json given) has 3; resume with the run's --train-json and --images")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_weights_and_checkpoint_are_one_option(command, capsys):
    """``--weights NAME_OR_PATH`` with ``--checkpoint`` (the older spelling) as the same option;
    the help says both forms (a shipped name, a checkpoint path)."""
    from minimaskrcnn.cli import build_parser

    rest = (["--coco-json", "v.json", "--images", "im", "--out", "o"] if command == "evaluate"
            else ["im.png", "--out", "o"])
    parser = build_parser()
    for option in ("--weights", "--checkpoint"):
        args = parser.parse_args([command, option, "nuclei-mini-dsb2018", *rest])
        assert args.weights == "nuclei-mini-dsb2018" and not hasattr(args, "checkpoint")
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weights NAME_OR_PATH, --checkpoint NAME_OR_PATH" in text
    assert "nuclei-mini-dsb2018" in text and "checkpoint_003000.npz" in text
    with pytest.raises(SystemExit) as e:  # still required
        parser.parse_args([command, *rest])
    assert e.value.code == 2


def test_predict_never_writes_over_a_file(run_dir, tmp_path, capsys):
    """issue 27: ``predict d/a.png d/0001_a.png --out d`` would replace the input 0001_a.png with
    an overlay: refused before any work, naming it (even with --overwrite); an existing output
    of an earlier predict is refused without --overwrite; an --out that is a file is refused
    before the model loads."""
    ckpt = os.path.join(run_dir, "checkpoint_000002.npz")
    d = tmp_path / "d"
    d.mkdir()
    src = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
    shutil.copy(src, d / "a.png")
    shutil.copy(src, d / "0001_a.png")
    before = (d / "0001_a.png").read_bytes()
    _one_line_error(["predict", str(d / "a.png"), str(d / "0001_a.png"), "--checkpoint", ckpt,
                     "--out", str(d), "--overwrite"], capsys, str(d / "0001_a.png"),
                    "an input image")
    assert (d / "0001_a.png").read_bytes() == before and sorted(os.listdir(d)) == [
        "0001_a.png", "a.png"]
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("mine")
    _one_line_error(["predict", str(d / "a.png"), "--checkpoint", ckpt, "--out", str(out)],
                    capsys, str(out / "results.json"), "already exists")
    assert os.listdir(out) == ["results.json"] and (out / "results.json").read_text() == "mine"
    assert main(["predict", str(d / "a.png"), "--checkpoint", ckpt, "--out", str(out),
                 "--overwrite"]) == 0
    assert (out / "0001_a.png").is_file() and (out / "results.json").read_text() != "mine"
    (tmp_path / "f").write_text("x")
    _one_line_error(["predict", str(d / "a.png"), "--checkpoint", "none.npz", "--out",
                     str(tmp_path / "f")], capsys, "--out", "a file, not a folder")


def test_predict_reads_every_image_before_predicting(run_dir, tmp_path, capsys):
    """issue 27: a bad 9th image was reported after predicting the first 8 (and nothing written):
    now one line naming it before any prediction, and --out not even made."""
    d = tmp_path / "d"
    d.mkdir()
    src = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
    for k in range(8):
        shutil.copy(src, d / f"im{k}.png")
    (d / "im8.png").write_bytes(b"not an image")
    _one_line_error(["predict", str(d), "--checkpoint", os.path.join(run_dir,
                     "checkpoint_000002.npz"), "--out", str(tmp_path / "o")], capsys,
                    str(d / "im8.png"), "cannot read image")
    assert not (tmp_path / "o").exists()


def test_keypoint_data_without_sigmas_refused_before_training(tmp_path, capsys):
    """issue 27: keypoint validation data without OKS sigmas died at the first validation,
    before any checkpoint; now one line naming the file before training."""
    from minimaskrcnn.data.lego_battery import lego_battery_paths

    train_json, images = lego_battery_paths("train")
    val_json, _ = lego_battery_paths("val")
    with open(val_json) as f:
        d = json.load(f)
    for c in d["categories"]:
        del c["sigmas"]
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps(d))
    out = tmp_path / "run"
    _one_line_error(["train", "--preset", "keypoints-mini", "--train-json", train_json,
                     "--images", images, "--val-json", str(bad), "--out", str(out), "--iters",
                     "1", "--batch-size", "1", "--crop-size", "64", "--no-progress"], capsys,
                    str(bad), "no OKS sigmas for 5 keypoints")
    assert not out.exists()


def test_evaluate_checks_out_before_the_work(run_dir, tmp_path, capsys):
    """issue 27: an --out that is a file was found only after evaluating every image."""
    (tmp_path / "f").write_text("x")
    err = _one_line_error(["evaluate", "--checkpoint", os.path.join(run_dir,
                           "checkpoint_000002.npz"), "--coco-json", VAL_JSON, "--images", IMAGES,
                           "--out", str(tmp_path / "f"), "--no-progress"], capsys,
                          "--out", "a file, not a folder")
    assert "mask AP" not in capsys.readouterr().out + err


def test_an_image_over_pillows_limit_in_the_commands(run_dir, tmp_path, capsys, monkeypatch):
    """issue 27: DecompressionBombError traceback in train, evaluate and predict; now one line
    naming the file (Pillow's limit lowered so that the sample's images trip it)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ckpt = os.path.join(run_dir, "checkpoint_000002.npz")
    name = sorted(os.listdir(IMAGES))[0]
    _one_line_error(["predict", os.path.join(IMAGES, name), "--checkpoint", ckpt, "--out",
                     str(tmp_path / "p")], capsys, name, "exceeds limit")
    _one_line_error(["evaluate", "--checkpoint", ckpt, "--coco-json", VAL_JSON, "--images", IMAGES,
                     "--out", str(tmp_path / "e"), "--limit", "1", "--no-progress"], capsys,
                    "cannot read image", "exceeds limit")
    _one_line_error([*TRAIN, "--out", str(tmp_path / "t"), "--iters", "1", *SMALL], capsys,
                    "cannot read image", "exceeds limit")


def test_a_npy_as_checkpoint_is_one_line(tmp_path, capsys):
    """issue 27: a .npy given as --checkpoint was a TypeError traceback."""
    np.save(tmp_path / "w.npy", np.zeros(3, np.float32))
    _one_line_error(["predict", os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0]),
                     "--checkpoint", str(tmp_path / "w.npy"), "--out", str(tmp_path / "p")],
                    capsys, "w.npy is not an .npz archive")


def _disk_full_for(monkeypatch, name):
    """Make the atomic writer fail with ENOSPC for the file ``name`` only (its fsync, after the
    data went into the temporary file: a disk that fills during the write)."""
    fsync = os.fsync

    def failing(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(
                f"{TMP_PREFIX}{name}-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)


@pytest.mark.parametrize("name", ["metrics.json", "results.json", "predictions.png"])
def test_a_full_disk_in_evaluate_is_one_line_naming_the_file(name, tmp_path, capsys, monkeypatch):
    """issue 27: a full disk left a truncated metrics.json, an empty results.json or a 0-byte
    PNG, and a message naming no file."""
    out = tmp_path / "e"
    _disk_full_for(monkeypatch, name)
    _one_line_error(["evaluate", "--weights", "nuclei-mini-dsb2018", "--coco-json", VAL_JSON,
                     "--images", IMAGES, "--out", str(out), "--limit", "1", "--figure", "1",
                     "--no-progress"], capsys, "No space left on device", str(out / name))
    assert name not in os.listdir(out)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    for f in os.listdir(out):  # what was written before is whole
        if f.endswith(".json"):
            with open(out / f) as fh:
                json.load(fh)


@pytest.mark.parametrize("name", ["0001_{stem}.png", "0001_{stem}.labels.png", "results.json",
                                  "images.json"])
def test_a_full_disk_in_predict_is_one_line_naming_the_file(name, tmp_path, capsys, monkeypatch):
    """issue 27: as in evaluate, for predict's overlays, label images and JSON files."""
    image = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
    name = name.format(stem=os.path.splitext(os.path.basename(image))[0])
    out = tmp_path / "p"
    _disk_full_for(monkeypatch, name)
    _one_line_error(["predict", image, "--weights", "nuclei-mini-dsb2018", "--labels", "--out",
                     str(out)], capsys, "No space left on device", str(out / name))
    assert name not in os.listdir(out)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
