"""The ``minimaskrcnn`` command on the embedded DSB2018 sample, a few iterations with small crops
and the small ``shapes-mini`` network so that it stays quick in CI; and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

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
                 "--val-images", "1", "--out", out, "--no-progress"])
    assert code == 0
    for name in ("metrics.json", "predictions.png", "loss_curve.png", "checkpoint_000001.npz"):
        assert os.path.isfile(os.path.join(out, name)), name
    text = capsys.readouterr().out
    assert "DSB 2018 score" in text and "s per iteration" in text


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
