"""Overlays and figures (minimaskrcnn.viz): what is drawn where, and that the PNGs are written."""

import numpy as np
from pycocotools import mask as mask_utils

from minimaskrcnn.data import shapes
from minimaskrcnn.viz import (
    instance_colours,
    overlay,
    plot_dataset_predictions,
    plot_loss_curve,
    plot_predictions_vs_gt,
    save_overlay,
    shown_detections,
)


def _instances(scores=None):
    m = np.zeros((1, 10, 12), bool)
    m[0, 3:6, 4:8] = True
    d = {"masks": m, "boxes": np.array([[4, 3, 8, 6]], np.float32)}
    if scores is not None:
        d["scores"] = np.array(scores, np.float32)
    return d


def test_overlay_blends_mask_and_draws_box():
    image = np.zeros((10, 12, 3), np.uint8)
    c = instance_colours(1)[0].astype(float)
    out = overlay(image, _instances(), alpha=0.5, boxes=False)
    np.testing.assert_array_equal(out[4, 5], np.rint(0.5 * c))  # inside: half the colour
    assert not out[0].any() and not out[:, 0].any()  # outside untouched
    out = overlay(image, _instances(), alpha=0.5)
    np.testing.assert_array_equal(out[3, 4], c.astype(np.uint8))  # box corner: the colour
    np.testing.assert_array_equal(out[5, 7], c.astype(np.uint8))  # other corner (x2-1, y2-1)
    np.testing.assert_array_equal(out[4, 5], np.rint(0.5 * c))     # interior: blend only
    # predictions under the score threshold are not drawn
    assert not overlay(image, _instances([0.3]), score_thresh=0.5).any()
    assert overlay(image, _instances([0.7]), score_thresh=0.5).any()


def test_figures_are_written(tmp_path):
    image = np.full((10, 12, 3), 40, np.uint8)
    save_overlay(str(tmp_path / "o.png"), image, _instances([0.9]))
    plot_predictions_vs_gt([image, image], [_instances(), _instances()],
                           [_instances([0.9]), _instances([0.1])], str(tmp_path / "f.png"))
    recs = [{"iteration": t, "loss": 2.0 / (t + 1), "loss_mask": 1.0 / (t + 1)} for t in range(30)]
    plot_loss_curve(recs, str(tmp_path / "c.png"),
                    val_records=[{"iteration": 29, "segm": {"AP": 0.1}}])
    for name in ("o.png", "f.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_shown_detections_keeps_the_scores_above_the_threshold_and_decodes_masks():
    m = np.zeros((3, 10, 12), bool)
    m[0, 1:3, 1:3] = m[1, 4:6, 4:8] = m[2, 7:9, 2:5] = True
    rles = [mask_utils.encode(np.asfortranarray(x.astype(np.uint8))) for x in m]
    pred = {"scores": np.array([0.9, 0.2, 0.6], np.float32), "masks": rles,
            "boxes": np.arange(12, dtype=np.float32).reshape(3, 4),
            "labels": np.array([1, 2, 3])}
    shown = shown_detections(pred, 0.5, (10, 12))
    np.testing.assert_array_equal(shown["masks"], m[[0, 2]])
    np.testing.assert_array_equal(shown["labels"], [1, 3])
    np.testing.assert_array_equal(shown["boxes"], pred["boxes"][[0, 2]])
    none = shown_detections(pred, 0.95, (10, 12))
    assert none["masks"].shape == (0, 10, 12) and len(none["scores"]) == 0


class _Predictor:
    calls = 0

    def predict(self, images):
        self.calls += len(images)
        return [{"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                 "labels": np.zeros(0, np.int64), "masks": np.zeros((0,) + im.shape[1:], bool)}
                for im in images]


def test_dataset_predictions_reuse_given_results(tmp_path):
    ds = shapes.shapes_dataset(3, seed=0, image_size=32, max_shapes=2, min_size=8, max_size=12)
    model = _Predictor()
    given = {int(ds.image_ids[0]): model.predict([np.zeros((3, 32, 32), np.float32)])[0]}
    model.calls = 0
    plot_dataset_predictions(model, ds, str(tmp_path / "p.png"), 5, given)
    assert model.calls == 2  # the other two images, predicted here
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
