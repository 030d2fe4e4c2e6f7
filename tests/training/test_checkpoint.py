"""Checkpoints: bit-exact round trip, atomic writes, clear errors on bad files, and
"k steps + save/load + k steps == 2k steps" on a tiny model."""

import json
import os

import numpy as np
import pytest

from minimaskrcnn.nn import Conv2d, Flatten, GroupNorm, Linear, ReLU, Sequential
from minimaskrcnn.nn.losses import cross_entropy
from minimaskrcnn.training.checkpoint import (
    CheckpointError,
    generator_from_state,
    load_checkpoint,
    save_checkpoint,
)
from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR


def tiny_model(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(2, 4, 3, padding=1, rng=rng), GroupNorm(2, 4), ReLU(),
                      Conv2d(4, 4, 3, stride=2, padding=1, rng=rng), ReLU(), Flatten(),
                      Linear(4 * 3 * 3, 3, rng=rng))


def train(model, opt, sched, rng, steps):
    for _ in range(steps):
        x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
        labels = rng.integers(0, 3, 2)
        logits, cache = model.forward(x)
        _, dlogits = cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits, cache)
        opt.step()
        sched.step()


def make_run(seed=0):
    model = tiny_model(seed)
    opt = SGD(model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = WarmupMultiStepLR(opt, milestones=(3,), gamma=0.1, warmup_factor=0.1,
                              warmup_iters=2)
    return model, opt, sched


def test_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32),
              "special": np.array([np.nan, -0.0, np.inf, 1e-45, -np.inf], dtype=np.float32),
              "i": np.arange(5, dtype=np.int64)}
    gen = np.random.default_rng(123)
    gen.standard_normal(7)
    config = {"preset": "nuclei-mini", "lr": 0.01, "milestones": [2000, 2600], "nested": {"a": 1}}
    opt_state = {"lr": 0.01, "buffers": {"w": rng.standard_normal((3, 4)).astype(np.float32)}}
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, params, opt_state, iteration=42, config=config, rng_state=gen)
    ck = load_checkpoint(path)
    assert set(ck.params) == set(params)
    for k, v in params.items():
        assert ck.params[k].dtype == v.dtype
        assert ck.params[k].tobytes() == v.tobytes()
    assert ck.optimizer_state["buffers"]["w"].tobytes() == opt_state["buffers"]["w"].tobytes()
    assert ck["iteration"] == 42 and ck.config == config
    np.testing.assert_array_equal(generator_from_state(ck.rng_state).standard_normal(5),
                                  gen.standard_normal(5))
    # a plain NumPy reader can open it without pickles
    with np.load(path, allow_pickle=False) as npz:
        assert "param/w" in npz.files


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, {"a": np.ones(3, np.float32)}, iteration=1)
    assert os.listdir(tmp_path) == ["ck.npz"]
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, {"a": np.zeros(3, np.float32)}, iteration=2,
                        config={"bad": object()})
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert load_checkpoint(path).iteration == 1


def test_bad_files_give_clear_errors(tmp_path):
    good = str(tmp_path / "good.npz")
    save_checkpoint(good, {"w": np.arange(1000, dtype=np.float32)}, iteration=3)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.npz"):
        load_checkpoint(str(truncated))
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minimaskrcnn checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="text.npz"):
        load_checkpoint(str(text))
    other = str(tmp_path / "other.npz")
    meta = np.frombuffer(json.dumps({"format": "something-else"}).encode(), np.uint8)
    np.savez(other, __meta__=meta)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.npz"))


def test_k_steps_save_load_k_steps_equals_2k(tmp_path):
    k = 3
    model, opt, sched = make_run()
    train(model, opt, sched, np.random.default_rng(7), 2 * k)
    straight = {n: p.data.copy() for n, p in model.named_parameters()}

    model, opt, sched = make_run()
    data_rng = np.random.default_rng(7)
    train(model, opt, sched, data_rng, k)
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, model, opt, iteration=k, config={"k": k}, rng_state=data_rng)

    model2, opt2, sched2 = make_run(seed=99)          # different init: everything must load
    ck = load_checkpoint(path, model2, opt2)
    sched2.last_iter = ck.iteration
    train(model2, opt2, sched2, generator_from_state(ck.rng_state), k)
    for n, p in model2.named_parameters():
        np.testing.assert_array_equal(p.data, straight[n], err_msg=n)


def test_load_into_wrong_model_fails(tmp_path):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, tiny_model(), iteration=0)
    with pytest.raises((KeyError, ValueError)):
        load_checkpoint(path, Sequential(Linear(3, 2)))
