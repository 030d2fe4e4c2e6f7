"""COCO AP on hand-made cases (values worked out by hand in the comments), the COCO results
JSON, and the DSB 2018 score on hand cases."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from minimaskrcnn.data import CocoDataset
from minimaskrcnn.evaluation import (
    coco_results,
    dsb_image_score,
    dsb_score,
    evaluate_coco,
    format_metrics,
    write_metrics,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H, W = 20, 20


def _mask(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


GT1 = _mask(2, 6, 2, 6)      # box [2, 2, 6, 6]
GT2 = _mask(10, 16, 10, 16)  # box [10, 10, 16, 16]
FAR = _mask(15, 19, 0, 4)    # touches no ground truth: box [0, 15, 4, 19]


def _gt(masks, crowd=()):
    anns = []
    for k, m in enumerate(list(masks) + list(crowd)):
        anns.append({"id": k + 1, "image_id": 1, "category_id": 3, "segmentation": _rle(m),
                     "iscrowd": int(k >= len(masks))})
    d = {"images": [{"id": 1, "file_name": "x.png", "height": H, "width": W}],
         "categories": [{"id": 3, "name": "thing"}], "annotations": anns}
    return CocoDataset(d, images={1: np.zeros((H, W, 3), np.uint8)})


def _box(m):
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _pred(masks, scores):
    return {1: {"boxes": np.array([_box(m) for m in masks], np.float32).reshape(-1, 4),
                "scores": np.array(scores, np.float32), "labels": np.ones(len(masks), np.int64),
                "masks": np.array(masks, bool).reshape(-1, H, W)}}


def _ap(ds, preds, max_dets=(10, 100, 500)):
    return evaluate_coco(ds.coco, preds, ds.category_ids, max_dets)


def test_exact_matches_give_ap_one():
    ds = _gt([GT1, GT2])
    m = _ap(ds, _pred([GT1, GT2], [0.9, 0.8]))
    for kind in ("segm", "bbox"):
        assert m[kind] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_false_positive_ranked_first_halves_precision():
    # 1 GT; detections FP (0.9) then TP (0.8): precision [0, 1/2], recall [0, 1]; the
    # interpolated precision (max to the right) is 1/2 at every recall threshold -> AP 0.5
    ds = _gt([GT1])
    m = _ap(ds, _pred([FAR, GT1], [0.9, 0.8]))
    for kind in ("segm", "bbox"):
        assert m[kind] == pytest.approx({"AP": 0.5, "AP50": 0.5, "AP75": 0.5})


def test_fp_between_two_tps_known_curve():
    # 2 GT; TP (0.9), FP (0.8), TP (0.7): precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    # Interpolated: 1 for the 51 recall thresholds 0.00..0.50, 2/3 for the 50 in 0.51..1.00:
    # AP = (51 * 1 + 50 * 2/3) / 101 at every IoU threshold.
    ds = _gt([GT1, GT2])
    m = _ap(ds, _pred([GT1, FAR, GT2], [0.9, 0.8, 0.7]))
    expected = (51 + 50 * 2 / 3) / 101
    for kind in ("segm", "bbox"):
        assert m[kind] == pytest.approx({"AP": expected, "AP50": expected, "AP75": expected})


def test_ap75_differs_from_ap50():
    # a prediction covering GT1 (16 px) plus one more row of 4 px: IoU 16/20 = 0.8 -> a match at
    # thresholds 0.50..0.80 (7 of 10), a miss at 0.85..0.95: AP 0.7, AP50 1, AP75 1
    ds = _gt([GT1])
    m = _ap(ds, _pred([_mask(2, 7, 2, 6)], [0.9]), max_dets=(10, 100, 500))
    for kind in ("segm", "bbox"):
        assert m[kind] == pytest.approx({"AP": 0.7, "AP50": 1.0, "AP75": 1.0})


def test_ap_read_at_the_last_max_dets():
    # with maxDets (1,) only the top detection counts: recall 1/2 at precision 1 -> 51 of the
    # 101 recall thresholds -> AP 51/101 (pycocotools sorts maxDets: the last is the largest)
    ds = _gt([GT1, GT2])
    m = _ap(ds, _pred([GT1, GT2], [0.9, 0.8]), max_dets=(1,))
    assert m["segm"]["AP"] == pytest.approx(51 / 101)
    assert _ap(ds, _pred([GT1, GT2], [0.9, 0.8]), max_dets=(1, 2))["segm"]["AP"] == 1.0


def test_more_than_100_detections_counted():
    # 150 exact detections: AP 1 at maxDets 500, whereas summarize()'s first line (maxDets 100)
    # would report less: the spec's reason for reading eval['precision'].
    h, w = 60, 100
    masks = [_mask(4 * (k // 25), 4 * (k // 25) + 2, 4 * (k % 25), 4 * (k % 25) + 2, h, w)
             for k in range(150)]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "iscrowd": 0}
            for k, m in enumerate(masks)]
    ds = CocoDataset({"images": [{"id": 1, "file_name": "x", "height": h, "width": w}],
                      "categories": [{"id": 1}], "annotations": anns},
                     images={1: np.zeros((h, w, 3), np.uint8)})
    preds = {1: {"boxes": np.array([_box(m) for m in masks], np.float32),
                 "scores": np.linspace(0.99, 0.5, 150).astype(np.float32),
                 "labels": np.ones(150, np.int64), "masks": np.array(masks)}}
    assert _ap(ds, preds)["segm"]["AP"] == pytest.approx(1.0)
    assert _ap(ds, preds, max_dets=(1, 10, 100))["segm"]["AP"] < 0.7


def test_detection_on_crowd_region_is_ignored():
    # the FP of test_false_positive_ranked_first sits on a crowd annotation: ignored -> AP 1
    ds = _gt([GT1], crowd=[FAR])
    assert _ap(ds, _pred([FAR, GT1], [0.9, 0.8]))["segm"]["AP"] == pytest.approx(1.0)


def test_no_detection_and_unknown_image():
    ds = _gt([GT1])
    empty = {1: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64),
                 "masks": np.zeros((0, H, W), bool)}}
    assert _ap(ds, empty)["segm"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with pytest.raises(ValueError, match="not in the ground truth"):
        _ap(ds, {5: empty[1]})


def test_coco_results_json(tmp_path):
    preds = _pred([GT2], [0.75])
    res = coco_results(preds, [7])
    assert len(res) == 1
    r = res[0]
    assert r["image_id"] == 1 and r["category_id"] == 7 and r["score"] == pytest.approx(0.75)
    assert r["bbox"] == [10.0, 10.0, 6.0, 6.0]  # [x, y, w, h]
    np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]), GT2)
    json.dumps(res)  # JSON-ready
    with pytest.raises(ValueError, match="labels must be in 1..1"):
        coco_results({1: dict(preds[1], labels=np.array([2]))}, [7])
    path = tmp_path / "metrics.json"
    write_metrics(str(path), {"segm": {"AP": 0.5}, "dsb_score": 0.25, "_results": object()})
    assert json.loads(path.read_text()) == {"segm": {"AP": 0.5}, "dsb_score": 0.25}
    assert "mask" in format_metrics({"segm": {"AP": 1, "AP50": 1, "AP75": 1}, "dsb_score": 0.5})


# ------------------------------------------------------------------------------- DSB score


def test_dsb_one_match_one_false_positive():
    # 2 GT, 1 perfect match + 1 FP: every threshold TP 1, FP 1, FN 1 -> 1/3
    gt = np.array([GT1, GT2])
    assert dsb_image_score(gt, np.array([GT1, FAR]), [0.9, 0.8]) == pytest.approx(1 / 3)


def test_dsb_strict_iou_threshold():
    # GT 4 px, prediction 3 of them: IoU 0.75 -> a match for t = 0.50..0.70 (5 thresholds; 0.75
    # is not > 0.75), else TP 0, FP 1, FN 1 -> (5 * 1 + 5 * 0) / 10
    gt = _mask(0, 2, 0, 2)[None]
    pred = _mask(0, 1, 0, 2) | _mask(1, 2, 0, 1)
    assert dsb_image_score(gt, pred[None], [0.9]) == pytest.approx(0.5)


def test_dsb_masks_made_non_overlapping_by_score():
    # B (0.8) covers GT1 and GT2 (IoU 1/2 with GT2: no match); A (0.9) = GT1 takes its pixels
    # first, so B keeps exactly GT2 -> both perfect -> 1. The 0.4 detection is below 0.5: ignored.
    g1, g2 = _mask(0, 4, 0, 4), _mask(0, 4, 4, 8)
    gt = np.array([g1, g2])
    b = _mask(0, 4, 0, 8)
    assert dsb_image_score(gt, np.array([b, g1, FAR]), [0.8, 0.9, 0.4]) == pytest.approx(1.0)
    # the same with the order of scores swapped: B wins everything, A is left empty (dropped):
    # B's IoU with GT1 or GT2 is 1/2, not > 0.5 -> TP 0, FP 1, FN 2 -> 0
    assert dsb_image_score(gt, np.array([b, g1]), [0.9, 0.8]) == pytest.approx(0.0)


def test_dsb_empty_cases_and_mean_over_images():
    none = np.zeros((0, H, W), bool)
    assert dsb_image_score(none, none, []) == 1.0
    assert dsb_image_score(none, GT1[None], [0.9]) == 0.0
    assert dsb_image_score(GT1[None], none, []) == 0.0
    gts = {1: np.array([GT1, GT2]), 2: GT1[None]}
    res = {1: {"masks": np.array([GT1, FAR]), "scores": np.array([0.9, 0.8])},
           2: {"masks": GT1[None], "scores": np.array([0.6])}}
    assert dsb_score(gts, res) == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="no prediction entry for image ids"):
        dsb_score({3: GT1[None]}, res)
    with pytest.raises(ValueError, match="must share H, W"):
        dsb_image_score(GT1[None], np.zeros((1, 3, 3)), [1.0])


# ------------------------------------------------------------------------------- evaluate_model


class _Oracle:
    """Predicts, with label ``label``, the masks given for each call."""

    def __init__(self, masks, label):
        self.masks, self.label = masks, label

    def predict(self, images, mask_format="bool"):  # dense masks either way
        p = _pred(self.masks, [0.9] * len(self.masks))[1]
        p["labels"][:] = self.label
        return [p]


def _two_category_gt():
    d = {"images": [{"id": 1, "file_name": "x.png", "height": H, "width": W}],
         "categories": [{"id": 17, "name": "b"}, {"id": 3, "name": "a"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 17, "segmentation": _rle(GT1)}]}
    return CocoDataset(d, images={1: np.zeros((H, W, 3), np.uint8)})


def test_evaluate_model_reports_labels_under_the_models_category_ids(tmp_path):
    from minimaskrcnn.config import EvalConfig
    from minimaskrcnn.evaluation import evaluate_model

    ds = _two_category_gt()  # ids [3, 17]: label 2 is category 17
    m = evaluate_model(_Oracle([GT1], 2), ds, EvalConfig(), category_ids=[3, 17],
                       out_dir=str(tmp_path))
    assert m["segm"]["AP"] == pytest.approx(1.0)
    with open(tmp_path / "results.json") as f:
        assert [r["category_id"] for r in json.load(f)] == [17]
    # a model trained on other ids is refused, not reported under the dataset's ids
    with pytest.raises(ValueError, match=r"has category ids \[3, 17\], the model's labels are \[1, 2\]"):
        evaluate_model(_Oracle([GT1], 2), ds, EvalConfig(), category_ids=[1, 2])


def test_evaluate_model_refuses_nothing_to_evaluate():
    from minimaskrcnn.config import EvalConfig
    from minimaskrcnn.evaluation import evaluate_model

    ds = _two_category_gt()
    with pytest.raises(ValueError, match="limit must be an integer >= 1, got 0"):
        evaluate_model(_Oracle([GT1], 1), ds, EvalConfig(), limit=0)
    empty = CocoDataset({"images": [], "categories": [{"id": 1}], "annotations": []}, images={})
    with pytest.raises(ValueError, match="in-memory COCO dict>: no images to evaluate"):
        evaluate_model(_Oracle([GT1], 1), empty, EvalConfig())


def test_coco_results_take_run_length_encoded_masks():
    """predict(..., mask_format="rle") masks give the same results JSON as dense masks."""
    from pycocotools import mask as mask_utils

    from minimaskrcnn.evaluation import coco_results

    m = np.zeros((2, 6, 7), bool)
    m[0, 1:3, 2:5] = True
    m[1, 4:, :2] = True
    pred = {"boxes": np.array([[2, 1, 5, 3], [0, 4, 2, 6]], np.float32),
            "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([1, 1])}
    dense = coco_results({3: {**pred, "masks": m}}, [5])
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    assert coco_results({3: {**pred, "masks": rles}}, [5]) == dense


def test_dataset_dsb_score_label_path_equals_the_rle_path_and_cleanup_changes_it(tmp_path):
    # min_area=1 goes through label_image + clean_labels (it removes only empty instances,
    # which the plain path drops too): the same score as the plain one-mask-at-a-time path
    from minimaskrcnn.evaluation import Predictions, dataset_dsb_score

    coco = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "nucleus"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "segmentation": _rle(m), "area": int(m.sum()),
                             "bbox": [0, 0, 1, 1]} for k, m in enumerate((GT1, GT2))]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    from PIL import Image
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    ds = CocoDataset(str(path), str(tmp_path))
    holed = GT2.copy()
    holed[12:14, 12:14] = False      # an enclosed 2x2 hole: IoU 32/36 = 0.889 with GT2
    speck = _mask(0, 1, 18, 20)      # a 2-pixel false positive
    preds = Predictions()
    masks = np.stack([GT1, holed, speck, FAR])
    preds.add(1, {"boxes": np.zeros((4, 4), np.float32), "labels": np.ones(4, np.int64),
                  "scores": np.array([0.9, 0.8, 0.7, 0.3], np.float32), "masks": masks}, (H, W))
    plain = dataset_dsb_score(ds, preds, 0.5)
    assert dataset_dsb_score(ds, preds, 0.5, min_area=1) == plain
    # at 0.5: GT1 matches at every threshold; holed (32 px) vs GT2 (36): IoU 0.889 matches at
    # t < 0.889 (0.50..0.85: 8 of 10); the speck is a false positive throughout
    want = np.mean([2 / 3] * 8 + [1 / 4] * 2)   # t>=0.9: tp 1, fp 2 (holed, speck), fn 1
    assert plain == pytest.approx(want)
    # min_area 3 removes the speck: 2/2 then 1/3
    assert dataset_dsb_score(ds, preds, 0.5, min_area=3) == pytest.approx(
        np.mean([1.0] * 8 + [1 / 3] * 2))
    # filling the hole makes it GT2 (IoU 1): every threshold matches
    assert dataset_dsb_score(ds, preds, 0.5, fill_holes=True, min_area=3) == pytest.approx(1.0)
