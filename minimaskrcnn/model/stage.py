"""The protocol every stage of the network follows (backbone, FPN, RPN, RoI heads, and
:class:`~minimaskrcnn.model.MaskRCNN`, which chains them).

A stage is a :class:`~minimaskrcnn.nn.Module` (parameters, ``zero_grad``, ``state_dict``) with
three calls, the layer protocol at the size of a stage::

    outputs, losses, cache = stage.forward_train(inputs..., targets..., rng...)
    outputs = stage.predict(inputs...)
    d_inputs = stage.backward(d_outputs, cache, loss_weights=None)

- ``forward_train`` returns the stage's outputs, a dict of its losses (Python floats; empty for
  the backbone and the FPN) and a cache: a ``NamedTuple`` holding exactly what ``backward``
  reads, nothing kept on the stage, so two forwards may precede their two backwards (and one
  cache may serve several backwards).
- ``predict`` is inference: the same outputs, no targets, no cache.
- ``backward`` takes the gradient of the stage's differentiable outputs (``None`` where nothing
  flows back: the RPN's proposals and the RoI heads' sampled RoIs carry no gradient, as in
  torchvision) and the cache, and returns the gradient of the stage's inputs, accumulating
  every parameter gradient with ``+=``. Each loss's gradient is scaled there by its weight in
  ``loss_weights`` (``{loss name: weight}``; a missing name weighs 1, :func:`weighted`), so a
  loss is re-weighted without touching the forward. The RPN's and the box head's losses are
  differentiated again in backward from the cached predictions (their loss functions can skip
  the values, which on a GPU are host reads); the mask and keypoint losses are fused ops
  returning value and gradient in one pass, so their forward keeps the gradient.

Loss normalisers. Each loss is a mean over the elements that torchvision averages over for the
*whole batch*: the sampled anchors (RPN), the sampled RoIs (box head), the foreground RoIs' mask
pixels (mask head), the valid keypoints (keypoint head). A stage computes its local count and
passes it through ``sum_counts`` (a callable, default the identity) before dividing;
data-parallel training passes a sum over MPI ranks, so each rank's loss and gradient are its
share of the global ones and the ranks' sums equal one process's values (docs/architecture.md,
"More than one core").
"""

from __future__ import annotations

import functools
import operator

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
    """A loss's gradient scaled by its weight in ``loss_weights``: a new array, or ``grad``
    itself for a weight of 1 (weight-1 gradients stay bit for bit those of the loss). ``grad``
    is never written to, so a gradient kept in a cache serves any number of backwards.

    Raises:
        TypeError: ``loss_weights`` is neither ``None`` nor a dict.
    """
    w = loss_weight(loss_weights, name)
    return grad if w == 1.0 else grad * grad.dtype.type(w)


def sum_levels(*grads):
    """Per pyramid level, the sum of several stages' gradient lists (each ``[dP_l]``, the same
    shapes), added left to right: ``sum_levels(a, b, c)[l] = (a[l] + b[l]) + c[l]``."""
    return [functools.reduce(operator.add, level) for level in zip(*grads, strict=True)]


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
