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
from minimaskrcnn.evaluation import (
    Predictions,
    dataset_dsb_score,
    dsb_image_score,
    dsb_image_score_rle,
    evaluate_model,
)

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


def _random_case(rng, g, d, h=24, w=20):
    """``g`` ground-truth and ``d`` predicted random rectangles, scores with ties."""
    def rects(n):
        m = np.zeros((n, h, w), bool)
        for k in range(n):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            m[k, y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = True
        return m

    return rects(g), rects(d), rng.choice([0.3, 0.5, 0.7, 0.9], size=d)


def test_dsb_image_score_rle_equals_the_dense_score():
    rng = np.random.default_rng(0)
    for g, d in [(0, 0), (0, 3), (3, 0), (5, 5), (12, 30), (30, 8)]:
        for _ in range(5):
            gt, pred, scores = _random_case(rng, g, d)
            rles = [_rle(m) for m in pred]
            for thresh in (0.0, 0.5, 0.8):
                assert dsb_image_score_rle(list(gt), rles, scores, gt.shape[1:], thresh) == \
                    dsb_image_score(gt.reshape(g, 24, 20), pred.reshape(d, 24, 20), scores,
                                    thresh)
    with pytest.raises(ValueError, match=r"scores must be \(D,\)"):
        dsb_image_score_rle([], [_rle(np.ones((2, 2), bool))], [0.9, 0.8], (2, 2))
    with pytest.raises(ValueError, match="a ground-truth mask is"):
        dsb_image_score_rle([np.ones((3, 2), bool)], [_rle(np.ones((2, 2), bool))], [0.9], (2, 2))


def test_one_image_with_many_instances_is_scored_one_mask_at_a_time():
    """issue 27: one image with 2,000 instances took 2 GB; the DSB score now holds one label
    image and the (G, D) intersections, not the (G + D, H, W) dense masks."""
    h = w = 256
    g = 400  # 5 x 5 squares on a grid: 26 MB of dense masks for truth and predictions
    ys, xs = np.divmod(np.arange(g), 20)
    masks = np.zeros((g, h, w), bool)
    for k, (y, x) in enumerate(zip(ys, xs, strict=True)):
        masks[k, 12 * y:12 * y + 5, 12 * x:12 * x + 5] = True
    rles = [_rle(m) for m in masks]
    d = {"images": [{"id": 1, "file_name": "x.png", "height": h, "width": w}],
         "categories": [{"id": 1, "name": "nucleus"}],
         "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": r,
                          "iscrowd": 0} for k, r in enumerate(rles)]}
    ds = CocoDataset(d, images={1: np.zeros((h, w, 3), np.uint8)})
    results = Predictions()
    results.add(1, {"boxes": np.zeros((g, 4), np.float32), "scores": np.full(g, 0.9, np.float32),
                    "labels": np.ones(g, np.int64), "masks": rles}, (h, w))
    del masks
    tracemalloc.start()
    try:
        score = dataset_dsb_score(ds, results)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert score == 1.0
    assert peak < g * h * w / 4, peak  # the dense truth alone is g * h * w bytes
