"""The command line with a model without a mask head (issue 25): ``train --preset lego-battery``
on the embedded lego-battery photographs (Keypoint R-CNN, no masks), then ``evaluate`` and
``predict`` of its checkpoint: no mask metric printed or written, no masks predicted."""

import json
import os

import pytest

from minimaskrcnn.cli import main
from minimaskrcnn.data.lego_battery import lego_battery_paths

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_lego_battery_preset_trains_evaluates_and_predicts_without_masks(tmp_path, capsys):
    out = str(tmp_path / "lego")
    assert main(["train", "--preset", "lego-battery", "--out", out, "--iters", "1",
                 "--batch-size", "1", "--crop-size", "128", "--val-limit", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "embedded lego-battery sample" in text
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model"]["mask_on"] is False and cfg["model"]["num_keypoints"] == 5
    assert "loss_mask" not in _lines(os.path.join(out, "log.jsonl"))[0]
    val = _lines(os.path.join(out, "val.jsonl"))[0]
    assert "keypoints" in val and "bbox" in val and "segm" not in val and "dsb_score" not in val
    assert not any(line.startswith(("mask ", "DSB")) for line in text.splitlines())
    assert any(line.startswith("kp ") for line in text.splitlines())

    ckpt = os.path.join(out, open(os.path.join(out, "last_checkpoint")).read().strip())
    val_json, images = lego_battery_paths("val")
    ev = str(tmp_path / "eval")
    assert main(["evaluate", "--weights", ckpt, "--coco-json", val_json, "--images", images,
                 "--out", ev, "--limit", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "box " in text and "kp " in text and "mask" not in text and "DSB" not in text
    with open(os.path.join(ev, "metrics.json")) as f:
        metrics = json.load(f)
    assert "segm" not in metrics and "dsb_score" not in metrics and "keypoints" in metrics

    image = os.path.join(images, sorted(os.listdir(images))[0])
    pred = str(tmp_path / "pred")
    assert main(["predict", image, "--weights", ckpt, "--out", pred, "--score-thresh",
                 "0"]) == 0
    with open(os.path.join(pred, "results.json")) as f:
        results = json.load(f)
    assert results and all("segmentation" not in r and len(r["keypoints"]) == 15
                           for r in results)
    assert main(["predict", image, "--weights", ckpt, "--out", str(tmp_path / "p2"),
                 "--labels"]) == 2
    err = capsys.readouterr().err
    assert "--labels writes the predicted masks" in err and "Traceback" not in err
