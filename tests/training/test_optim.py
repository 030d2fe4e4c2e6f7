"""SGD steps against values worked out by hand; the warm-up/multi-step schedule at its
boundaries."""

import numpy as np
import pytest

from minimaskrcnn.nn import Param
from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR, warmup_multistep_lr


def param(value):
    return Param(np.array([value], dtype=np.float64), "p")


def test_sgd_two_steps_by_hand():
    p = param(1.0)
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad[...] = 0.5
    opt.step()
    # d = 0.5 + 0.1*1 = 0.6; buf = d (first step); p = 1 - 0.1*0.6 = 0.94
    np.testing.assert_allclose(p.data, [0.94], rtol=1e-15)
    np.testing.assert_allclose(opt.buffers[0], [0.6], rtol=1e-15)
    opt.step()  # the gradient is not zeroed: still 0.5
    # d = 0.5 + 0.1*0.94 = 0.594; buf = 0.9*0.6 + 0.594 = 1.134; p = 0.94 - 0.1134 = 0.8266
    np.testing.assert_allclose(opt.buffers[0], [1.134], rtol=1e-15)
    np.testing.assert_allclose(p.data, [0.8266], rtol=1e-15)


def test_sgd_without_momentum_or_decay():
    p = param(2.0)
    opt = SGD([p], lr=0.5, momentum=0.0, weight_decay=0.0)
    p.grad[...] = 3.0
    opt.step()
    np.testing.assert_array_equal(p.data, [0.5])        # 2 - 0.5*3
    assert opt.buffers == [None]


def test_sgd_buffer_does_not_alias_grad():
    p = param(0.0)
    opt = SGD([p], lr=1.0, momentum=0.5, weight_decay=0.0)
    p.grad[...] = 1.0
    opt.step()                  # buf = 1, p = -1
    p.zero_grad()
    opt.step()                  # buf = 0.5*1 + 0 = 0.5, p = -1.5
    np.testing.assert_array_equal(p.data, [-1.5])


def test_sgd_float32_and_state_roundtrip():
    rng = np.random.default_rng(0)
    ps = [Param(rng.standard_normal((3, 2)).astype(np.float32), "a"),
          Param(rng.standard_normal(4).astype(np.float32), "b")]
    opt = SGD([("a", ps[0]), ("b", ps[1])], lr=0.01)
    for p in ps:
        p.grad[...] = rng.standard_normal(p.shape)
    opt.step()
    assert all(p.data.dtype == np.float32 for p in ps)
    assert all(b.dtype == np.float32 for b in opt.buffers)
    state = opt.state_dict()
    assert set(state["buffers"]) == {"a", "b"}
    twin = [Param(p.data.copy(), p.name) for p in ps]
    for t, p in zip(twin, ps, strict=True):
        t.grad[...] = p.grad
    opt2 = SGD([("a", twin[0]), ("b", twin[1])], lr=1.0)
    opt2.load_state_dict(state)
    opt.step()
    opt2.step()
    for t, p in zip(twin, ps, strict=True):
        np.testing.assert_array_equal(t.data, p.data)


def test_sgd_errors():
    with pytest.raises(ValueError, match="lr"):
        SGD([param(0.0)], lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="not a Param"):
        SGD([np.zeros(2)], lr=0.1)


def test_schedule_boundaries():
    kw = {"base_lr": 0.01, "milestones": (2000, 2600), "gamma": 0.1, "warmup_factor": 0.001,
          "warmup_iters": 200}
    assert warmup_multistep_lr(0, **kw) == pytest.approx(1e-5, rel=1e-12)
    # halfway: 0.001*(1 - 0.5) + 0.5 = 0.5005
    assert warmup_multistep_lr(100, **kw) == pytest.approx(0.005005, rel=1e-12)
    assert warmup_multistep_lr(199, **kw) == pytest.approx(0.01 * (0.001 / 200 + 199 / 200),
                                                           rel=1e-12)
    assert warmup_multistep_lr(200, **kw) == pytest.approx(0.01, rel=1e-12)
    assert warmup_multistep_lr(1999, **kw) == pytest.approx(0.01, rel=1e-12)
    assert warmup_multistep_lr(2000, **kw) == pytest.approx(0.001, rel=1e-12)
    assert warmup_multistep_lr(2599, **kw) == pytest.approx(0.001, rel=1e-12)
    assert warmup_multistep_lr(2600, **kw) == pytest.approx(0.0001, rel=1e-12)
    assert warmup_multistep_lr(5, 0.1, warmup_iters=10, warmup_factor=0.5,
                               warmup_method="constant") == pytest.approx(0.05)
    assert warmup_multistep_lr(0, 0.1, warmup_iters=0) == pytest.approx(0.1)
    for iteration in (0, 5000):  # checked during and after the warm-up
        with pytest.raises(ValueError, match="warmup_method"):
            warmup_multistep_lr(iteration, 0.1, warmup_method="cosine")


def test_scheduler_drives_optimizer():
    opt = SGD([param(0.0)], lr=0.02)
    sched = WarmupMultiStepLR(opt, milestones=(3,), gamma=0.5, warmup_factor=0.25,
                              warmup_iters=2)
    seen = []
    for _ in range(5):
        seen.append(opt.lr)
        assert opt.lr == sched.get_lr()
        sched.step()
    # t=0: 0.25; t=1: 0.25*0.5 + 0.5 = 0.625; t=2: 1; t>=3: 0.5
    np.testing.assert_allclose(seen, [0.005, 0.0125, 0.02, 0.01, 0.01], rtol=1e-12)
    sched.last_iter = 1                   # resume: the optimiser follows
    assert opt.lr == pytest.approx(0.0125)
    assert WarmupMultiStepLR(0.02, warmup_iters=2, warmup_factor=0.25)(0) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(0.1, milestones=(5, 3))
