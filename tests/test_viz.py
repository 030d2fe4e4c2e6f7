"""Overlays and figures (minimaskrcnn.viz): what is drawn where, and that the PNGs are written."""

import numpy as np

from minimaskrcnn.viz import (
    instance_colours,
    overlay,
    plot_loss_curve,
    plot_predictions_vs_gt,
    save_overlay,
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
