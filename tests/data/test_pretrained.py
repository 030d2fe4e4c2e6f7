"""load_pretrained: shipped weights -> a built MaskRCNN (minimaskrcnn/data/pretrained.py)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from minimaskrcnn import build_model
from minimaskrcnn.config import config_to_dict, get_preset
from minimaskrcnn.data import PretrainedError, load_pretrained, pretrained, pretrained_path
from minimaskrcnn.training.checkpoint import save_checkpoint


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
    loaded, cfg = load_pretrained(path, return_config=True)
    assert cfg.model == small_cfg.model  # built from the stored config, not the preset
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)


def test_params_only_uses_the_registered_preset(tmp_path, monkeypatch):
    cfg = get_preset("nuclei-mini")
    model = _model(cfg, seed=2)
    np.savez(tmp_path / "nuclei-mini-dsb2018.npz",
             **{f"param/{n}": p.data for n, p in model.named_parameters()})
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", str(tmp_path))
    assert pretrained_path("nuclei-mini-dsb2018") == str(tmp_path / "nuclei-mini-dsb2018.npz")
    loaded = load_pretrained("nuclei-mini-dsb2018")
    assert loaded.config == cfg.model
    np.testing.assert_array_equal(loaded.box_head.fc6.weight.data, model.box_head.fc6.weight.data)


def test_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nuclei-mini-dsb2018\.npz"):
        load_pretrained("nuclei-mini-dsb2018")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pretrained(str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="unknown pretrained weights"):
        load_pretrained("imagenet")


def test_bad_files(tmp_path, small_cfg):
    model = _model(small_cfg)
    cfg_dict = config_to_dict(small_cfg)
    # not an archive
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PretrainedError, match="junk.npz"):
        load_pretrained(str(junk))
    # a missing parameter
    state = {n: p.data for n, p in model.named_parameters()}
    name = next(iter(state))
    short = tmp_path / "short.npz"
    path = save_checkpoint(str(short), {k: v for k, v in state.items() if k != name}, config=cfg_dict)
    with pytest.raises(PretrainedError, match=f"short.npz.*{name}"):
        load_pretrained(path)
    # a non-finite parameter
    bad = dict(state)
    bad[name] = np.full_like(state[name], np.nan)
    path = save_checkpoint(str(tmp_path / "nan.npz"), bad, config=cfg_dict)
    with pytest.raises(PretrainedError, match="nan.npz.*not finite"):
        load_pretrained(path)
    # no parameters at all, and a file that is neither shipped nor has a config
    np.savez(tmp_path / "empty.npz", x=np.zeros(1))
    with pytest.raises(PretrainedError, match="no parameters"):
        load_pretrained(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "anon.npz", **{f"param/{k}": v for k, v in state.items()})
    with pytest.raises(PretrainedError, match="stores no config"):
        load_pretrained(str(tmp_path / "anon.npz"))


@pytest.mark.skipif(not os.path.isfile(pretrained_path("nuclei-mini-dsb2018")),
                    reason="the shipped weights are not in this checkout")
def test_shipped_weights_load_and_detect():
    from minimaskrcnn.data import load_sample, standardize

    model = load_pretrained()
    image, target = load_sample("val")[0]
    det = model.predict([standardize(image)])[0]
    assert (det["scores"] > 0.5).sum() >= len(target["boxes"]) // 2
