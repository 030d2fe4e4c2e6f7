"""The training loop on its own, with a tiny fake model that follows the model contract
(brief-model.md): resume equals an uninterrupted run, the NaN guard, logs, checkpoints,
validation and the loss curve."""

import json
import os

import numpy as np
import pytest

from minimaskrcnn.config import Config, TrainConfig
from minimaskrcnn.data import shapes
from minimaskrcnn.nn.module import Module, Param
from minimaskrcnn.training.loop import LOSS_KEYS, NonFiniteLossError, find_last_checkpoint, train

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

    def forward_train(self, images, targets, rng):
        self.calls += 1
        f = np.array([[im[c].mean() for c in range(3)] for im in images], np.float64)  # (N, 3)
        g = np.array([len(t["labels"]) for t in targets], np.float64)                  # (N,)
        box = np.array([t["boxes"][:, 2:].mean() if len(t["boxes"]) else 0.0 for t in targets])
        noise = rng.normal(size=len(images))
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
        return losses, (f, r1, r2, noise)

    def backward(self, cache):
        f, r1, r2, noise = cache
        n = len(r1)
        self.w.grad += (f.T @ r1 / n + 0.02 * self.w.data).astype(np.float32)
        self.b.grad += np.array([r1.mean(), np.mean(r2 * noise)], np.float32)

    def predict(self, images):
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


def _params(model):
    return {k: v.data.copy() for k, v in model.named_parameters()}


def test_resume_equals_uninterrupted_run(tmp_path, data):
    cfg = _cfg()
    kw = dict(model_factory=FakeModel, progress=False, val_dataset=data, val_limit=2)
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
    res = train(cfg, data, out, val_dataset=data, model_factory=FakeModel, progress=False,
                val_limit=3, on_validation=lambda it, m: seen.append(it))
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

    from minimaskrcnn.config import get_preset
    from minimaskrcnn.data import load_sample
    from minimaskrcnn.training.checkpoint import load_checkpoint

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
