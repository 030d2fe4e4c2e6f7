"""Evaluation's memory is bounded by one image whatever the image count (issue 27): the masks
are kept run-length encoded and the DSB score decodes one image at a time. Measured with
tracemalloc, which sees NumPy's arrays; the model is a stub that makes fresh dense masks on
every call, as a model does, so the run takes seconds."""

import tracemalloc

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from minimaskrcnn.config import EvalConfig
from minimaskrcnn.data import CocoDataset
from minimaskrcnn.evaluation import Predictions, evaluate_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H = W = 384
G = 12  # instances per image: few, so that pycocotools' Python loops stay quick


def _discs(shift=0):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    centres, radii = rng.uniform(20, H - 20, (G, 2)), rng.uniform(8, 16, G)
    return np.stack([(yy - cy) ** 2 + (xx - cx - shift) ** 2 <= r ** 2
                     for (cy, cx), r in zip(centres, radii, strict=True)])


GT = _discs()


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _copies(n):
    """``n`` copies of one image with G instances (COCO RLE annotations)."""
    anns = [{"id": i * G + g + 1, "image_id": i + 1, "category_id": 1, "segmentation": _rle(GT[g]),
             "iscrowd": 0, "bbox": [float(v) for v in mask_utils.toBbox(_rle(GT[g]))],
             "area": float(GT[g].sum())} for i in range(n) for g in range(G)]
    d = {"images": [{"id": i + 1, "file_name": f"{i}.png", "height": H, "width": W}
                    for i in range(n)],
         "categories": [{"id": 1, "name": "nucleus"}], "annotations": anns}
    image = np.zeros((H, W, 3), np.uint8)
    return CocoDataset(d, images={i + 1: image for i in range(n)})


class _Stub:
    """Predicts the ground truth shifted 1 px right, with decreasing scores; dense masks made
    anew on each call, run-length encoded when asked (``mask_format="rle"``)."""

    def predict(self, images, mask_format="bool"):
        m = _discs(shift=1)
        boxes = np.array([[np.flatnonzero(x.any(0))[0], np.flatnonzero(x.any(1))[0],
                           np.flatnonzero(x.any(0))[-1] + 1, np.flatnonzero(x.any(1))[-1] + 1]
                          for x in m], np.float32)
        masks = (mask_utils.encode(np.asfortranarray(m.astype(np.uint8).transpose(1, 2, 0)))
                 if mask_format == "rle" else m)
        return [{"boxes": boxes, "scores": np.linspace(0.99, 0.4, G).astype(np.float32),
                 "labels": np.ones(G, np.int64), "masks": masks}]


def _peak(n):
    ds = _copies(n)
    tracemalloc.start()
    try:
        metrics = evaluate_model(_Stub(), ds, EvalConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, metrics


def test_evaluation_memory_is_bounded_by_one_image():
    _peak(1)  # first call: lazy imports and caches are not the evaluation's
    peak1, m1 = _peak(1)
    n = 12
    peak_n, m_n = _peak(n)
    one_image = G * H * W  # bytes of one image's dense predicted masks (as many for its truth)
    # before: every image's predicted masks and ground truth stayed dense until the end,
    # 10 images measured 39.9 MB against 10.6 MB for one (+2.9 MB per image); now flat
    assert peak_n < peak1 + one_image, (peak1, peak_n, one_image)
    # the same images n times: the same metrics
    assert m_n["segm"] == m1["segm"] and m_n["bbox"] == m1["bbox"]
    assert m_n["dsb_score"] == m1["dsb_score"] and m_n["num_images"] == n


def test_results_keep_rles_and_decode_per_image():
    metrics = evaluate_model(_Stub(), _copies(2), EvalConfig())
    results = metrics["_results"]
    assert isinstance(results, Predictions) and sorted(results) == [1, 2] and len(results) == 2
    assert all(isinstance(r, dict) and "counts" in r for r in results.encoded[1]["masks"])
    pred = results[2]  # decoded on reading: the dense masks predict returns by default
    assert pred["masks"].dtype == bool and pred["masks"].shape == (G, H, W)
    np.testing.assert_array_equal(pred["masks"], _discs(shift=1))
    kept = results.decoded(2, score_thresh=0.7)
    assert len(kept["scores"]) == len(kept["masks"]) == len(kept["boxes"]) == int(
        (np.linspace(0.99, 0.4, G).astype(np.float32) >= 0.7).sum())


def test_predictions_of_an_image_without_detections():
    results = Predictions()
    results.add(5, {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                    "labels": np.zeros(0, np.int64), "masks": []}, (7, 9))
    results.add(6, {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                    "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 7, 9), bool)}, (7, 9))
    for i in (5, 6):
        assert results[i]["masks"].shape == (0, 7, 9) and results.encoded[i]["masks"] == []
