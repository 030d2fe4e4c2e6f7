"""The network on a GPU, tested without one.

1. ``--device cuda`` without CuPy or a GPU fails with one clear line
   (``backend.device_module``).
2. The model code is device-generic: a training step (forward, backward, SGD step) and
   ``predict`` run on :mod:`minimaskrcnn.testing.fake_device`, a stand-in GPU whose arrays
   follow CuPy's rules. NumPy called on an activation (``np.concatenate(levels)``,
   ``np.zeros(...)`` filled from one, ``np.exp(logits)``, a host array indexed with a device
   one) raises ``HostArrayError`` there, where a real CuPy array would raise ``TypeError`` or
   be pulled to the host silently. Every host synchronisation (``to_numpy``, ``float(x)``,
   ``bool(x)``, boolean-mask indexing, ``nonzero``, ...) is recorded with its call site in
   ``model/``; the sites must be exactly those listed in docs/kernels.md ("The network on a
   GPU: where the host syncs"), mirrored in :data:`TRAIN_SYNCS` and :data:`PREDICT_SYNCS`:
   a new one fails here until it is listed. Losses and gradients equal the NumPy run's
   (to float32 rounding: on the "device" a convolution is one matrix product instead of the
   CPU's blocks). Checkpoints are NumPy and load on either device.
3. Every op on the Numba CUDA tier (``MINIMASKRCNN_TIER=cuda``), under the simulator
   (``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda``) or on a GPU: the training step's
   losses and every parameter gradient equal the Numba CPU tier's.

Why a stand-in rather than a grep: a static scan for ``np.`` in ``model/`` cannot tell host
targets from activations and misses NumPy reached through helpers; the stand-in fails on
exactly the calls that would touch a device array, wherever they are.
"""

import contextlib
import dataclasses
import os
from collections import Counter

import numpy as np
import pytest

from minimaskrcnn import backend
from minimaskrcnn.checkpoint import load_checkpoint, save_checkpoint
from minimaskrcnn.model import build_model
from minimaskrcnn.testing import fake_device
from minimaskrcnn.testing.tiny import TINY, disc, target_from_masks, tiny_batch  # noqa: F401
from minimaskrcnn.training.optim import SGD

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN_SYNCS = {
    # model call site: what is read back (docs/kernels.md, "where the host syncs")
    "model/rpn.py:assign_anchor_targets": "box_iou / BoxCoder argument checks (finite), per image",
    "model/matcher.py:__call__": "the IoU matrix's finite check, per image and stage",
    "model/rpn.py:sample_anchors": "anchor labels -> the host sampler, once per batch",
    "model/rpn.py:rpn_losses": "the two loss values",
    "model/rpn.py:filter_proposals": "op checks, score threshold, batched_nms per image",
    "model/box_head.py:select_training_samples": "op checks; RoI labels -> the host sampler",
    "model/roi_heads.py:branch_forward": "pooler (box, mask): RoI checks, RoIs per level, "
                                         "roi_align checks",
    "model/box_head.py:fastrcnn_loss": "the two loss values",
    "model/mask_head.py:mask_targets": "project_masks_on_boxes argument checks",
    "model/mask_head.py:maskrcnn_loss": "mask_loss argument checks (and, in the GPU tiers, the "
                                        "value), in the forward only",
    "model/rpn.py:backward": "sparse RPN head backward: the sampled cells, per level",
    "model/roi_heads.py:branch_backward": "pooler backward: roi_align_backward argument checks",
}
PREDICT_SYNCS = {
    "model/rpn.py:filter_proposals": "small boxes, score threshold, NMS",
    "model/roi_heads.py:branch_forward": "pooler (box): RoI checks",
    "model/roi_heads.py:branch_predict": "pooler (mask): RoI checks",
    "model/box_head.py:postprocess_detections": "score threshold, small boxes, NMS",
    "model/transform.py:postprocess": "pasted masks -> host (chunk by chunk)",
    "model/mask_rcnn.py:predict": "detections -> host",
}


# --------------------------------------------------------------------------------------------
# --device cuda without a GPU


def test_device_module_names():
    assert backend.device_module("cpu") is np
    assert backend.device_name(np) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.device_module("tpu")


@pytest.mark.skipif(backend.tier_unavailable_reason("cupy") is None, reason="a GPU is here")
def test_device_cuda_without_a_gpu_is_one_clear_line():
    with pytest.raises(backend.TierUnavailableError) as e:
        backend.device_module("cuda")
    msg = str(e.value)
    assert msg.startswith("--device cuda needs CuPy and a CUDA GPU: ")
    assert "\n" not in msg and len(msg) > len("--device cuda needs CuPy and a CUDA GPU: ")


# --------------------------------------------------------------------------------------------
# the stand-in device catches NumPy on device arrays and records synchronisations


def test_fake_device_refuses_numpy_and_records_syncs():
    with fake_device.installed() as xp:
        x = xp.asarray(np.arange(4, dtype=np.float32))
        for call in (lambda: np.asarray(x), lambda: np.concatenate([x, x]), lambda: np.exp(x),
                     lambda: np.zeros(4, np.float32) + x, lambda: x + np.ones(4, np.float32),
                     lambda: np.zeros(4)[x.astype(np.int64)]):
            with pytest.raises(fake_device.HostArrayError):
                call()

        def host_assign():
            h = np.zeros(4, np.float32)
            h[...] = x
        with pytest.raises(fake_device.HostArrayError):
            host_assign()
        assert backend.get_array_module(x) is xp and backend.is_cupy_array(x)
        fake_device.SYNCS.clear()  # (numpy tried int(x) for the index above: recorded)
        y = xp.exp(x) * 2 + 1  # device arithmetic records nothing
        assert fake_device.SYNCS == []
        float(y.sum()), backend.to_numpy(y), y[y > 2], xp.nonzero(y)
        kinds = [k for _, _, k in fake_device.SYNCS]
        assert kinds == ["float", "get (device -> host copy)", "boolean-mask indexing", "nonzero"]


# --------------------------------------------------------------------------------------------
# a training step and predict on the stand-in device


def _step(model, images, targets, seed=1):
    proposals, losses, cache = model.forward_train(images, targets, np.random.default_rng(seed))
    model.zero_grad()
    model.backward(None, cache)
    return losses


def _sites(syncs):
    return Counter(site for site, _, _ in syncs)


def _compare_with_numpy(device, loss_rtol=1e-5, grad_rtol=2e-4):
    """A training step, an SGD step and predict on ``device`` (a context manager yielding the
    array module) against the same on NumPy (gradients to ``grad_rtol`` of each one's largest
    element); returns the host syncs of the step and of
    predict (recorded on the stand-in device only)."""
    images, targets = tiny_batch()
    cpu = build_model(TINY, np.random.default_rng(0))
    dev = build_model(TINY, np.random.default_rng(0))
    ref_losses = _step(cpu, images, targets)
    ref_grads = {n: p.grad.copy() for n, p in cpu.named_parameters()}
    ref_det = cpu.predict(images)
    with device as xp:
        dev.to(xp)
        assert dev.xp is xp and dev.device == "cuda"
        assert all(backend.is_cupy_array(p.data) and backend.is_cupy_array(p.grad)
                   for p in dev.parameters())
        fake_device.SYNCS.clear()
        losses = _step(dev, images, targets)  # host images and targets: copied once, inside
        train_syncs = list(fake_device.SYNCS)
        for name, p in dev.named_parameters():
            assert backend.is_cupy_array(p.grad), name
            ref = ref_grads[name]
            np.testing.assert_allclose(backend.to_numpy(p.grad), ref, rtol=grad_rtol,
                                       atol=grad_rtol * float(np.abs(ref).max()) + 1e-9,
                                       err_msg=name)
        opt = SGD(dev.named_parameters(), lr=0.01)
        opt.step()
        assert all(backend.is_cupy_array(b) for b in opt.buffers)
        assert all(isinstance(b, np.ndarray) for b in opt.state_dict()["buffers"].values())
        fake_device.SYNCS.clear()
        det = dev.predict(images)
        predict_syncs = list(fake_device.SYNCS)
        state = dev.state_dict()
    assert set(losses) == set(ref_losses)
    for k, v in ref_losses.items():
        assert isinstance(losses[k], float)
        assert losses[k] == pytest.approx(v, rel=loss_rtol, abs=1e-7), k
    for d, r in zip(det, ref_det, strict=True):
        assert set(d) == set(r)
        assert all(isinstance(d[k], np.ndarray) for k in ("boxes", "scores", "labels", "masks"))
        assert d["masks"].dtype == bool and d["boxes"].shape[0] == d["masks"].shape[0]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    return train_syncs, predict_syncs


def test_training_step_and_predict_on_a_device_equal_numpy():
    train_syncs, predict_syncs = _compare_with_numpy(fake_device.installed())
    observed, listed = set(_sites(train_syncs)), set(TRAIN_SYNCS)
    assert observed == listed, (
        f"host syncs of a training step: new {sorted(observed - listed)}, gone "
        f"{sorted(listed - observed)} (update docs/kernels.md and TRAIN_SYNCS)\n"
        + "\n".join(f"{s} <- {i}: {k}" for s, i, k in train_syncs))
    observed, listed = set(_sites(predict_syncs)), set(PREDICT_SYNCS)
    assert observed == listed, (
        f"host syncs of predict: new {sorted(observed - listed)}, gone "
        f"{sorted(listed - observed)} (update docs/kernels.md and PREDICT_SYNCS)\n"
        + "\n".join(f"{s} <- {i}: {k}" for s, i, k in predict_syncs))


@pytest.mark.gpu
@pytest.mark.skipif(backend.tier_unavailable_reason("cupy") is not None,
                    reason=str(backend.tier_unavailable_reason("cupy")))
def test_training_step_and_predict_on_cupy_equal_numpy():
    # a real GPU: other summation orders (cuBLAS, atomics), FMA in the IoU kernels: looser
    _compare_with_numpy(contextlib.nullcontext(backend.device_module("cuda")), loss_rtol=1e-3,
                        grad_rtol=2e-2)




def test_checkpoint_from_the_device_loads_on_either(tmp_path):
    images, targets = tiny_batch()
    with fake_device.installed() as xp:
        dev = build_model(TINY, np.random.default_rng(0)).to("cuda")
        assert dev.xp is xp
        opt = SGD(dev.named_parameters(), lr=0.01)
        _step(dev, images, targets)
        opt.step()
        path = str(tmp_path / "dev.npz")
        save_checkpoint(path, dev, opt, iteration=1)
        cpu = build_model(TINY, np.random.default_rng(5))
        cpu_opt = SGD(cpu.named_parameters(), lr=0.01)
        load_checkpoint(path, cpu, cpu_opt)
        back = build_model(TINY, np.random.default_rng(6)).to(xp)
        back_opt = SGD(back.named_parameters(), lr=0.01)
        load_checkpoint(path, back, back_opt)
        for (name, p), q, r in zip(dev.named_parameters(), cpu.parameters(), back.parameters(),
                                   strict=True):
            assert isinstance(q.data, np.ndarray) and backend.is_cupy_array(r.data), name
            np.testing.assert_array_equal(q.data, p.data.get())
            np.testing.assert_array_equal(r.data.get(), p.data.get())
        assert all(isinstance(b, np.ndarray) for b in cpu_opt.buffers)
        assert all(backend.is_cupy_array(b) for b in back_opt.buffers)
        cpu_opt.to(xp)
        assert all(backend.is_cupy_array(b) for b in cpu_opt.buffers)
        back.to("cpu")
        assert back.device == "cpu" and isinstance(back.backbone.conv1.weight.grad, np.ndarray)


# --------------------------------------------------------------------------------------------
# every op on the Numba CUDA tier (simulator or GPU) equals the CPU tiers


# Under the simulator every CUDA thread is a Python thread: the cost is the RoI ops' work (RoIs
# x channels x bins x samples), so the pooled sizes and the FPN width are cut too (4 channels,
# 4x4 box bins, 6x6 mask bins and so 12x12 masks: ~1/6 and ~1/11 of TINY's RoIAlign work; the
# simulated kernels of a step went from 5.7 s to 1.2 s of CPU time). Every op still runs, on
# RoIs of both heads.
SIM_CFG = dataclasses.replace(TINY, rpn_batch_size_per_image=16, rpn_pre_nms_top_n_train=40,
                              rpn_post_nms_top_n_train=12, box_batch_size_per_image=8,
                              fpn_channels=4, box_roi_size=4, mask_roi_size=6)


@pytest.mark.cuda
@pytest.mark.skipif(backend.tier_unavailable_reason("cuda") is not None,
                    reason=str(backend.tier_unavailable_reason("cuda")))
def test_training_step_with_every_op_on_the_cuda_tier(monkeypatch):
    images, targets = tiny_batch()
    images, targets = images[:1], targets[:1]
    ref = build_model(SIM_CFG, np.random.default_rng(0))
    monkeypatch.setenv(backend.ENV_VAR, "numba")
    ref_losses = _step(ref, images, targets)

    tiers = []
    resolve = backend.resolve_tier

    def recording(tier, *arrays):
        tiers.append(resolve(tier, *arrays))
        return tiers[-1]

    monkeypatch.setattr(backend, "resolve_tier", recording)
    monkeypatch.setenv(backend.ENV_VAR, "cuda")
    model = build_model(SIM_CFG, np.random.default_rng(0))
    losses = _step(model, images, targets)
    assert set(tiers) == {"cuda"} and len(tiers) > 10
    assert ref_losses["loss_mask"] > 0  # foreground RoIs: the mask ops ran on some
    for k, v in ref_losses.items():
        assert losses[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7, err_msg=name)
    assert os.environ[backend.ENV_VAR] == "cuda"


def test_keypoint_head_on_a_device_equals_numpy():
    """The keypoint head (the sixth stage) on the stand-in GPU: its targets, loss, backward and
    decoding run on the device's arrays and equal the NumPy run."""
    import dataclasses

    from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset
    from minimaskrcnn.data.transforms import standardize

    cfg = dataclasses.replace(TINY, num_keypoints=3, keypoint_head_convs=2,
                              keypoint_head_channels=8, num_classes=1)
    ds = keypoint_shapes_dataset(2, seed=0)
    images, targets = [], []
    for i in range(2):
        image, t = ds[i]
        images.append(standardize(image))
        targets.append(t)
    cpu = build_model(cfg, np.random.default_rng(0))
    dev = build_model(cfg, np.random.default_rng(0))
    ref = _step(cpu, images, targets)
    ref_det = cpu.predict(images)
    with fake_device.installed() as xp:
        dev.to(xp)
        losses = _step(dev, images, targets)
        grads = {n: backend.to_numpy(p.grad) for n, p in dev.named_parameters()}
        det = dev.predict(images)
    assert losses["loss_keypoint"] > 0
    for k, v in ref.items():
        assert losses[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    for n, p in cpu.named_parameters():
        np.testing.assert_allclose(grads[n], p.grad, rtol=2e-4,
                                   atol=2e-4 * float(np.abs(p.grad).max()) + 1e-9, err_msg=n)
    for d, r in zip(det, ref_det, strict=True):
        assert isinstance(d["keypoints"], np.ndarray)
        np.testing.assert_allclose(d["keypoints"], r["keypoints"], rtol=1e-5, atol=1e-4)
