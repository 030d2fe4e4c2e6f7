"""model_zoo.load_model: a shipped name or a checkpoint path -> a built MaskRCNN; get_metadata,
list_weights (minimaskrcnn/model_zoo.py; the weights are package data in minimaskrcnn/data/weights)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import minimaskrcnn
from minimaskrcnn import build_model, model_zoo
from minimaskrcnn.checkpoint import CheckpointError, save_checkpoint
from minimaskrcnn.config import config_to_dict, get_preset
from minimaskrcnn.model_zoo import get_metadata, list_weights, load_model, pretrained_path


@pytest.fixture(scope="module")
def small_cfg():
    cfg = get_preset("nuclei-mini")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, representation_size=32,
                                                              mask_head_channels=16))


def _model(cfg, seed=1):
    return build_model(cfg, np.random.default_rng(seed))


def test_round_trip_with_stored_config(tmp_path, small_cfg):
    model = _model(small_cfg)
    path = save_checkpoint(str(tmp_path / "w.npz"), model, config=config_to_dict(small_cfg))
    loaded, cfg = load_model(path, return_config=True)
    assert cfg.model == small_cfg.model  # built from the stored config, not the preset
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    assert minimaskrcnn.load_model is load_model  # the public name


def test_params_only_uses_the_registered_preset(tmp_path, monkeypatch):
    cfg = get_preset("nuclei-mini")
    model = _model(cfg, seed=2)
    np.savez(tmp_path / "nuclei-mini-dsb2018.npz",
             **{f"param/{n}": p.data for n, p in model.named_parameters()})
    monkeypatch.setattr(model_zoo, "WEIGHTS_DIR", str(tmp_path))
    assert pretrained_path("nuclei-mini-dsb2018") == str(tmp_path / "nuclei-mini-dsb2018.npz")
    loaded = load_model("nuclei-mini-dsb2018")
    assert loaded.config == cfg.model
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    # without a stored dataset, labels 1..K
    assert get_metadata("nuclei-mini-dsb2018") == ([1], ["1"], [], [])


def test_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(model_zoo, "WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nuclei-mini-dsb2018\.npz do not exist"):
        load_model("nuclei-mini-dsb2018")
    with pytest.raises(FileNotFoundError, match="nope.npz: checkpoint not found"):
        load_model(str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="unknown pretrained weights 'imagenet'.*nuclei-mini-dsb2018"):
        load_model("imagenet")
    with pytest.raises(ValueError, match="unknown device"):
        load_model("nuclei-mini-dsb2018", device="tpu")


def test_bad_files(tmp_path, small_cfg):
    model = _model(small_cfg)
    cfg_dict = config_to_dict(small_cfg)
    # not an archive
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_model(str(junk))
    # a missing parameter
    state = {n: p.data for n, p in model.named_parameters()}
    name = next(iter(state))
    short = tmp_path / "short.npz"
    path = save_checkpoint(str(short), {k: v for k, v in state.items() if k != name}, config=cfg_dict)
    with pytest.raises(CheckpointError, match=f"short.npz does not fit the model.*{name}"):
        load_model(path)
    # a non-finite parameter
    bad = dict(state)
    bad[name] = np.full_like(state[name], np.nan)
    path = save_checkpoint(str(tmp_path / "nan.npz"), bad, config=cfg_dict)
    with pytest.raises(CheckpointError, match="nan.npz.*non-finite"):
        load_model(path)
    # no parameters at all, and a file that is neither shipped nor has a config
    np.savez(tmp_path / "empty.npz", x=np.zeros(1))
    with pytest.raises(CheckpointError, match="no parameters"):
        load_model(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "anon.npz", **{f"param/{k}": v for k, v in state.items()})
    with pytest.raises(CheckpointError, match="stores no config"):
        load_model(str(tmp_path / "anon.npz"))


def test_metadata_from_the_stored_dataset(tmp_path, small_cfg):
    cfg = dataclasses.replace(small_cfg, model=dataclasses.replace(small_cfg.model, num_classes=2))
    d = config_to_dict(cfg)
    d["dataset"] = {"category_ids": [3, 17], "class_names": ["a", "b"],
                    "keypoint_names": ["tip"], "skeleton": [[1, 2]]}
    path = save_checkpoint(str(tmp_path / "m.npz"), _model(cfg), config=d)
    meta = get_metadata(path)
    assert meta.category_ids == [3, 17] and meta.class_names == ["a", "b"]
    assert meta.keypoint_names == ["tip"] and meta.skeleton == [(1, 2)]
    d["dataset"] = {"category_ids": [3], "class_names": ["a"]}
    path = save_checkpoint(str(tmp_path / "one.npz"), _model(cfg), config=d)
    with pytest.raises(CheckpointError, match="one.npz: config.dataset.category_ids has 1 ids, "
                                              "config.model.num_classes is 2"):
        get_metadata(path)


def test_list_weights_gives_each_shipped_name_its_card():
    cards = list_weights()
    assert list(cards) == list(model_zoo.PRETRAINED)
    for name, card in cards.items():
        if os.path.isfile(pretrained_path(name)):
            assert card.startswith(f"# {name}") and "load_model" in card


@pytest.mark.parametrize("name, preset, count", [("nuclei-mini-dsb2018", "nuclei-mini", 2_479_803),
                                                  ("nuclei-dsb2018", "nuclei", None)])
def test_shipped_weights_load_and_detect(name, preset, count):
    from minimaskrcnn.data import load_sample, standardize

    if not os.path.isfile(pretrained_path(name)):
        pytest.skip("the shipped weights are not in this checkout")
    model, cfg = load_model(name, return_config=True)
    assert cfg.name == preset and model_zoo.PRETRAINED[name] == preset
    if count is not None:
        assert sum(p.data.size for p in model.parameters()) == count
    assert get_metadata(name).class_names == ["nucleus"]
    image, target = load_sample("val")[0]
    det = model.predict([standardize(image)])[0]
    assert (det["scores"] > 0.5).sum() >= len(target["boxes"]) // 2
    assert det["masks"].shape[1:] == image.shape[:2]  # in the input's pixels at any image_scale


@pytest.mark.parametrize("mask_on", [False, True])
def test_checkpoint_of_each_head_choice_round_trips(tmp_path, mask_on):
    """issue 25: a model without a mask head (or with one) comes back as it was saved; a config
    written before ``mask_on`` existed loads with the mask head; a bad value is one line."""
    from minimaskrcnn.testing.tiny import TINY

    cfg = dataclasses.replace(get_preset("lego-battery"), model=dataclasses.replace(
        TINY, mask_on=mask_on, num_keypoints=5, keypoint_head_convs=1, keypoint_head_channels=8))
    model = _model(cfg)
    path = save_checkpoint(str(tmp_path / "w.npz"), model, config=config_to_dict(cfg))
    loaded, got = load_model(path, return_config=True)
    assert got.model == cfg.model and loaded.roi_heads.has_mask() == mask_on
    assert loaded.loss_keys == model.loss_keys
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    old = config_to_dict(cfg)
    del old["model"]["mask_on"]  # a checkpoint written before the field: the mask head is on
    if mask_on:
        path = save_checkpoint(str(tmp_path / "old.npz"), model, config=old)
        assert load_model(path).roi_heads.has_mask()
    else:  # its parameters do not fit the default (mask head on) network: refused, one line
        path = save_checkpoint(str(tmp_path / "old.npz"), model, config=old)
        with pytest.raises(CheckpointError, match="missing"):
            load_model(path)
    bad = config_to_dict(cfg)
    bad["model"]["mask_on"] = "yes"
    path = save_checkpoint(str(tmp_path / "bad.npz"), model, config=bad)
    with pytest.raises(CheckpointError, match=r"config\.model\.mask_on must be true or false"):
        load_model(path)


def test_shipped_lego_battery_weights_give_their_cards_numbers():
    """The Keypoint R-CNN weights (issue 25) on the 7 val photographs give the numbers their
    card states (box AP 0.448, keypoint AP 0.171 / AP50 0.490), with no mask head and the
    set's names and skeleton in their metadata."""
    from minimaskrcnn.data.lego_battery import load_lego_battery
    from minimaskrcnn.evaluation import evaluate_model

    if not os.path.isfile(pretrained_path("lego-battery")):
        pytest.skip("the shipped weights are not in this checkout")
    model, cfg = load_model("lego-battery", return_config=True)
    assert cfg.name == "lego-battery" and not model.roi_heads.has_mask()
    meta = get_metadata("lego-battery")
    assert meta.class_names == ["battery"] and len(meta.keypoint_names) == 5
    assert len(meta.skeleton) == 6
    metrics = evaluate_model(model, load_lego_battery("val"), cfg.eval)
    assert "segm" not in metrics
    assert metrics["bbox"]["AP"] == pytest.approx(0.448, abs=0.0005)
    assert metrics["keypoints"]["AP"] == pytest.approx(0.171, abs=0.0005)
    assert metrics["keypoints"]["AP50"] == pytest.approx(0.490, abs=0.0005)
