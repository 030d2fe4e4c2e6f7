"""COCO keypoints in the reader, the transforms and the evaluation; the synthetic keypoint set."""

import copy

import numpy as np
import pytest

from minimaskrcnn.config import ModelConfig
from minimaskrcnn.data.coco import CocoDataset, DatasetError, flip_pairs
from minimaskrcnn.data.keypoint_shapes import make_keypoint_shapes
from minimaskrcnn.data.transforms import flip_keypoints, random_crop_flip, sample_crop
from minimaskrcnn.evaluation import evaluate_coco, keypoint_sigmas
from minimaskrcnn.evaluation.coco_eval import coco_results


@pytest.fixture(scope="module")
def kp_data():
    return make_keypoint_shapes(4, seed=3)


def test_synthetic_keypoint_set(kp_data):
    images, coco = kp_data
    ds = CocoDataset(coco, images=images)
    assert ds.num_keypoints == 3 and ds.keypoint_names == ["apex", "left_base", "right_base"]
    assert ds.keypoint_flip_pairs == [(1, 2)] and ds.keypoint_sigmas == [0.1, 0.1, 0.1]
    image, target = ds[0]
    g = target["labels"].shape[0]
    assert g >= 1 and target["keypoints"].shape == (g, 3, 3)
    assert target["keypoints"].dtype == np.float32 and (target["keypoints"][..., 2] == 2).all()
    for kp, m, box in zip(target["keypoints"], target["masks"], target["boxes"], strict=True):
        # the vertices are the corners of the mask: within a pixel of its box
        assert (kp[:, 0] >= box[0] - 1).all() and (kp[:, 0] <= box[2] + 1).all()
        assert (kp[:, 1] >= box[1] - 1).all() and (kp[:, 1] <= box[3] + 1).all()
        # handedness: walking base -> apex, left_base is on the left (image axes, y down)
        mid = (kp[1, :2] + kp[2, :2]) / 2
        u = kp[0, :2] - mid
        d = kp[1, :2] - mid
        assert u[0] * d[1] - u[1] * d[0] < 0
        assert m.any()


def test_flip_pairs_from_names():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "tail"]
    assert flip_pairs(names) == [(1, 2), (3, 4)]
    assert flip_pairs(["a", "b"]) == []


def test_wrong_number_of_keypoints_names_the_record(kp_data):
    images, coco = kp_data
    bad = copy.deepcopy(coco)
    bad["annotations"][1]["keypoints"] = bad["annotations"][1]["keypoints"][:6]
    with pytest.raises(DatasetError, match=r"annotations\[1\] \(id 2\).*2 keypoints, but category "
                                           r"1 defines K = 3"):
        CocoDataset(bad, images=images)
    bad = copy.deepcopy(coco)
    bad["annotations"][0]["num_keypoints"] = 1
    with pytest.raises(DatasetError, match=r"annotations\[0\].*num_keypoints is 1 but 3"):
        CocoDataset(bad, images=images)
    bad = copy.deepcopy(coco)
    del bad["categories"][0]["keypoints"]
    with pytest.raises(DatasetError, match="has keypoints but category 1 names none"):
        CocoDataset(bad, images=images)
    bad = copy.deepcopy(coco)
    bad["categories"][0]["skeleton"] = [[1, 4]]
    with pytest.raises(DatasetError, match=r"categories\[0\]: 'skeleton'"):
        CocoDataset(bad, images=images)
    bad = copy.deepcopy(coco)
    bad["annotations"][0]["keypoints"][2] = 3
    with pytest.raises(DatasetError, match="visibilities must be 0, 1 or 2"):
        CocoDataset(bad, images=images)


def test_flip_moves_keypoints_and_swaps_pairs():
    kp = np.array([[[2.0, 3.0, 2], [10.0, 1.0, 1], [0, 0, 0]]], np.float32)
    out = flip_keypoints(kp, 16, 0, [(0, 1)])
    # x -> 16 - x, then keypoints 0 and 1 exchange places; the unlabelled one stays 0, 0, 0
    np.testing.assert_array_equal(out[0], [[6, 1, 1], [14, 3, 2], [0, 0, 0]])
    out = flip_keypoints(kp, 16, 1)  # no pairs: only mirrored
    np.testing.assert_array_equal(out[0], [[2, 13, 2], [10, 15, 1], [0, 0, 0]])


def test_crop_and_flip_keypoints_follow_the_image(kp_data):
    images, coco = kp_data
    ds = CocoDataset(coco, images=images)
    for seed in range(6):
        a = random_crop_flip(*ds[1], 64, 0.5, 0.5, np.random.default_rng(seed),
                             flip_pairs=ds.keypoint_flip_pairs)
        b = sample_crop(ds, 1, 64, 0.5, 0.5, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[1]["keypoints"], b[1]["keypoints"])
        np.testing.assert_array_equal(a[1]["masks"], b[1]["masks"])
        _, t = a
        for kp, m in zip(t["keypoints"], t["masks"], strict=True):
            for x, y, v in kp:
                if v > 0:  # a labelled keypoint sits on (or next to) its object's mask
                    yi, xi = int(min(max(y, 0), 63)), int(min(max(x, 0), 63))
                    near = m[max(yi - 2, 0):yi + 3, max(xi - 2, 0):xi + 3]
                    assert near.any(), (seed, x, y)
            lab = kp[kp[:, 2] > 0]
            if len(lab) == 3:  # handedness survives any flip thanks to the swap
                mid = (kp[1, :2] + kp[2, :2]) / 2
                u, d = kp[0, :2] - mid, kp[1, :2] - mid
                assert u[0] * d[1] - u[1] * d[0] < 0


def test_keypoint_evaluation_perfect_and_shifted(kp_data):
    images, coco = kp_data
    ds = CocoDataset(coco, images=images)
    results = {}
    for i in range(len(ds)):
        _, t = ds[i]
        results[int(ds.image_ids[i])] = {"boxes": t["boxes"], "labels": t["labels"],
                                         "scores": np.linspace(0.9, 0.5, len(t["labels"])),
                                         "keypoints": t["keypoints"]}
    cfg = ModelConfig(num_keypoints=3)
    sigmas = keypoint_sigmas(cfg, ds)
    np.testing.assert_array_equal(sigmas, [0.1, 0.1, 0.1])
    m = evaluate_coco(ds.coco, results, ds.category_ids, (20,), iou_types=("keypoints",),
                      keypoint_sigmas=sigmas)
    assert m["keypoints"]["AP"] == pytest.approx(1.0)
    for r in results.values():
        r["keypoints"] = r["keypoints"] + np.array([6.0, 0, 0], np.float32)
    shifted = evaluate_coco(ds.coco, results, ds.category_ids, (20,), iou_types=("keypoints",),
                            keypoint_sigmas=sigmas)
    assert shifted["keypoints"]["AP"] < 0.5
    entry = coco_results(results, ds.category_ids, iou_type="keypoints")[0]
    assert set(entry) == {"image_id", "category_id", "score", "keypoints"}
    assert len(entry["keypoints"]) == 9
    with pytest.raises(ValueError, match="needs keypoint_sigmas"):
        evaluate_coco(ds.coco, results, ds.category_ids, (20,), iou_types=("keypoints",))
    with pytest.raises(ValueError, match="the model predicts 2 keypoints, the dataset"):
        keypoint_sigmas(ModelConfig(num_keypoints=2), ds)
    assert keypoint_sigmas(ModelConfig(), ds) is None
    assert keypoint_sigmas(ModelConfig(num_keypoints=3, keypoint_sigmas=(1.0, 2.0, 3.0)),
                           ds).tolist() == [1, 2, 3]


def test_lego_battery_sample_loads_with_keypoints_and_derived_boxes():
    from minimaskrcnn.data.lego_battery import LEGO_DIR, load_lego_battery

    train, val = load_lego_battery("train"), load_lego_battery("val")
    assert (len(train), len(val)) == (27, 7)
    assert not set(train.coco.imgs[i]["file_name"] for i in train.image_ids) & set(
        val.coco.imgs[i]["file_name"] for i in val.image_ids)
    assert train.num_keypoints == 5 and train.keypoint_flip_pairs == [(0, 1)]  # top-left/right
    assert train.keypoint_names[0] == "top-left" and not train.has_masks
    for ds in (train, val):
        for i in range(len(ds)):
            image, t = ds[i]
            assert image.shape == (256, 512, 3) and t["keypoints"].shape == (1, 5, 3)
            kp, box = t["keypoints"][0], t["boxes"][0]
            lab = kp[kp[:, 2] > 0]
            # the box (from the box-shaped mask) holds every labelled keypoint
            assert (lab[:, 0] >= box[0]).all() and (lab[:, 0] <= box[2]).all()
            assert (lab[:, 1] >= box[1]).all() and (lab[:, 1] <= box[3]).all()
    import os

    assert os.path.isfile(os.path.join(LEGO_DIR, "LICENSE"))
    with pytest.raises(ValueError, match="split must be"):
        load_lego_battery("test")


def test_keypoint_only_annotation_needs_a_bbox(kp_data):
    images, coco = kp_data
    bad = copy.deepcopy(coco)
    del bad["annotations"][0]["segmentation"], bad["annotations"][0]["bbox"]
    with pytest.raises(DatasetError, match=r"annotations\[0\].*has no 'segmentation'"):
        CocoDataset(bad, images=images)


def test_evaluate_model_reports_keypoint_ap_and_writes_keypoints(kp_data, tmp_path):
    import json

    from minimaskrcnn.config import EvalConfig, get_preset
    from minimaskrcnn.evaluation import evaluate_model, format_metrics
    from minimaskrcnn.model import build_model

    images, coco = kp_data
    ds = CocoDataset(coco, images=images)
    model = build_model(get_preset("keypoints-mini"), np.random.default_rng(0))  # untrained
    metrics = evaluate_model(model, ds, EvalConfig(max_dets=(20,)), out_dir=str(tmp_path),
                             limit=2)
    assert set(metrics["keypoints"]) == {"AP", "AP50", "AP75"}
    assert "kp" in format_metrics(metrics)
    with open(tmp_path / "results.json") as f:
        entries = json.load(f)
    assert entries and all(len(e["keypoints"]) == 9 for e in entries)


def test_evaluate_model_on_lego_battery_skips_mask_ap():
    from minimaskrcnn.config import EvalConfig, ModelConfig
    from minimaskrcnn.data.lego_battery import load_lego_battery
    from minimaskrcnn.evaluation import evaluate_model
    from minimaskrcnn.model import build_model

    val = load_lego_battery("val")
    cfg = ModelConfig(num_keypoints=5, keypoint_head_convs=1, keypoint_head_channels=8,
                      stem_channels=8, stage_channels=(8, 8, 8, 8), fpn_channels=8,
                      representation_size=16, mask_head_channels=8, mask_head_convs=1)
    metrics = evaluate_model(build_model(cfg, np.random.default_rng(0)), val,
                             EvalConfig(max_dets=(20,)), limit=1)
    assert "segm" not in metrics and {"bbox", "keypoints"} <= set(metrics)


@pytest.mark.parametrize("x, y", [(1e6, 5.0), (5.0, -40.0), (1e300, 5.0)])
def test_keypoints_outside_the_image_are_refused(kp_data, x, y):
    """issue 27: keypoints outside the image, or at 1e300 (inf in float32), were accepted
    although polygons and boxes outside are refused."""
    images, coco = kp_data
    bad = copy.deepcopy(coco)
    a = bad["annotations"][1]
    a["keypoints"][3:5] = [x, y]
    a["keypoints"][5] = 2
    with pytest.raises(DatasetError, match=r"annotations\[1\] \(id 2\).*: keypoint 2 "
                                           r"\(.*\) lies outside the image"):
        CocoDataset(bad, images=images)
    a["keypoints"][5] = 0  # unlabelled: its x, y mean nothing
    a["num_keypoints"] -= 1
    CocoDataset(bad, images=images)


def test_every_keypoint_outside_its_box_is_warned(kp_data):
    """issue 27: a set whose keypoints all lie outside their boxes trained with loss_keypoint 0
    and no warning."""
    images, coco = kp_data
    bad = copy.deepcopy(coco)
    for a in bad["annotations"]:
        x, y, bw, bh = a["bbox"]
        a["bbox"] = [0, 0, 1, 1] if x > 3 or y > 3 else [60, 60, 1, 1]
    with pytest.warns(UserWarning, match=r"none of the \d+ labelled keypoints lies inside its "
                                         r"instance's bbox"):
        CocoDataset(bad, images=images)


def test_duplicate_keypoint_names_are_refused(kp_data):
    """issue 27: a name twice made one keypoint part of two flip pairs."""
    images, coco = kp_data
    bad = copy.deepcopy(coco)
    bad["categories"][0]["keypoints"] = ["left_base", "left_base", "right_base"]
    with pytest.raises(DatasetError, match=r"categories\[0\]: keypoint names must be distinct, "
                                           r"\['left_base'\] appear more than once"):
        CocoDataset(bad, images=images)
