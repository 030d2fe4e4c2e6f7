"""The protocol every stage of the network follows (backbone, FPN, RPN, box head, mask head,
and :class:`~minimaskrcnn.model.MaskRCNN`, which chains them).

A stage is a :class:`~minimaskrcnn.nn.Module` (parameters, ``zero_grad``, ``state_dict``) with
three calls, the layer protocol at the size of a stage::

    outputs, losses, cache = stage.forward_train(inputs..., targets..., rng...)
    outputs = stage.predict(inputs...)
    d_inputs = stage.backward(d_outputs, cache, loss_weights=None)

- ``forward_train`` returns the stage's outputs, a dict of its losses (Python floats; empty for
  the backbone and the FPN) and a cache: a ``NamedTuple`` holding exactly what ``backward``
  reads, nothing kept on the stage, so two forwards may precede their two backwards.
- ``predict`` is inference: the same outputs, no targets, no cache.
- ``backward`` takes the gradient of the stage's differentiable outputs (``None`` where nothing
  flows back: the RPN's proposals and the box head's sampled RoIs carry no gradient, as in
  torchvision) and the cache, and returns the gradient of the stage's inputs, accumulating
  every parameter gradient with ``+=``. Losses are differentiated here, in backward, each
  scaled by its weight in ``loss_weights`` (``{loss name: weight}``; a missing name weighs 1),
  so a loss is re-weighted without touching the forward.

Loss normalisers. Each loss is a mean over the elements that torchvision averages over for the
*whole batch*: the sampled anchors (RPN), the sampled RoIs (box head), the foreground RoIs' mask
pixels (mask head). A stage computes its local count and passes it through ``sum_counts`` (a
callable, default the identity) before dividing; data-parallel training passes a sum over MPI
ranks, so each rank's loss and gradient are its share of the global ones and the ranks' sums
equal one process's values (docs/architecture.md, "More than one core").
"""

from __future__ import annotations

from minimaskrcnn.nn.module import Module


def identity_count(count: float) -> float:
    """The default ``sum_counts``: one process holds the whole batch."""
    return count


def loss_weight(loss_weights, name: str) -> float:
    """The weight of loss ``name`` in ``loss_weights`` (``None`` or a dict); 1 when absent.

    Raises:
        TypeError: ``loss_weights`` is neither ``None`` nor a dict.
    """
    if loss_weights is None:
        return 1.0
    if not isinstance(loss_weights, dict):
        raise TypeError(f"loss_weights must be a dict {{loss name: weight}} or None, got "
                        f"{type(loss_weights).__name__}")
    return float(loss_weights.get(name, 1.0))


def weighted(grad, loss_weights, name: str):
    """Scale a loss's gradient by its weight in ``loss_weights``, in place, and return it (a
    weight of 1 leaves it untouched, so weight-1 gradients stay bit for bit those of the loss).

    Raises:
        TypeError: ``loss_weights`` is neither ``None`` nor a dict.
    """
    w = loss_weight(loss_weights, name)
    if w != 1.0:
        grad *= grad.dtype.type(w)
    return grad


class Stage(Module):
    """Base of the stages. A stage without losses (backbone, FPN) implements the layer protocol
    ``forward(x) -> (y, cache)`` / ``backward(dy, cache) -> dx`` and inherits ``forward_train``
    and ``predict`` from here; stages with losses override all three."""

    def forward_train(self, x):
        """``(outputs, {}, cache)``: the layer forward, no losses."""
        y, cache = self.forward(x)
        return y, {}, cache

    def predict(self, x):
        """The outputs of :meth:`forward`, the cache dropped."""
        return self.forward(x)[0]
