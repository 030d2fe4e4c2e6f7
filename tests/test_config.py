import json

import pytest

from minimaskrcnn.config import (
    PRESETS,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    shorten_schedule,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    cfg = get_preset(name)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_the_checkpoint_config_checks(name, tmp_path):
    # a checkpoint of each preset loads back with its config (the checks of a file's values
    # know every field's range: nuclei's dsb_min_area 0, octave scales, jitter ranges)
    import numpy as np

    from minimaskrcnn.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
    from minimaskrcnn.model import build_model

    cfg = get_preset(name)
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, build_model(cfg, np.random.default_rng(0)), config=config_to_dict(cfg))
    assert config_from_checkpoint(load_checkpoint(path)) == cfg


def test_nuclei_mini_numbers_from_spec():
    m = get_preset("nuclei-mini").model
    t = get_preset("nuclei-mini").train
    assert (m.stem_channels, m.stage_channels, m.fpn_channels) == (32, (32, 64, 128, 256), 64)
    assert m.anchor_sizes == (8, 16, 32, 64, 128) and m.aspect_ratios == (0.5, 1.0, 2.0)
    assert (m.rpn_pre_nms_top_n_train, m.rpn_pre_nms_top_n_test) == (2000, 1000)
    assert (m.box_batch_size_per_image, m.box_positive_fraction) == (256, 0.25)
    assert (m.mask_size, m.detections_per_img, m.box_score_thresh) == (28, 500, 0.05)
    assert (t.batch_size, t.iterations, t.base_lr, t.milestones) == (4, 3000, 0.01, (2000, 2666))


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="nuclei-mini"):
        get_preset("coco-huge")


def test_bad_roi_op():
    with pytest.raises(ValueError, match="roi_op"):
        ModelConfig(roi_op="bilinear")


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_image_scale(scale):
    with pytest.raises(ValueError, match="image_scale must be a finite number > 0"):
        ModelConfig(image_scale=scale)


def test_unknown_key_in_dict():
    d = config_to_dict(get_preset("nuclei-mini"))
    d["model"]["depth"] = 50
    with pytest.raises(ValueError, match="depth"):
        config_from_dict(d)


def test_every_config_field_is_read_somewhere():
    """A field that nothing reads is a setting that silently does nothing: every field of
    ModelConfig, TrainConfig and EvalConfig must be read from a config object (``cfg.<field>``,
    ``cfg.train.<field>``, ``tc.<field>``, ``eval_cfg.<field>``, ...) by the package outside
    config.py, so adding a field without using it fails here. (An attribute of the same name on
    another object, like the pooler's ``self.canonical_scale``, does not count.)"""
    import dataclasses
    import pathlib
    import re

    import minimaskrcnn
    from minimaskrcnn.config import EvalConfig, TrainConfig

    root = pathlib.Path(minimaskrcnn.__file__).parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py")
                       if p.name != "config.py")
    unread = [f"{cls.__name__}.{f.name}" for cls in (ModelConfig, TrainConfig, EvalConfig)
              for f in dataclasses.fields(cls)
              if not re.search(rf"\b(?:cfg|tc|eval_cfg|train_cfg|config)(?:\.model|\.train|\.eval)?"
                               rf"\.{re.escape(f.name)}\b", source)]
    assert not unread, f"config fields that nothing reads: {unread}"


def test_renamed_key_is_read_under_its_new_name():
    # checkpoints and result.json files written before the rename say "mask_head": "mlp"
    d = config_to_dict(get_preset("nuclei-mini"))
    d["model"]["mask_head"] = d["model"].pop("mask_head_type")
    d["model"]["mask_head"] = "mlp"
    assert config_from_dict(d).model.mask_head_type == "mlp"
    d["model"]["mask_head"] = "transformer"
    with pytest.raises(ValueError, match="mask_head_type must be one of"):
        config_from_dict(d)


def test_apply_overrides_refuses_unknown_fields_and_bad_values():
    cfg = get_preset("nuclei-mini")
    assert apply_overrides(cfg, {"model.roi_op": "pool", "train.seed": 5}).train.seed == 5
    assert apply_overrides(cfg, {}) == cfg
    with pytest.raises(ValueError, match="model.mlp_head"):
        apply_overrides(cfg, {"model.mlp_head": True})
    with pytest.raises(ValueError, match="not a field"):
        apply_overrides(cfg, {"roi_op": "pool"})
    with pytest.raises(ValueError, match="roi_op must be one of"):
        apply_overrides(cfg, {"model.roi_op": "roialign"})


@pytest.mark.parametrize("iterations, warmup, milestones", [
    (3000, 300, (2000, 2667)), (600, 60, (400, 533)), (90, 9, (60, 80)), (6, 1, (4, 5)),
    (2, 1, (1, 2)), (1, 1, (1, 2))])
def test_shorten_schedule_cuts_warmup_and_milestones_in_proportion(iterations, warmup,
                                                                   milestones):
    base = get_preset("nuclei-mini")
    cfg = shorten_schedule(base, iterations)
    t = cfg.train
    assert (t.iterations, t.warmup_iters, t.milestones) == (iterations, warmup, milestones)
    assert t.val_every == iterations
    # everything else is the preset's
    assert cfg.model == base.model and cfg.eval == base.eval and cfg.name == base.name
    assert (t.base_lr, t.batch_size, t.crop_size, t.checkpoint_every, t.gamma) == (
        0.01, 4, 256, 500, 0.1)
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        shorten_schedule(base, 0)


def test_mask_on_field_validated_and_old_dicts_load_with_the_mask_head():
    # Detectron2's MODEL.MASK_ON: on by default, so every earlier config builds the same network
    assert ModelConfig().mask_on is True
    assert all(get_preset(n).model.mask_on for n in ("nuclei-mini", "shapes-mini",
                                                    "keypoints-mini"))
    for bad in (0, 1, "false", None):
        with pytest.raises(ValueError, match="mask_on must be True or False"):
            ModelConfig(mask_on=bad)
    with pytest.raises(ValueError, match="mask_on must be True or False"):
        apply_overrides(get_preset("nuclei-mini"), {"model.mask_on": "no"})
    # checkpoints and result.json files written before the field have no "mask_on"
    d = config_to_dict(get_preset("keypoints-mini"))
    del d["model"]["mask_on"]
    assert config_from_dict(d).model.mask_on is True
    off = apply_overrides(get_preset("nuclei-mini"), {"model.mask_on": False})
    assert config_from_dict(json.loads(json.dumps(config_to_dict(off)))) == off
    assert not off.model.mask_on


def test_lego_battery_preset_has_keypoints_and_no_mask_head():
    cfg = get_preset("lego-battery")
    assert cfg.name == "lego-battery" and not cfg.model.mask_on
    assert cfg.model.num_keypoints == 5 and cfg.model.num_classes == 1
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
