"""Losses, each returning ``(loss, dloss_dinput)``, numerically stable at any logit.

Semantics are ``torch.nn.functional``'s: ``reduction="mean"`` averages over the elements (over
the non-ignored rows for :func:`cross_entropy`), ``"sum"`` adds them, ``"none"`` returns the
element-wise losses (then the gradient is the element-wise derivative, so the gradient of
``sum(loss * g)`` is ``g * dloss_dinput``). A mean over zero elements is NaN, as in torch
(callers such as the mask loss handle "no foreground RoI" themselves). Reduced losses are 0-d
arrays of the input's dtype (NumPy or CuPy; ``float(loss)`` to print); the gradient has the
input's shape and dtype.

Used by: the RPN objectness (binary cross-entropy on anchor logits, ``(A_total,)``), the box
head classifier (cross-entropy on ``(R, K+1)`` scores), box regression (smooth L1 on
``(R, 4)`` deltas), and the mask head (binary cross-entropy on ``(R, M, M)`` mask logits).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn._validate import shape_str
from minimaskrcnn.backend import get_array_module

REDUCTIONS = ("mean", "sum", "none")


def _check(name: str, x, other=None, other_name: str = ""):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    xp = get_array_module(x)
    if not xp.issubdtype(x.dtype, xp.floating):
        raise TypeError(f"{name} must be a floating-point array, got {x.dtype}")
    if other is not None and tuple(other.shape) != tuple(x.shape):
        raise ValueError(f"{other_name} must have the shape of {name} {shape_str(x.shape)}, "
                         f"got {shape_str(other.shape)}")


def _reduce(losses, grad, reduction: str, count=None):
    """Apply torch's reduction to element losses and their element-wise gradient."""
    xp = get_array_module(losses)
    if reduction == "none":
        return losses, grad
    if reduction == "sum":
        return losses.sum(), grad
    if reduction == "mean":
        n = losses.size if count is None else count
        if n == 0:
            return xp.asarray(xp.nan, dtype=losses.dtype), grad
        return (losses.sum() / n).astype(losses.dtype), (grad / n).astype(grad.dtype)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _sigmoid(x):
    """Stable logistic function: never evaluates exp of a positive number."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def binary_cross_entropy_with_logits(logits, targets, reduction: str = "mean", weight=None):
    """``-w [t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]``, as
    ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Computed as ``max(x, 0) - x t + log1p(exp(-|x|))`` (softplus form, finite for any x);
    gradient ``w (sigmoid(x) - t)``.

    Args:
        logits: any shape, float (e.g. ``(R, M, M)`` mask logits).
        targets: same shape, values in [0, 1].
        reduction: "mean" (over all elements, weights included in the numerator only, as torch),
            "sum" or "none".
        weight: optional array broadcastable to the logits' shape.

    Returns:
        ``(loss, dloss_dlogits)``; ``loss`` is 0-d for "mean"/"sum", else logits-shaped.

    Raises:
        TypeError: logits not floating. ValueError: shape mismatch or unknown reduction.
    """
    _check("logits", logits, targets, "targets")
    xp = get_array_module(logits)
    t = targets.astype(logits.dtype, copy=False)
    losses = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
    grad = _sigmoid(logits) - t
    if weight is not None:
        losses = losses * weight
        grad = grad * weight
    return _reduce(losses.astype(logits.dtype, copy=False), grad.astype(logits.dtype, copy=False),
                   reduction)


def cross_entropy(logits, labels, reduction: str = "mean", ignore_index: int = -100):
    """Softmax cross-entropy with integer class labels, ``torch.nn.functional.cross_entropy``.

    ``loss_r = logsumexp(z_r) - z_r[labels_r]`` with the max subtracted (log-sum-exp trick);
    gradient ``softmax(z_r) - onehot(labels_r)``. Rows labelled ``ignore_index`` contribute
    nothing, and "mean" divides by the number of rows not ignored (torch's rule).

    Args:
        logits: ``(R, K+1)`` float class scores (column 0 = background in the box head).
        labels: ``(R,)`` integer in ``[0, K]`` or ``ignore_index``.
        reduction: "mean", "sum" or "none" (``(R,)``, 0 for ignored rows).

    Returns:
        ``(loss, dloss_dlogits (R, K+1))``.

    Raises:
        ValueError: wrong ranks, R mismatch, labels out of range, unknown reduction.
        TypeError: logits not floating or labels not integer.
    """
    _check("logits", logits)
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (R, K+1), got {shape_str(logits.shape)}")
    if not hasattr(labels, "dtype") or not xp.issubdtype(labels.dtype, xp.integer):
        raise TypeError(f"labels must be an integer array (R,), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits "
                         f"{shape_str(logits.shape)}, got {shape_str(labels.shape)}")
    # NumPy labels with device logits (the box head's host copy) are checked on the host: no
    # device synchronisation for the range check or the count
    host = labels if isinstance(labels, np.ndarray) else None
    if labels.size and bool(((labels < 0) | (labels >= logits.shape[1]))
                            [labels != ignore_index].any()):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] (or be ignore_index "
                         f"{ignore_index})")
    labels = xp.asarray(labels)
    valid = labels != ignore_index
    safe = xp.where(valid, labels, 0)
    rows = xp.arange(logits.shape[0])
    z = logits - logits.max(axis=1, keepdims=True)               # (R, K+1), max 0 per row
    ez = xp.exp(z)
    sez = ez.sum(axis=1, keepdims=True)
    losses = (xp.log(sez[:, 0]) - z[rows, safe]) * valid
    grad = ez / sez
    grad[rows, safe] -= 1
    grad *= valid[:, None]
    if reduction != "mean":
        count = None
    else:  # rows not ignored
        count = int((host != ignore_index).sum()) if host is not None else int(valid.sum())
    return _reduce(losses.astype(logits.dtype, copy=False), grad.astype(logits.dtype, copy=False),
                   reduction, count)


def smooth_l1_loss(input, target, beta: float = 1.0, reduction: str = "mean"):
    """Huber-like loss, exactly ``torch.nn.functional.smooth_l1_loss``:
    ``0.5 d^2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``, ``d = input - target``;
    ``beta = 0`` is the L1 loss. Gradient ``d / beta`` inside, ``sign(d)`` outside.

    Args:
        input: any shape float (e.g. ``(R, 4)`` predicted box deltas).
        target: same shape.
        beta: >= 0, the switch point (torch's default 1.0; Detectron2 uses 0 or 1/9 for RPN).
        reduction: "mean" (over elements), "sum" or "none".

    Returns:
        ``(loss, dloss_dinput)``.

    Raises:
        ValueError: shape mismatch, negative beta, unknown reduction.
    """
    _check("input", input, target, "target")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    xp = get_array_module(input)
    d = input - target.astype(input.dtype, copy=False)
    ad = xp.abs(d)
    if beta == 0:
        losses, grad = ad, xp.sign(d)
    else:
        b = input.dtype.type(beta)
        inside = ad < b
        losses = xp.where(inside, 0.5 * d * d / b, ad - 0.5 * b)
        grad = xp.where(inside, d / b, xp.sign(d))
    return _reduce(losses.astype(input.dtype, copy=False), grad.astype(input.dtype, copy=False),
                   reduction)
