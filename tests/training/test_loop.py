"""The training loop on its own, with a tiny fake model that follows the model contract
(brief-model.md): resume equals an uninterrupted run, the NaN guard, logs, checkpoints,
validation and the loss curve."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minimaskrcnn.checkpoint import load_checkpoint
from minimaskrcnn.config import Config, TrainConfig
from minimaskrcnn.data import shapes
from minimaskrcnn.evaluation import evaluate_model
from minimaskrcnn.nn.module import Module, Param
from minimaskrcnn.training.guard import NonFiniteLossError
from minimaskrcnn.training.loop import LOSS_KEYS, train
from minimaskrcnn.training.run_folder import RunFolderError, find_last_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


class FakeModel(Module):
    """Two parameters; losses that depend on the batch (image means, instance counts, boxes)
    and on the sampler rng, with exact gradients, so the data order, the crops, the rng streams
    and the optimiser state all show in the parameters."""

    def __init__(self, cfg, rng, nan_at=None):
        self.w = Param(rng.normal(size=(3,)).astype(np.float32), "w")
        self.b = Param(np.zeros((2,), np.float32), "b")
        self.nan_at = nan_at  # a test switch: forward_train number that returns NaN
        self.calls = 0

    def forward_train(self, images, targets, rng, sum_counts=None):
        """The stage protocol: ``(outputs, losses, cache)``; ``rng`` one Generator per image."""
        self.calls += 1
        f = np.array([[im[c].mean() for c in range(3)] for im in images], np.float64)  # (N, 3)
        g = np.array([len(t["labels"]) for t in targets], np.float64)                  # (N,)
        box = np.array([t["boxes"][:, 2:].mean() if len(t["boxes"]) else 0.0 for t in targets])
        noise = np.array([r.normal() for r in rng])
        w, b = self.w.data.astype(np.float64), self.b.data.astype(np.float64)
        r1 = f @ w + b[0] - g / 10.0
        r2 = b[1] * noise - box / 100.0
        losses = {
            "loss_objectness": float(0.5 * np.mean(r1 ** 2)),
            "loss_rpn_box_reg": float(0.5 * np.mean(r2 ** 2)),
            "loss_classifier": 0.1, "loss_box_reg": 0.2,
            "loss_mask": float(0.01 * np.sum(w ** 2)),
        }
        if self.nan_at is not None and self.calls == self.nan_at:
            losses["loss_box_reg"] = float("nan")
        return None, losses, (f, r1, r2, noise)

    def backward(self, dy, cache, loss_weights=None):
        f, r1, r2, noise = cache
        n = len(r1)
        self.w.grad += (f.T @ r1 / n + 0.02 * self.w.data).astype(np.float32)
        self.b.grad += np.array([r1.mean(), np.mean(r2 * noise)], np.float32)

    def predict(self, images, mask_format="bool"):  # dense masks either way
        out = []
        for im in images:
            h, w = im.shape[1:]
            m = np.zeros((1, h, w), bool)
            m[:, : h // 2, : w // 2] = True
            out.append({"boxes": np.array([[0, 0, w // 2, h // 2]], np.float32),
                        "labels": np.ones(1, np.int64), "scores": np.array([0.9], np.float32),
                        "masks": m})
        return out


@pytest.fixture(scope="module")
def data():
    return shapes.shapes_dataset(10, seed=0, image_size=48, max_shapes=3, min_size=8, max_size=20)


def _cfg(**kw):
    tc = dict(batch_size=2, crop_size=32, iterations=8, base_lr=0.05, warmup_iters=3,
              milestones=(5,), checkpoint_every=3, log_every=1, val_every=4, seed=7)
    tc.update(kw)
    return Config(name="fake", train=TrainConfig(**tc))


def _validation(dataset, limit):
    """``train``'s evaluate callable as the command line makes it: the first ``limit`` images."""
    return functools.partial(evaluate_model, dataset=dataset, eval_cfg=_cfg().eval, limit=limit)


def _params(model):
    return {k: v.data.copy() for k, v in model.named_parameters()}


def test_resume_equals_uninterrupted_run(tmp_path, data):
    cfg = _cfg()
    kw = dict(model_factory=FakeModel, progress=False, evaluate=_validation(data, 2))
    full = train(cfg, data, str(tmp_path / "full"), **kw)
    part_dir = str(tmp_path / "part")
    first = train(cfg, data, part_dir, iterations=5, **kw)  # validates at 4 and at its end, 5
    train(cfg, data, part_dir, iterations=4, resume=True, **kw)  # back to 4: nothing to do
    assert os.path.basename(first["checkpoint"]) == "checkpoint_000005.npz"
    # the checkpoints so far: every 3 iterations and at the end of the call
    assert sorted(f for f in os.listdir(part_dir) if f.startswith("checkpoint_")) == [
        "checkpoint_000003.npz", "checkpoint_000005.npz"]
    resumed = train(cfg, data, part_dir, resume=True, **kw)
    assert [v["iteration"] for v in resumed["val"]] == [4, 5, 8]
    val_lines = [json.loads(x) for x in open(os.path.join(part_dir, "val.jsonl"))]
    assert [v["iteration"] for v in val_lines] == [4, 5, 8]
    a, b = _params(full["model"]), _params(resumed["model"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # and the logs agree record by record on everything but timings
    la = [json.loads(x) for x in open(full["log"])]
    lb = [json.loads(x) for x in open(resumed["log"])]
    assert [r["iteration"] for r in lb] == list(range(8))
    for ra, rb in zip(la, lb, strict=True):
        for k in ("lr", "loss", *LOSS_KEYS):
            assert ra[k] == rb[k]
    # a different seed trains differently
    other = train(_cfg(seed=8), data, str(tmp_path / "other"), model_factory=FakeModel,
                  progress=False)
    assert not np.array_equal(_params(other["model"])["w"], a["w"])


def test_schedule_logs_and_files(tmp_path, data):
    cfg = _cfg()
    out = str(tmp_path / "run")
    seen = []
    res = train(cfg, data, out, evaluate=_validation(data, 3), model_factory=FakeModel,
                progress=False, on_validation=lambda it, m: seen.append(it))
    recs = [json.loads(x) for x in open(res["log"])]
    lrs = [r["lr"] for r in recs]
    # warm-up over 3 iterations from 0.001x (linear: factor 0.001 + (1 - 0.001) * t / 3), then
    # x0.1 at iteration 5
    expected = [0.05 * (0.001 + 0.999 * t / 3) for t in range(3)] + [0.05] * 2 + [0.005] * 3
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    for r in recs:
        assert r["loss"] == pytest.approx(sum(r[k] for k in LOSS_KEYS))
        assert r["images_per_s"] > 0
    assert seen == [4, 8]
    vals = [json.loads(x) for x in open(os.path.join(out, "val.jsonl"))]
    assert [v["iteration"] for v in vals] == [4, 8] and vals[0]["num_images"] == 3
    assert set(vals[0]["segm"]) == {"AP", "AP50", "AP75"} and "dsb_score" in vals[0]
    for name in ("config.json", "loss_curve.png", "last_checkpoint", "checkpoint_000008.npz"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert find_last_checkpoint(out).endswith("checkpoint_000008.npz")
    with open(os.path.join(out, "loss_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_nan_guard_names_the_term_and_keeps_the_checkpoint(tmp_path, data):
    cfg = _cfg()
    out = str(tmp_path / "nan")

    def factory(c, rng):
        return FakeModel(c, rng, nan_at=5)  # the 5th forward: iteration 4

    with pytest.raises(NonFiniteLossError, match=r"iteration 4: loss term loss_box_reg is nan.*"
                                                 r"checkpoint_000003\.npz"):
        train(cfg, data, out, model_factory=factory, progress=False)
    assert find_last_checkpoint(out).endswith("checkpoint_000003.npz")
    assert not os.path.exists(os.path.join(out, "checkpoint_000006.npz"))
    last = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))][-1]
    assert last["iteration"] == 4 and "loss_box_reg is nan" in last["error"]
    # the kept checkpoint is good: resuming from it ends where an uninterrupted run ends
    resumed = train(cfg, data, out, resume=True, model_factory=FakeModel, progress=False)
    full = train(cfg, data, str(tmp_path / "full"), model_factory=FakeModel, progress=False)
    for k, v in _params(full["model"]).items():
        np.testing.assert_array_equal(v, _params(resumed["model"])[k])


def test_resume_without_checkpoint(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(_cfg(), data, str(tmp_path / "empty"), resume=True, model_factory=FakeModel,
              progress=False)


def test_real_model_resume_equals_uninterrupted_run(tmp_path):
    """The same with the real network (shapes-mini, one 64x64 crop per iteration): the model's
    samplers take their rng from the loop and its kernels are deterministic, so resuming is
    bit-exact."""
    import dataclasses

    from minimaskrcnn.checkpoint import load_checkpoint
    from minimaskrcnn.config import get_preset
    from minimaskrcnn.data import load_sample

    base = get_preset("shapes-mini")
    cfg = dataclasses.replace(
        base, model=dataclasses.replace(base.model, num_classes=1),
        train=dataclasses.replace(base.train, batch_size=1, crop_size=64, iterations=2,
                                  checkpoint_every=1, warmup_iters=1))
    ds = load_sample("train")
    full = train(cfg, ds, str(tmp_path / "full"), progress=False)
    train(cfg, ds, str(tmp_path / "part"), iterations=1, progress=False)
    resumed = train(cfg, ds, str(tmp_path / "part"), resume=True, progress=False)
    a, b = _params(full["model"]), _params(resumed["model"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    first = load_checkpoint(str(tmp_path / "part" / "checkpoint_000001.npz")).params
    assert any(not np.array_equal(first[k], a[k]) for k in a)  # the second step changed something


# ------------------------------------------------------------------------------- nothing lost, nothing hung


@pytest.fixture(autouse=True)
def _deadline(deadline):
    """Every test of this module fails on a hang (tests/conftest.py: ``deadline``)."""
    yield


def _run(tmp_path, data, name="run", cfg=None, **kw):
    kw.setdefault("model_factory", FakeModel)
    return train(cfg or _cfg(), data, str(tmp_path / name), progress=False, **kw)


def test_fresh_train_into_a_run_folder_is_refused_unless_overwrite(tmp_path, data):
    out = tmp_path / "run"
    _run(tmp_path, data, iterations=6)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    with pytest.raises(RunFolderError, match=r"run already holds a run \(config\.json, "
                                             r"last_checkpoint, log\.jsonl, checkpoint_000003"
                                             r".*--resume.*--overwrite"):
        _run(tmp_path, data, cfg=_cfg(seed=99), iterations=2)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # nothing touched
    res = _run(tmp_path, data, cfg=_cfg(seed=99), iterations=2, overwrite=True)
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint_")) == [
        "checkpoint_000002.npz"]  # the old run's checkpoints are gone with it
    assert find_last_checkpoint(str(out)) == res["checkpoint"]
    assert [json.loads(x)["iteration"] for x in open(out / "log.jsonl")] == [0, 1]
    with pytest.raises(ValueError, match="exclude each other"):
        _run(tmp_path, data, resume=True, overwrite=True)


def test_a_second_training_at_once_is_refused_and_a_stale_lock_taken_over(tmp_path, data):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    lock = out / "train.lock"
    lock.write_text("999999999\n")  # left by a killed run: no process holds it
    _run(tmp_path, data, iterations=2)
    assert lock.read_text().strip() == str(os.getpid())
    with open(lock, "r+") as held:  # another training holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match=rf"another training \(pid {os.getpid()}\) is "
                                                 r"running in this folder"):
            _run(tmp_path, data, iterations=3, resume=True)
    assert find_last_checkpoint(str(out)).endswith("checkpoint_000002.npz")
    _run(tmp_path, data, iterations=3, resume=True)  # released: fine again


def test_a_second_process_training_into_the_folder_gets_one_line(tmp_path):
    """A real process started while another holds the folder's lock: refused with one line."""
    script = (
        "import sys, time\n"
        "from minimaskrcnn.cli import main\n"
        "sys.exit(main(['train', '--preset', 'shapes-mini', '--shapes', '4', '--out', sys.argv[1],"
        " '--iters', '2', '--batch-size', '1', '--crop-size', '64', '--val-every', '100',"
        " '--val-limit', '1', '--no-progress', '--overwrite']))\n")
    out = str(tmp_path / "run")
    os.makedirs(out)
    import fcntl

    with open(os.path.join(out, "train.lock"), "w") as held:  # make sure they overlap
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        proc = subprocess.run([sys.executable, "-c", script, out], capture_output=True,
                              text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"minimaskrcnn train: error: {out}: another training (pid 4242) is running in this "
        f"folder (it holds {os.path.join(out, 'train.lock')})"]


@pytest.mark.parametrize("change, message", [
    (dict(seed=8), r"train\.seed 8, but the run was trained with 7"),
    (dict(batch_size=3), r"train\.batch_size 3, but the run was trained with 2"),
    (dict(crop_size=40), r"train\.crop_size 40, but the run was trained with 32"),
    (dict(base_lr=0.5), r"train\.base_lr 0\.5, but the run was trained with 0\.05"),
])
def test_resume_refuses_a_changed_data_stream_or_schedule(tmp_path, data, change, message):
    _run(tmp_path, data, iterations=3)
    with pytest.raises(RunFolderError, match=r"checkpoint_000003\.npz: --resume with " + message):
        _run(tmp_path, data, cfg=_cfg(**change), resume=True)
    # what may change: the length of the run and the periods
    res = _run(tmp_path, data, cfg=_cfg(iterations=5, checkpoint_every=5, log_every=2,
                                        val_every=5), resume=True)
    assert res["iteration"] == 5


def test_resume_refuses_a_changed_model(tmp_path, data):
    from minimaskrcnn.config import ModelConfig

    _run(tmp_path, data, iterations=3)
    cfg = dataclasses.replace(_cfg(), model=ModelConfig(fpn_channels=16))
    with pytest.raises(RunFolderError, match=r"--resume with model\.fpn_channels 16, but the run "
                                             r"was trained with 64"):
        _run(tmp_path, data, cfg=cfg, resume=True)


class HugeGradModel(FakeModel):
    """From the 5th forward, gradients of 3e38: finite, but the float32 momentum buffer and the
    parameters overflow in the update."""

    def backward(self, dy, cache, loss_weights=None):
        super().backward(dy, cache)
        if self.calls >= 5:
            self.w.grad[...] = 3e38


class RefusingModel(FakeModel):
    """At the 5th forward an op refuses its input, as an op's check does when a diverging model
    gives it inf boxes."""

    def forward_train(self, images, targets, rng, sum_counts=None):
        if self.calls + 1 == 5:
            self.calls += 1
            raise ValueError("roi_align: boxes must be finite")
        return super().forward_train(images, targets, rng)


def test_divergence_in_the_update_stops_before_any_bad_checkpoint(tmp_path, data):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: after the update \(lr 0\.005\) "
                                                 r"(parameter w|the momentum buffer of w) is not "
                                                 r"finite.*checkpoint_000003\.npz"):
        _run(tmp_path, data, cfg=_cfg(checkpoint_every=3), model_factory=HugeGradModel)
    # the 5th iteration (t=4) made a finite, huge buffer; t=5 overflowed: nothing saved after 3
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint_")) == ["checkpoint_000003.npz"]
    last = [json.loads(x) for x in open(out / "log.jsonl")][-1]
    assert last["iteration"] == 5 and "after the update" in last["error"]
    ck = load_checkpoint(str(out / "checkpoint_000003.npz"))
    assert all(np.isfinite(v).all() for v in ck.params.values())
    assert all(np.isfinite(v).all() for v in ck.optimizer_state["buffers"].values())


def test_an_op_refusing_a_diverged_input_is_reported_like_a_nan(tmp_path, data):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 4: model\.forward_train failed "
                                                 r"\(ValueError: roi_align: boxes must be finite\)"
                                                 r".*largest \|parameter\|.*checkpoint_000003\.npz"):
        _run(tmp_path, data, model_factory=RefusingModel)
    last = [json.loads(x) for x in open(out / "log.jsonl")][-1]
    assert last["iteration"] == 4 and "boxes must be finite" in last["error"]


class InterruptedValidation(FakeModel):
    """A kill (here: KeyboardInterrupt) in the middle of the first validation."""

    def predict(self, images, mask_format="bool"):  # dense masks either way
        raise KeyboardInterrupt


def test_a_validation_killed_mid_way_is_rerun_on_resume(tmp_path, data):
    kw = dict(evaluate=_validation(data, 2))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, data, cfg=_cfg(checkpoint_every=4), model_factory=InterruptedValidation, **kw)
    out = tmp_path / "run"
    assert find_last_checkpoint(str(out)).endswith("checkpoint_000004.npz")
    assert not (out / "val.jsonl").exists()  # killed before its record
    res = _run(tmp_path, data, cfg=_cfg(checkpoint_every=4), resume=True, **kw)
    full = _run(tmp_path, data, "full", cfg=_cfg(checkpoint_every=4), **kw)
    assert [v["iteration"] for v in res["val"]] == [4, 8] == [v["iteration"] for v in full["val"]]
    assert [json.loads(x)["iteration"] for x in open(out / "val.jsonl")] == [4, 8]


def test_log_truncation_on_resume_is_atomic(tmp_path, data, monkeypatch):
    out = tmp_path / "run"
    _run(tmp_path, data, iterations=6)
    _run(tmp_path, data, iterations=3, overwrite=True)  # log 0..2, checkpoint 3
    with open(out / "log.jsonl", "a") as f:  # iterations a killed run logged past its checkpoint
        f.write(json.dumps({"iteration": 3, "lr": 0.1, "loss": 1.0}) + "\n")
    before = (out / "log.jsonl").read_text()

    def killed(*args):
        raise KeyboardInterrupt  # a kill between writing the new log and putting it in place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, data, resume=True)
    monkeypatch.undo()
    assert (out / "log.jsonl").read_text() == before  # the old log, whole
    res = _run(tmp_path, data, resume=True)
    assert [json.loads(x)["iteration"] for x in open(res["log"])] == list(range(8))


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path, data):
    out = tmp_path / "run"
    _run(tmp_path, data, iterations=3)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"iteration": 3, "lr": 0.0')  # killed in the middle of the write
    with pytest.warns(RuntimeWarning, match=r"log\.jsonl:4: dropped a torn last line"):
        res = _run(tmp_path, data, resume=True)
    assert [json.loads(x)["iteration"] for x in open(res["log"])] == list(range(8))
    # a broken line in the middle is not a torn write: one line naming file and line
    lines = open(res["log"]).read().splitlines()
    lines[2] = "{garbage"
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:3: not a JSON record"):
        _run(tmp_path, data, iterations=9, resume=True)


def test_temporary_files_of_a_killed_run_are_removed_and_permissions_match(tmp_path, data):
    out = tmp_path / "run"
    _run(tmp_path, data, iterations=3)
    for name in (".tmp-checkpoint_000006.npz-x1y2z3", "last_checkpoint.tmp", "log.jsonl.tmp"):
        (out / name).write_bytes(b"half")
    _run(tmp_path, data, iterations=4, resume=True)
    assert not [f for f in os.listdir(out) if "tmp" in f]
    modes = {f: os.stat(out / f).st_mode & 0o777 for f in os.listdir(out) if f != "train.lock"}
    assert modes["checkpoint_000004.npz"] == modes["log.jsonl"] == modes["config.json"]


def test_log_every_prints_a_line_when_the_bar_is_off(tmp_path, data, capsys):
    _run(tmp_path, data, cfg=_cfg(log_every=3))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("iteration ")]
    assert [x.split(":")[0] for x in lines] == ["iteration 3/8", "iteration 6/8", "iteration 8/8"]
    assert "loss_mask" not in lines[0] and " mask " in lines[0] and "img/s" in lines[0]


@pytest.mark.parametrize("name", ["checkpoint_every", "val_every", "log_every"])
def test_zero_periods_are_refused(tmp_path, data, name):
    with pytest.raises(ValueError, match=rf"train\.{name} must be an integer >= 1, got 0"):
        _run(tmp_path, data, cfg=_cfg(**{name: 0}))


def test_train_on_a_device_equals_the_cpu(tmp_path):
    """``train(..., device="cuda")`` on the stand-in GPU (testing/fake_device.py: arrays that
    refuse NumPy as CuPy's do): the parameters, gradients and momentum buffers live on the
    device, the loop's guards never pull them to NumPy implicitly, the checkpoint is written as
    NumPy, and the parameters equal a CPU run's."""
    from minimaskrcnn.config import ModelConfig
    from minimaskrcnn.data import shapes
    from minimaskrcnn.testing import fake_device

    tiny = ModelConfig(num_classes=3, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4,
                       fpn_channels=8, rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100,
                       rpn_post_nms_top_n_train=40, box_batch_size_per_image=16,
                       representation_size=16, mask_head_channels=8)
    cfg = dataclasses.replace(_cfg(checkpoint_every=2), model=tiny)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, crop_size=64))
    ds = shapes.shapes_dataset(4, seed=0)
    cpu = train(cfg, ds, str(tmp_path / "cpu"), iterations=2, progress=False)
    with fake_device.installed() as fake:
        dev = train(cfg, ds, str(tmp_path / "dev"), iterations=2, progress=False, device="cuda")
        assert all(isinstance(p.data, fake.ndarray) for p in dev["model"].parameters())
    with np.load(dev["checkpoint"], allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files if k.startswith("param/"))
    for (n, p), (_, q) in zip(cpu["model"].named_parameters(), dev["model"].named_parameters(),
                              strict=True):
        np.testing.assert_allclose(np.asarray(q.data.get()), p.data, rtol=1e-5, atol=1e-6,
                                   err_msg=n)


class GrowingModel(FakeModel):
    """From the 4th forward (iteration 3) gradients of 1e8: the parameters grow past 1e6 while
    every loss, gradient and parameter stays finite (a run diverging slowly)."""

    def backward(self, dy, cache, loss_weights=None):
        super().backward(dy, cache)
        if self.calls >= 4:
            self.w.grad[...] = -1e8


def test_a_diverging_state_is_never_the_last_good_checkpoint(tmp_path, data):
    """issue 27: the guard named as last good a checkpoint whose parameters reached 8.7e29, and
    --resume from it failed at once; a checkpoint past DIVERGED_PARAMETER is not written, the
    one named is finite and small, and resuming from it works."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 6: training is diverging "
                                                 r"\(largest \|parameter\| .* \(w\), over 10000\)"
                                                 r".*the last good checkpoint is .*"
                                                 r"checkpoint_000003\.npz"):
        _run(tmp_path, data, cfg=_cfg(checkpoint_every=3), model_factory=GrowingModel)
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint_")) == [
        "checkpoint_000003.npz"]
    assert find_last_checkpoint(str(out)).endswith("checkpoint_000003.npz")
    last = [json.loads(x) for x in open(out / "log.jsonl")][-1]
    assert last["iteration"] == 6 and "training is diverging" in last["error"]
    ck = load_checkpoint(str(out / "checkpoint_000003.npz"))
    assert all(np.abs(v).max() < 1e4 for v in ck.params.values())
    resumed = train(_cfg(checkpoint_every=3), data, str(out), resume=True,
                    model_factory=FakeModel, progress=False)
    assert resumed["iteration"] == 8
