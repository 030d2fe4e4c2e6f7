"""train_step and the guard on a two-parameter model: the update, and each way a step stops
(a non-finite loss, gradient or update; an op refusing its inputs)."""

import math

import numpy as np
import pytest

from minimaskrcnn.nn.module import Module, Param
from minimaskrcnn.training.guard import NonFiniteLossError, first_nonfinite
from minimaskrcnn.training.optim import SGD
from minimaskrcnn.training.step import train_step

KEYS = ("loss_a", "loss_b")


class Quadratic(Module):
    """loss_a = 0.5 |w - x|^2 (mean over images), loss_b = b^2; ``fail`` switches in a failure."""

    loss_keys = KEYS

    def __init__(self, fail=None):
        self.w = Param(np.array([1.0, -2.0], np.float32), "w")
        self.b = Param(np.array([0.5], np.float32), "b")
        self.fail = fail

    def forward_train(self, images, targets, rngs):
        if self.fail == "refuse":
            raise ValueError("roi_align: boxes must be finite")
        x = np.mean(images, axis=0)
        r = self.w.data - x
        losses = {"loss_a": float(0.5 * r @ r), "loss_b": float(self.b.data[0] ** 2)}
        if self.fail == "nan_loss":
            losses["loss_b"] = math.nan
        return None, losses, r

    def backward(self, dy, cache):
        self.w.grad += cache
        self.b.grad += 2 * self.b.data
        if self.fail == "inf_grad":
            self.b.grad[0] = np.inf


def _step(model, lr=0.1, **kw):
    opt = SGD(model.named_parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    images = [np.array([0.0, 0.0], np.float32), np.array([2.0, 0.0], np.float32)]
    return opt, train_step(model, opt, images, [{}, {}], [None, None], iteration=7,
                           last_checkpoint="run/checkpoint_000005.npz", **kw)


def test_a_step_returns_the_losses_and_updates_the_parameters():
    model = Quadratic()
    _, (losses, loss) = _step(model)
    assert losses == {"loss_a": 0.5 * (0 + 4), "loss_b": 0.25} and loss == 2.25
    np.testing.assert_allclose(model.w.data, [1.0 - 0.1 * 0.0, -2.0 - 0.1 * -2.0])
    np.testing.assert_allclose(model.b.data, [0.5 - 0.1 * 1.0])


@pytest.mark.parametrize("fail, message, logged", [
    ("nan_loss", r"iteration 7: loss term loss_b is nan; training stopped before the update",
     True),
    ("inf_grad", r"iteration 7: the gradient of b is not finite", True),
    ("refuse", r"iteration 7: model\.forward_train failed \(ValueError: roi_align: boxes must "
               r"be finite\); at lr 0\.1 the model may have diverged \(largest \|parameter\| 2 "
               r"\(w\)\)", False),
])
def test_a_failed_step_names_the_iteration_the_term_and_the_checkpoint(fail, message, logged):
    model = Quadratic(fail)
    w = model.w.data.copy()
    with pytest.raises(NonFiniteLossError, match=message + r".*checkpoint_000005\.npz") as e:
        _step(model)
    assert (e.value.losses is not None) is logged  # what the loop writes to the log
    np.testing.assert_array_equal(model.w.data, w)  # stopped before the update


def test_an_update_that_overflows_stops_the_step():
    with pytest.raises(NonFiniteLossError, match=r"after the update \(lr 1e\+39\) parameter w is "
                                                 r"not finite; training stopped, nothing saved"):
        _step(Quadratic(), lr=1e39)


def test_a_refusal_on_a_calls_first_step_is_the_op_s_own_error():
    with pytest.raises(ValueError, match="boxes must be finite"):
        _step(Quadratic("refuse"), refusal_is_divergence=False)


def test_first_nonfinite_names_the_first_bad_array():
    ok, bad = np.ones(3), np.array([1.0, np.nan])
    assert first_nonfinite([("a", ok), ("b", None), ("c", np.zeros(0))]) is None
    assert first_nonfinite([("a", ok), ("b", bad), ("c", bad)]) == "b"
