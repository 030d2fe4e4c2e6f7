"""Evaluation follows the model's heads (issue 25): no mask metric (segm AP, DSB score) for a
model without a mask head, whatever masks the dataset has."""

import dataclasses
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from minimaskrcnn.config import EvalConfig
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.evaluation import Predictions, evaluate_model, format_metrics, model_has_masks
from minimaskrcnn.model import build_model
from minimaskrcnn.testing.tiny import TINY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H, W = 40, 48


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _dataset():
    """One image, two square instances with masks, categories 1 and 2."""
    anns = []
    for k, (y0, x0, c) in enumerate([(4, 6, 1), (20, 24, 2)]):
        m = np.zeros((H, W), bool)
        m[y0:y0 + 12, x0:x0 + 12] = True
        anns.append({"id": k + 1, "image_id": 1, "category_id": c, "segmentation": _rle(m),
                     "bbox": [x0, y0, 12, 12], "area": 144, "iscrowd": 0})
    d = {"images": [{"id": 1, "file_name": "x.png", "height": H, "width": W}],
         "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": anns}
    return CocoDataset(d, images={1: np.full((H, W, 3), 128, np.uint8)})


class _BoxOracle:
    """A box-only model (``config.mask_on`` False) that predicts the ground-truth boxes."""

    config = dataclasses.replace(TINY, mask_on=False)

    def predict(self, images, mask_format="bool"):
        return [{"boxes": np.array([[6, 4, 18, 16], [24, 20, 36, 32]], np.float32),
                 "scores": np.array([0.9, 0.8], np.float32),
                 "labels": np.array([1, 2], np.int64)}]


def test_box_only_model_gets_box_ap_and_no_mask_metric(tmp_path):
    ds = _dataset()
    assert ds.has_masks and not model_has_masks(_BoxOracle())
    m = evaluate_model(_BoxOracle(), ds, EvalConfig(), out_dir=str(tmp_path))
    assert m["bbox"]["AP"] == pytest.approx(1.0)
    assert "segm" not in m and "dsb_score" not in m and "keypoints" not in m
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert "segm" not in written and "dsb_score" not in written and "bbox" in written
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert len(results) == 2 and all("segmentation" not in r and "bbox" in r for r in results)
    text = format_metrics(m)
    assert "box" in text and "mask" not in text and "DSB" not in text
    pred = m["_results"][1]  # read back without masks, cut by score as before
    assert "masks" not in pred and len(pred["scores"]) == 2
    assert len(m["_results"].decoded(1, score_thresh=0.85)["scores"]) == 1


@pytest.mark.parametrize("mask_on", [True, False])
def test_evaluate_real_model_with_and_without_its_mask_head(mask_on):
    cfg = dataclasses.replace(TINY, mask_on=mask_on, box_score_thresh=0.0)
    model = build_model(cfg, np.random.default_rng(0))
    m = evaluate_model(model, _dataset(), EvalConfig(max_dets=(10, 20, 20)))
    assert "bbox" in m and m["num_images"] == 1
    assert ("segm" in m) == mask_on and ("dsb_score" in m) == mask_on
    pred = m["_results"][1]
    assert len(pred["scores"]) > 0
    assert ("masks" in pred) == mask_on
    if mask_on:
        assert pred["masks"].shape == (len(pred["scores"]), H, W)


def test_predictions_keep_masks_when_given():
    p = Predictions()
    p.add(1, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64),
              "masks": np.zeros((0, H, W), bool)}, (H, W))
    p.add(2, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)},
          (H, W))
    assert p[1]["masks"].shape == (0, H, W) and "masks" not in p[2]
