"""One training iteration: forward, backward, gradient allreduce, guard, SGD update.

Detectron2's ``SimpleTrainer.run_step`` and the body of torchvision's ``train_one_epoch``, with
the data-parallel sums and the divergence guard written out. On each of W ranks (W = 1 without
``mpiexec``), with this rank's images of the batch::

    _, losses, cache = model.forward_train(images, targets, rngs,
                                           sum_counts=allreduce_sum,  # W > 1: global normalisers
                                           roi_exchange=RoIExchange)  # W > 1: mask RoIs evened
    losses = allreduce_sum(losses)                    # W > 1: the whole batch's loss terms
    guard: every loss term finite                     (guard.check_losses)
    model.zero_grad(); model.backward(None, cache)    # this rank's share of the gradient
    allreduce_gradients(model)                        # W > 1: one fused allreduce (the sum)
    guard: every gradient finite                      (guard.check_gradients)
    optimizer.step()                                  # at optimizer.lr (the loop's schedule)
    guard: every parameter and momentum buffer finite (guard.check_update)

The loss normalisers (sampled anchors, sampled RoIs, foreground RoIs) are summed over the ranks
before dividing, so the W ranks together compute the gradient of one process (up to float
summation order) and apply the same update. The mask head's foreground RoIs are evened out over
the ranks after pooling (:class:`~minimaskrcnn.distributed.RoIExchange`): which rank runs the
head on a RoI changes only the order of the sums.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.distributed import RoIExchange, allreduce_gradients, allreduce_sum
from minimaskrcnn.model import LOSS_KEYS
from minimaskrcnn.training.guard import (
    NonFiniteLossError,
    check_gradients,
    check_losses,
    check_update,
    largest_parameter,
    last_good,
)

__all__ = ["train_step"]

REFUSALS = (ValueError, FloatingPointError, OverflowError)
"""What an op raises when it refuses its inputs (an input check, an overflow): the values a
diverging model gives it, or a bug."""


def train_step(model, optimizer, images, targets, rngs, *, iteration: int, comm=None,
               last_checkpoint: str | None = None,
               refusal_is_divergence: bool = True) -> tuple[dict, float]:
    """Run one iteration on this rank's images and update the parameters in place.

    Args:
        model: a model of the stage contract (``forward_train(images, targets, rngs,
            sum_counts=...)`` -> ``(outputs, losses, cache)``, ``zero_grad``, ``backward(None,
            cache)``, ``named_parameters``; ``loss_keys`` if its terms are not
            :data:`~minimaskrcnn.model.LOSS_KEYS`).
        optimizer: an :class:`~minimaskrcnn.training.optim.SGD` over the model's parameters,
            its ``lr`` already this iteration's.
        images: this rank's N images, ``(3, h, w) float32`` each, standardised.
        targets: their N target dicts (``boxes (G, 4)``, ``labels (G,)``, ``masks``, ...).
        rngs: N ``np.random.Generator`` s, one per image (stream ``Stream.SAMPLING`` of its
            sample number).
        iteration: the iteration number (0-based), for the guard's messages.
        comm: the data-parallel communicator; ``None`` or one rank: no collective.
        last_checkpoint: the path the guard's messages name as the last good checkpoint.
        refusal_is_divergence: report an op's refusal (:data:`REFUSALS`) as a divergence; the
            loop passes ``False`` on a call's first iteration, whose parameters are a
            checkpoint's or the initial ones, so a refusal there is a bad input or a bug.

    Returns:
        ``(losses, loss)``: the loss terms ``{name: scalar}`` (summed over the ranks) and their
        sum as a Python float.

    Raises:
        NonFiniteLossError: a loss term, gradient, parameter or momentum buffer is not finite,
            or (``refusal_is_divergence``) an op refused the values; the message names the
            iteration, the term and ``last_checkpoint``, and ``.losses`` holds the terms (None
            if the forward pass failed).
        ValueError, FloatingPointError, OverflowError: an op refused its inputs and
            ``refusal_is_divergence`` is False; or the model returned no term of its loss keys.
    """
    distributed = comm is not None and comm.size > 1
    keys = getattr(model, "loss_keys", LOSS_KEYS)
    losses = None
    try:
        # NumPy's overflow / invalid warnings are left out: the guard checks every loss,
        # gradient, parameter and buffer itself and stops with one message
        with np.errstate(over="ignore", invalid="ignore"):
            if distributed:  # global normalisers; the mask head's RoIs evened out
                _, losses, cache = model.forward_train(
                    images, targets, rngs, sum_counts=lambda c: allreduce_sum(c, comm),
                    roi_exchange=RoIExchange(comm, len(images)))
                losses = allreduce_sum(losses, comm)  # each rank held its share
            else:
                _, losses, cache = model.forward_train(images, targets, rngs)
            loss = check_losses(losses, iteration, last_checkpoint, keys)
            model.zero_grad()
            model.backward(None, cache)
            del cache
            if distributed:
                allreduce_gradients(model, comm)  # one fused allreduce: the sum
            check_gradients(model, iteration, last_checkpoint, losses)
            optimizer.step()
            check_update(model, optimizer, iteration, optimizer.lr, last_checkpoint, losses)
    except REFUSALS as e:
        if not refusal_is_divergence:
            raise
        stage = "model.forward_train" if losses is None else "model.backward"
        raise NonFiniteLossError(
            f"iteration {iteration}: {stage} failed ({type(e).__name__}: {e}); at lr "
            f"{optimizer.lr:.3g} the model may have diverged ({largest_parameter(model)}); "
            f"training stopped, {last_good(last_checkpoint)}", losses) from e
    return losses, loss
