"""Checkpoints: bit-exact round trip, atomic writes, clear errors on bad files, and
"k steps + save/load + k steps == 2k steps" on a tiny model."""

import json
import os

import numpy as np
import pytest

from minimaskrcnn.checkpoint import (
    CheckpointError,
    generator_from_state,
    load_checkpoint,
    load_weights,
    remove_temporary_files,
    restore,
    save_checkpoint,
)
from minimaskrcnn.nn import Conv2d, Flatten, GroupNorm, Linear, ReLU, Sequential
from minimaskrcnn.nn.losses import cross_entropy
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


def test_load_weights_reads_checkpoints_and_bare_weight_archives(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = save_checkpoint(str(tmp_path / "ck.npz"), {"w": w}, iteration=7, config={"a": 1})
    ck = load_weights(path)
    assert ck.iteration == 7 and ck.config == {"a": 1} and ck.params["w"].tobytes() == w.tobytes()
    bare = str(tmp_path / "bare.npz")
    np.savez(bare, **{"param/w": w})
    ck = load_weights(bare)
    assert (ck.iteration, ck.config, ck.optimizer_state, ck.path) == (0, {}, None, bare)
    assert ck.params["w"].tobytes() == w.tobytes()
    with pytest.raises(CheckpointError, match="not a minimaskrcnn checkpoint"):
        load_checkpoint(bare)  # a checkpoint needs its metadata
    np.savez(tmp_path / "other.npz", x=w)
    with pytest.raises(CheckpointError, match=r"other\.npz .*no parameters"):
        load_weights(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError):
        load_weights(str(tmp_path / "missing.npz"))


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


def test_written_with_the_permissions_of_other_new_files(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(str(tmp_path / "ck.npz"), {"a": np.ones(3, np.float32)})
        other = tmp_path / "other.txt"
        other.write_text("x")
        assert os.stat(path).st_mode & 0o777 == 0o644 == os.stat(other).st_mode & 0o777
        os.umask(0o027)
        save_checkpoint(path, {"a": np.ones(3, np.float32)})
        assert os.stat(path).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_temporary_files_of_a_killed_write_are_removed(tmp_path):
    save_checkpoint(str(tmp_path / "checkpoint_000001.npz"), {"a": np.ones(3, np.float32)})
    left = tmp_path / ".tmp-checkpoint_000002.npz-k3j2h1"
    left.write_bytes(b"PK\x03\x04 half a zip")
    keep = tmp_path / ".tmp-notes"
    keep.write_text("not ours")
    assert remove_temporary_files(str(tmp_path)) == [str(left)]
    assert sorted(os.listdir(tmp_path)) == [".tmp-notes", "checkpoint_000001.npz"]


def _model_checkpoint(tmp_path, *, edit_config=None, params=None, optimizer=None, meta_edit=None):
    """A checkpoint of tiny_model whose config is a valid shapes-mini Config, then edited."""
    from minimaskrcnn.config import config_to_dict, get_preset

    config = config_to_dict(get_preset("shapes-mini"))
    config["dataset"] = {"category_ids": [1, 2, 3], "class_names": ["a", "b", "c"]}
    if edit_config is not None:
        edit_config(config)
    model = tiny_model()
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, params if params is not None else model, optimizer, iteration=5,
                    config=config)
    if meta_edit is not None:  # rewrite the metadata as a hand-edited file would have it
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays["__meta__"].tobytes())
        meta_edit(meta)
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(path, **arrays)
    return path, model


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(model=None), r"config\.model must be an object, got None"),
    (lambda c: c["model"].update(num_classes="2"), r"config\.model\.num_classes must be an integer, got '2'"),
    (lambda c: c["model"].update(size_divisible=0), r"config\.model\.size_divisible must be >= 1, got 0"),
    # issue 27: building the model of this config took 7.6 GB before the shapes were compared
    (lambda c: c["model"].update(fpn_channels=10**6), r"fpn_channels must be <= 4096, got 1000000"),
    (lambda c: c["model"].update(detections_per_img=-5), r"detections_per_img must be >= 1, got -5"),
    (lambda c: c["model"].update(mask_threshold=float("nan")), r"mask_threshold must be finite, got nan"),
    (lambda c: c["model"].update(box_nms_thresh=1.5), r"box_nms_thresh must be in \[0, 1\]"),
    (lambda c: c["model"].update(anchor_sizes=[8, 16, "a", 64, 128]), r"anchor_sizes must be an integer, got 'a'"),
    (lambda c: c["model"].update(roi_op="nope"), r"config: roi_op must be one of"),
    (lambda c: c["model"].update(colour="red"), r"config: unknown ModelConfig keys: \['colour'\]"),
    (lambda c: c["train"].update(base_lr=0), r"config\.train\.base_lr must be > 0, got 0"),
    (lambda c: c["eval"].update(max_dets=[10, 0]), r"config\.eval\.max_dets must be >= 1, got 0"),
    (lambda c: c["dataset"].update(class_names=["a", "b"]), r"class_names must be 3 strings \(one per category id\)"),
    (lambda c: c["dataset"].update(category_ids=[1, 1, 2]), r"category_ids must be distinct integers"),
])
def test_bad_config_in_a_checkpoint_is_one_clear_error(tmp_path, edit, message):
    path, _ = _model_checkpoint(tmp_path, edit_config=edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("meta_edit, message", [
    (lambda m: m.pop("iteration"), "the iteration must be an integer >= 0, got None"),
    (lambda m: m.update(iteration="a"), "the iteration must be an integer >= 0, got 'a'"),
    (lambda m: m.update(config=[1]), r"config must be an object, got \[1\]"),
])
def test_bad_metadata_is_one_clear_error(tmp_path, meta_edit, message):
    path, _ = _model_checkpoint(tmp_path, meta_edit=meta_edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype, value, message", [
    (np.int64, 1, "is stored as int64, not floating point"),
    (np.complex64, 1, "is stored as complex64, not floating point"),
    (np.float32, np.nan, "has 1 non-finite values"),
])
def test_parameters_that_are_not_finite_floats_are_refused(tmp_path, dtype, value, message):
    model = tiny_model()
    params = {n: p.data.copy() for n, p in model.named_parameters()}
    name = next(iter(params))
    bad = params[name].astype(dtype)
    bad.flat[0] = value
    params[name] = bad
    path, _ = _model_checkpoint(tmp_path, params=params)
    assert load_checkpoint(path).params[name].dtype == dtype  # the file itself reads
    with pytest.raises(CheckpointError, match=f"parameter {name} {message}"):
        load_checkpoint(path, tiny_model())


def test_non_finite_momentum_and_bad_optimiser_state_are_refused(tmp_path):
    model, opt, sched = make_run()
    train(model, opt, sched, np.random.default_rng(7), 1)
    state = opt.state_dict()
    name = next(iter(state["buffers"]))
    state["buffers"][name][...] = np.inf
    path, _ = _model_checkpoint(tmp_path, params=model, optimizer=state)
    with pytest.raises(CheckpointError, match=f"momentum buffer {name} has .* non-finite"):
        load_checkpoint(path, make_run()[0], make_run()[1])
    state = opt.state_dict()
    state["lr"] = "a"
    path, _ = _model_checkpoint(tmp_path, params=model, optimizer=state)
    with pytest.raises(CheckpointError, match="optimiser lr must be a finite number >= 0, got 'a'"):
        load_checkpoint(path, make_run()[0], make_run()[1])


def test_a_checkpoint_under_older_names_resumes_through_upgrade_names(tmp_path):
    """A checkpoint written under an older model's names (parameters and momentum buffers, which
    are keyed by parameter name) resumes into today's model and optimiser when the caller passes
    the model's name map (the training loop passes minimaskrcnn.model.upgrade_state_names, whose
    rules tests/model/test_model.py checks); without it the file does not fit, one clear line."""

    def old_name(n):
        return "legacy_" + n

    def upgrade(state):
        return {k.removeprefix("legacy_"): v for k, v in state.items()}

    model, opt, _ = make_run()
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    state["buffers"] = {old_name(n): b for n, b in state["buffers"].items()}
    params = {old_name(n): p.data for n, p in model.named_parameters()}
    path = str(tmp_path / "old.npz")
    save_checkpoint(path, params, optimizer=state, iteration=1)
    fresh, fresh_opt, _ = make_run(seed=1)
    with pytest.raises(CheckpointError, match="old.npz does not fit the model"):
        load_checkpoint(path, fresh, fresh_opt)
    load_checkpoint(path, fresh, fresh_opt, upgrade_names=upgrade)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    for a, b in zip(opt.state_dict()["buffers"].values(), fresh_opt.state_dict()["buffers"].values(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    fresh, fresh_opt, _ = make_run(seed=1)  # the buffers alone are renamed too
    ck = load_checkpoint(path)
    ck.params = upgrade(ck.params)
    with pytest.raises(CheckpointError, match="does not fit the optimiser: .*legacy_"):
        restore(ck, fresh, fresh_opt)
    restore(ck, fresh, fresh_opt, upgrade_names=upgrade)
    assert fresh_opt.state_dict()["buffers"].keys() == opt.state_dict()["buffers"].keys()


def test_crafted_archives_are_refused_before_allocating(tmp_path, monkeypatch):
    """issue 27: a .npy given as a checkpoint (TypeError traceback), an array header claiming
    4 TiB (MemoryError), a zip bomb (1.36 GB allocated before the refusal): one line each, the
    sizes checked from the archive's directory and the array headers before reading."""
    import io
    import tracemalloc
    import zipfile

    import minimaskrcnn.checkpoint as ck

    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match=r"w\.npy is not an \.npz archive \(a \.npy array"):
        load_checkpoint(str(npy))
    huge = tmp_path / "huge.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 40,)})
    with zipfile.ZipFile(huge, "w") as zf:
        zf.writestr("__meta__.npy", header.getvalue() + bytes(16))
    with pytest.raises(CheckpointError, match=r"huge\.npz: array __meta__\.npy claims "
                                              r"4398046511104 bytes .* but holds 16; not read"):
        load_checkpoint(str(huge))
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, __meta__=np.zeros(8 << 20, np.uint8))  # 8 MB of zeros, ~8 kB
    assert os.path.getsize(bomb) < 100_000
    monkeypatch.setattr(ck, "MAX_CHECKPOINT_BYTES", 1 << 20)  # the 1 GiB limit, scaled down
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"bomb\.npz: its arrays would take 8388\d+ "
                                                  r"bytes, more than a checkpoint may \(1048576\)"):
            load_checkpoint(str(bomb))
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # nothing of its size allocated
    finally:
        tracemalloc.stop()
