"""The model variants of the paper's Table 2 ablations: one stride-32 map without FPN
(``features="c5"``, Table 2d), the MLP mask head (``mask_head_type="mlp"``, Table 2e) and
class-agnostic masks (``mask_class_agnostic``, section 4.2). Their gradients are checked with the
whole network in ``test_model.py``; here: their structure, predictions and config errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minimaskrcnn.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from minimaskrcnn.config import Config, ModelConfig, config_to_dict
from minimaskrcnn.model import build_model
from minimaskrcnn.model.mask_head import MaskRCNNMLPHead, MaskRCNNMLPPredictor, maskrcnn_inference
from minimaskrcnn.model.roi_heads import branch_forward
from minimaskrcnn.testing.tiny import TINY, tiny_batch


def _variant(**change):
    return build_model(dataclasses.replace(TINY, **change), np.random.default_rng(0))


def test_c5_features_are_one_stride_32_map_with_every_anchor_size():
    model = _variant(features="c5")
    names = [n for n, _ in model.named_parameters() if n.startswith("fpn.")]
    assert sorted(names) == ["fpn.inner_blocks.0.bias", "fpn.inner_blocks.0.weight",
                             "fpn.layer_blocks.0.bias", "fpn.layer_blocks.0.weight"]
    # the lateral conv reads C5 (the last stage's width)
    assert model.fpn.inner_blocks[0].weight.shape[1] == TINY.stage_channels[-1]
    images, targets = tiny_batch()
    batch = model.transform(images)[0].tensors
    feats, _ = model.backbone.forward(batch)
    maps, _ = model.fpn.forward(model._fpn_inputs(feats))
    assert len(maps) == 1 and maps[0].shape[-2:] == (batch.shape[2] // 32, batch.shape[3] // 32)
    n_sizes, n_ratios = len(TINY.anchor_sizes), len(TINY.aspect_ratios)
    anchors = model.rpn.anchor_generator(batch.shape[-2:], [maps[0].shape[-2:]])
    assert len(anchors) == 1
    assert anchors[0].shape[0] == maps[0].shape[2] * maps[0].shape[3] * n_sizes * n_ratios
    # every anchor size is centred on the same stride-32 cells
    widths = anchors[0][:, 2] - anchors[0][:, 0]
    side = np.sqrt(widths * (anchors[0][:, 3] - anchors[0][:, 1]))
    np.testing.assert_allclose(np.unique(np.round(side)), sorted(TINY.anchor_sizes))
    _, losses, cache = model.forward_train(images, targets, np.random.default_rng(0))
    assert all(np.isfinite(v) for v in losses.values())
    d_images = model.backward(None, cache)
    assert d_images.shape == batch.shape and np.abs(d_images).sum() > 0
    out = model.predict(images)
    assert [o["masks"].shape[1:] for o in out] == [(64, 64), (48, 60)]


def _mask_logits(model, maps, rois, image_shape):
    rh = model.roi_heads
    logits, _ = branch_forward(rh.mask_roi_pool, rh.mask_head, rh.mask_predictor, maps, rois,
                               image_shape)
    return logits


def test_mlp_mask_head_has_no_convolution_and_gives_k_plus_1_channels():
    model = _variant(mask_head_type="mlp", mask_mlp_dims=(12, 10))
    names = sorted(n for n, _ in model.named_parameters() if n.startswith("roi_heads.mask_"))
    assert names == ["roi_heads.mask_head.mask_fc1.bias", "roi_heads.mask_head.mask_fc1.weight",
                     "roi_heads.mask_head.mask_fc2.bias", "roi_heads.mask_head.mask_fc2.weight",
                     "roi_heads.mask_predictor.mask_fc_logits.bias",
                     "roi_heads.mask_predictor.mask_fc_logits.weight"]
    assert isinstance(model.roi_heads.mask_head, MaskRCNNMLPHead)
    assert isinstance(model.roi_heads.mask_predictor, MaskRCNNMLPPredictor)
    s, m, k1 = TINY.mask_roi_size, TINY.mask_size, TINY.num_classes + 1
    assert model.roi_heads.mask_head.mask_fc1.weight.shape == (12, TINY.fpn_channels * s * s)
    assert model.roi_heads.mask_predictor.mask_fc_logits.weight.shape == (k1 * m * m, 10)
    images, _ = tiny_batch()
    batch = model.transform(images)[0].tensors
    pyramid = model.fpn.predict(model.backbone.predict(batch))
    rois = [np.array([[4, 4, 30, 30], [10, 8, 40, 44]], np.float32)]
    logits = _mask_logits(model, pyramid[:-1], rois, batch.shape[-2:])
    assert logits.shape == (2, k1, m, m)
    out = model.predict(images)
    assert out[0]["masks"].shape[1:] == (64, 64)


def test_class_agnostic_masks_read_one_channel_for_every_class():
    model = _variant(mask_class_agnostic=True)
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.shape[0] == 2  # bg + one mask
    images, _ = tiny_batch()
    batch, sizes = model.transform(images)[0]
    pyramid = model.fpn.predict(model.backbone.predict(batch))
    box = np.array([[6, 5, 40, 38]], np.float32)
    labels = np.array([1, 2], np.int64)
    dets = [{"boxes": np.concatenate([box, box]), "labels": labels,
             "scores": np.array([0.9, 0.8], np.float32)}]
    logits = _mask_logits(model, pyramid[:-1], [dets[0]["boxes"]], batch.shape[-2:])
    assert logits.shape[1] == 2
    probs = maskrcnn_inference(logits, [model.roi_heads.mask_channels(labels)], TINY.mask_loss)
    dets[0]["masks"] = probs[0]
    # the mask threshold at the median probability makes the masks non-trivial
    model.transform.mask_threshold = float(np.median(1 / (1 + np.exp(-logits[0, 1]))))
    out = model.transform.postprocess(dets, sizes[:1], sizes[:1])
    masks = out[0]["masks"]
    assert masks[0].any() and not masks[0].all()
    np.testing.assert_array_equal(masks[0], masks[1])  # class 1 and class 2: the same mask
    # class-specific masks differ between the classes on the same box
    model = _variant()
    logits = _mask_logits(model, pyramid[:-1], [dets[0]["boxes"]], batch.shape[-2:])
    assert not np.allclose(logits[0, 1], logits[0, 2])
    np.testing.assert_array_equal(model.roi_heads.mask_channels(labels), labels)


@pytest.mark.parametrize("change, match", [
    ({"features": "c4"}, "features must be one of"),
    ({"mask_head_type": "transformer"}, "mask_head_type must be one of"),
    ({"mask_head_type": "mlp", "mask_mlp_dims": ()}, "mask_mlp_dims"),
    ({"mask_head_type": "mlp", "mask_mlp_dims": (0,)}, "mask_mlp_dims"),
    ({"features": "c5", "anchor_sizes": ()}, "anchor_sizes"),
    ({"anchor_sizes": (8, 16)}, "one size per RPN level"),
])
def test_bad_variant_configs_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**change)


def test_c5_takes_any_number_of_anchor_sizes():
    model = build_model(dataclasses.replace(TINY, features="c5", anchor_sizes=(16, 48)),
                        np.random.default_rng(0))
    assert model.rpn.head.cls_logits.weight.shape[0] == 2 * len(TINY.aspect_ratios)


def test_variant_checkpoint_round_trip(tmp_path):
    cfg = dataclasses.replace(TINY, features="c5", mask_head_type="mlp", mask_mlp_dims=(12, 10),
                              mask_class_agnostic=True)
    config = Config(model=cfg)
    model = build_model(config, np.random.default_rng(0))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, model, config=config_to_dict(config))
    back = config_from_checkpoint(load_checkpoint(path))
    assert back.model == cfg
    other = build_model(back, np.random.default_rng(1))
    load_checkpoint(path, other)
    for (n, a), (_, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=n)


def test_octave_scales_put_several_anchor_sizes_on_every_level(tmp_path):
    # the nuclei preset's three sizes an octave: level size s -> s, s 2^(1/3), s 2^(2/3)
    # (rounded) on the same cells; the head predicts 3 x ratios anchors a location
    scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    model = _variant(anchor_octave_scales=scales)
    n_ratios = len(TINY.aspect_ratios)
    assert model.rpn.head.cls_logits.weight.shape[0] == 3 * n_ratios
    assert model.rpn.head.bbox_pred.weight.shape[0] == 4 * 3 * n_ratios
    images, targets = tiny_batch()
    batch = model.transform(images)[0].tensors
    feats, _ = model.backbone.forward(batch)
    maps, _ = model.fpn.forward(model._fpn_inputs(feats))
    anchors = model.rpn.anchor_generator(batch.shape[-2:], [m.shape[-2:] for m in maps])
    for level, (a, size) in enumerate(zip(anchors, TINY.anchor_sizes, strict=True)):
        assert a.shape[0] == maps[level].shape[2] * maps[level].shape[3] * 3 * n_ratios
        w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        square = w == h  # ratio 1; corners are +-half the side, rounded (torchvision's)
        want = sorted({2 * round(round(size * m) / 2) for m in scales})
        np.testing.assert_array_equal(np.unique(w[square]), want)
    _, losses, cache = model.forward_train(images, targets, np.random.default_rng(0))
    assert all(np.isfinite(v) for v in losses.values())
    model.backward(None, cache)
    with pytest.raises(ValueError, match="anchor_octave_scales"):
        ModelConfig(anchor_octave_scales=())
    config = Config(model=dataclasses.replace(TINY, anchor_octave_scales=scales))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, model, config=config_to_dict(config))
    assert config_from_checkpoint(load_checkpoint(path)).model.anchor_octave_scales == scales
