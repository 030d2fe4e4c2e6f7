"""The divergence guard: every loss term, gradient, parameter and momentum buffer finite.

:func:`~minimaskrcnn.training.step.train_step` checks the loss terms before backward
(:func:`check_losses`), the gradients before the update (:func:`check_gradients`) and the
parameters and momentum buffers after it (:func:`check_update`); the loop checks the state once
more before writing a checkpoint (:func:`first_nonfinite_state`, and :func:`diverged_parameters`:
a finite state whose parameters have grown past :data:`DIVERGED_PARAMETER` is not saved either,
so that the last good checkpoint named is one a run can resume from). A failed check raises
:class:`NonFiniteLossError`, whose message names the iteration, the term and the last good
checkpoint (torchvision's ``train_one_epoch`` stops on a non-finite loss the same way, with a
message). On a GPU each check is one host synchronisation for all of its arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from minimaskrcnn.backend import get_array_module

__all__ = ["DIVERGED_PARAMETER", "NonFiniteLossError", "check_gradients", "check_losses",
           "check_update", "diverged_parameters", "first_nonfinite", "first_nonfinite_state",
           "largest_parameter", "last_good"]


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss term, a gradient, an updated parameter or momentum buffer
    became NaN or inf, or an op refused the values the model gave it. The message names the
    iteration, the term and the last good checkpoint.

    Attributes:
        losses: the loss terms of the failed iteration (``{name: float}``, NaN or inf among
            them where a term diverged), or ``None`` where the forward pass did not finish;
            the loop logs them with the error.
    """

    def __init__(self, message: str, losses: Mapping[str, float] | None = None):
        super().__init__(message)
        self.losses = None if losses is None else {k: float(v) for k, v in losses.items()}


def last_good(last_checkpoint: str | None) -> str:
    """The end of every guard message: ``"the last good checkpoint is <path>"``."""
    return (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
            else "no checkpoint was written yet")


def first_nonfinite(named_arrays: Iterable[tuple[str, object]]) -> str | None:
    """The name of the first array holding NaN or inf, or None. ``None`` and empty arrays are
    skipped. On a GPU one host synchronisation for all of them (a per-array ``bool`` would wait
    on each)."""
    named = [(n, a) for n, a in named_arrays if a is not None and a.size]
    if not named:
        return None
    xp = get_array_module(named[0][1])
    if bool(xp.stack([xp.isfinite(a).all() for _, a in named]).all()):
        return None
    return next(n for n, a in named if not bool(xp.isfinite(a).all()))


def first_nonfinite_state(model, optimizer) -> str | None:
    """``"parameter <name>"`` or ``"the momentum buffer of <name>"``: the first that is not
    finite, or None (``optimizer``: an :class:`~minimaskrcnn.training.optim.SGD`)."""
    bad = first_nonfinite((f"parameter {n}", p.data) for n, p in model.named_parameters())
    if bad is None:
        bad = first_nonfinite((f"the momentum buffer of {n}", b)
                              for n, b in zip(optimizer.names, optimizer.buffers, strict=True))
    return bad


def check_losses(losses: Mapping[str, object], iteration: int, last_checkpoint: str | None,
                 keys: Iterable[str]) -> float:
    """The total loss (a Python float: the sum of the terms), once every term is finite.

    Raises:
        ValueError: a term of ``keys`` is missing from ``losses`` (a model that breaks the
            stage contract).
        NonFiniteLossError: a term is NaN or inf (its ``losses``: these terms).
    """
    missing = [k for k in keys if k not in losses]
    if missing:
        raise ValueError(f"model.forward_train returned no {missing}")
    for k, v in losses.items():
        if not math.isfinite(float(v)):
            raise NonFiniteLossError(
                f"iteration {iteration}: loss term {k} is {float(v)}; training stopped before the "
                f"update, {last_good(last_checkpoint)}", losses)
    return float(sum(float(v) for v in losses.values()))


def check_gradients(model, iteration: int, last_checkpoint: str | None,
                    losses: Mapping[str, object] | None = None) -> None:
    """Raises :class:`NonFiniteLossError` naming the first parameter whose gradient is not
    finite (``losses``: the iteration's terms, carried by the error for the log)."""
    name = first_nonfinite((n, p.grad) for n, p in model.named_parameters())
    if name is not None:
        raise NonFiniteLossError(
            f"iteration {iteration}: the gradient of {name} is not finite; training "
            f"stopped before the update, {last_good(last_checkpoint)}", losses)


def check_update(model, optimizer, iteration: int, lr: float, last_checkpoint: str | None,
                 losses: Mapping[str, object] | None = None) -> None:
    """Raises :class:`NonFiniteLossError` naming the first parameter or momentum buffer that
    the update at ``lr`` made non-finite."""
    bad = first_nonfinite_state(model, optimizer)
    if bad is not None:
        raise NonFiniteLossError(
            f"iteration {iteration}: after the update (lr {lr:.3g}) {bad} is not finite; "
            f"training stopped, nothing saved, {last_good(last_checkpoint)}", losses)


def _largest(model) -> tuple[str, float]:
    return max(((n, float(get_array_module(p.data).abs(p.data).max()) if p.data.size else 0.0)
                for n, p in model.named_parameters()), key=lambda x: x[1], default=("-", 0.0))


def largest_parameter(model) -> str:
    """``"largest |parameter| <value> (<name>)"``: what a diverging model's error shows."""
    name, value = _largest(model)
    return f"largest |parameter| {value:.3g} ({name})"


DIVERGED_PARAMETER = 1e4
"""A parameter larger than this in magnitude (finite or not) marks a diverging run, whose state
is not saved as a good checkpoint. Trained weights stay far below it (the largest of the shipped
nuclei-mini-dsb2018 is 3.9); a run stopped by the guard had reached 8.7e29 (issue 27: resuming
from that checkpoint failed at once)."""


def diverged_parameters(model) -> str | None:
    """``"largest |parameter| <value> (<name>)"`` when a parameter is over
    :data:`DIVERGED_PARAMETER` in magnitude or not finite, else None (one pass over the
    parameters: called once per checkpoint, not per step)."""
    name, value = _largest(model)
    if math.isfinite(value) and value <= DIVERGED_PARAMETER:
        return None
    return f"largest |parameter| {value:.3g} ({name})"
