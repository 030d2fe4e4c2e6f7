"""Numerical gradient checks in float64 (Chainer's ``check_backward``, torch's ``gradcheck``).

A function under test is written as ``f(*inputs) -> (y, backward)`` where ``backward(dy)``
returns the gradients of ``<y, dy>`` with respect to the inputs (one array, or a tuple with one
entry per input; ``None`` for an input whose gradient is not checked) and may, as a side effect,
accumulate the gradients of some parameters into ``param.grad`` (layers do). The check builds the
scalar ``L = sum(y * w)`` with a random ``w`` and compares, for several seeds:

* ``directions=None`` (full mode): every element's central difference
  ``(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`` with the analytic ``dL/dx_i``;
* ``directions=k`` (random-direction mode, cheap): for k random unit-variance directions ``v``
  over all inputs and parameters together, ``<grad L, v>`` with
  ``(L(x + eps v) - L(x - eps v)) / (2 eps)``; two forwards per direction whatever the size.

A failure reports the seed, the input or parameter, the element (full mode) and both values.
Inputs must avoid kinks (ReLU at 0, ties of a max): use distinct values away from them.

Helpers: :func:`layer_function` turns a layer (``forward``/``backward`` protocol) into such an
``f`` and :func:`check_layer` converts the layer to float64 and checks its input and parameter
gradients; :func:`loss_function` does the same for a ``(loss, dloss_dinput)`` loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree (the message says where and by how much)."""


@dataclass
class GradcheckResult:
    """Worst disagreement seen: ``max_abs_err`` and ``max_rel_err`` (relative to the numeric
    value), and the number of comparisons made."""

    max_abs_err: float
    max_rel_err: float
    n_checks: int


def _as_tuple(g, n):
    if n == 1 and not isinstance(g, (tuple, list)):
        return (g,)
    g = tuple(g)
    if len(g) != n:
        raise ValueError(f"backward returned {len(g)} gradients for {n} inputs")
    return g


def gradcheck(f: Callable, inputs: Sequence, *, params: Sequence = (), eps: float = 1e-6,
              atol: float = 1e-6, rtol: float = 1e-4, directions: int | None = None,
              seeds: Sequence[int] = (0, 1, 2), raise_exception: bool = True) -> GradcheckResult:
    """Compare ``f``'s backward with float64 central differences.

    Args:
        f: ``f(*inputs) -> (y, backward)``, see the module docstring. It must be deterministic.
        inputs: float64 arrays (NumPy); they are perturbed in place and restored.
        params: :class:`~minimaskrcnn.nn.Param` objects (float64) whose ``.grad`` ``backward``
            accumulates; their grads are zeroed by the check before each analytic pass.
        eps: finite-difference step.
        atol, rtol: a comparison passes when ``|analytic - numeric| <= atol + rtol*|numeric|``.
        directions: ``None`` for the full element-wise check, else the number of random
            directions per seed.
        seeds: one random output weighting ``w`` (and directions) per seed.
        raise_exception: raise :class:`GradcheckError` on failure (else just return).

    Returns:
        :class:`GradcheckResult` with the worst errors seen.

    Raises:
        TypeError: an input or parameter is not float64.
        GradcheckError: a comparison failed (when ``raise_exception``).
    """
    inputs = list(inputs)
    params = list(params)
    for i, x in enumerate(inputs):
        if not isinstance(x, np.ndarray) or x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be a float64 NumPy array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
    for p in params:
        if p.data.dtype != np.float64:
            raise TypeError(f"gradcheck: parameter {p.name!r} must be float64, got {p.data.dtype}")
    arrays = inputs + [p.data for p in params]
    names = [f"input {i}" for i in range(len(inputs))] + [f"param {p.name or j!r}"
                                                           for j, p in enumerate(params)]
    y0, _ = f(*inputs)
    y_shape = np.shape(y0)
    worst = [0.0, 0.0, 0]
    failures: list[str] = []

    def loss(w) -> float:
        y, _ = f(*inputs)
        return float(np.sum(np.asarray(y, dtype=np.float64) * w))

    def compare(analytic, numeric, where):
        err = abs(analytic - numeric)
        rel = err / max(abs(numeric), 1e-300)
        worst[0], worst[1], worst[2] = max(worst[0], err), max(worst[1], rel), worst[2] + 1
        if err > atol + rtol * abs(numeric):
            failures.append(f"{where}: analytic {analytic:.10g} vs numeric {numeric:.10g} "
                            f"(abs err {err:.3g})")

    for seed in seeds:
        rng = np.random.default_rng(seed)
        w = rng.standard_normal(y_shape)
        for p in params:
            p.grad[...] = 0
        _, backward = f(*inputs)
        grads = list(_as_tuple(backward(w.astype(np.asarray(y0).dtype)), len(inputs)))
        grads += [p.grad.copy() for p in params]
        if directions is None:
            for a, g, name in zip(arrays, grads, names, strict=True):
                if g is None:
                    continue
                flat = a.reshape(-1)
                gflat = np.asarray(g, dtype=np.float64).reshape(-1)
                for i in range(flat.size):
                    old = flat[i]
                    flat[i] = old + eps
                    lp = loss(w)
                    flat[i] = old - eps
                    lm = loss(w)
                    flat[i] = old
                    compare(gflat[i], (lp - lm) / (2 * eps),
                            f"seed {seed}, {name}, element {np.unravel_index(i, a.shape)}")
        else:
            for d in range(directions):
                vs = [rng.standard_normal(a.shape) if g is not None else None
                      for a, g in zip(arrays, grads, strict=True)]
                analytic = sum(float(np.sum(np.asarray(g, np.float64) * v))
                               for g, v in zip(grads, vs, strict=True) if v is not None)
                for a, v in zip(arrays, vs, strict=True):
                    if v is not None:
                        a += eps * v
                lp = loss(w)
                for a, v in zip(arrays, vs, strict=True):
                    if v is not None:
                        a -= 2 * eps * v
                lm = loss(w)
                for a, v in zip(arrays, vs, strict=True):
                    if v is not None:
                        a += eps * v
                compare(analytic, (lp - lm) / (2 * eps), f"seed {seed}, direction {d}")
    result = GradcheckResult(worst[0], worst[1], worst[2])
    if failures and raise_exception:
        shown = "\n  ".join(failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise GradcheckError(f"gradcheck failed {len(failures)} of {worst[2]} comparisons "
                             f"(atol={atol}, rtol={rtol}, eps={eps}):\n  {shown}{more}")
    return result


def layer_function(layer) -> Callable:
    """``f(x) -> (y, backward)`` for a module with the ``forward``/``backward`` protocol."""

    def f(x):
        y, cache = layer.forward(x)
        return y, lambda dy: layer.backward(dy, cache)

    return f


def loss_function(loss: Callable, *args, **kwargs) -> Callable:
    """``f(x) -> (value, backward)`` for ``loss(x, *args, **kwargs) -> (value, dvalue_dx)``
    (``reduction="none"`` losses are element-wise, so ``backward(dy) = dy * dvalue_dx``; a
    per-row loss such as cross-entropy's ``(R,)`` broadcasts ``dy`` over the trailing axes)."""

    def f(x):
        value, grad = loss(x, *args, **kwargs)

        def backward(dy):
            dy = np.reshape(dy, np.shape(dy) + (1,) * (np.ndim(grad) - np.ndim(dy)))
            return dy * grad

        return value, backward

    return f


def check_layer(layer, x, *, check_params: bool = True, **kwargs) -> GradcheckResult:
    """Convert ``layer`` and ``x`` to float64 and gradient-check input and parameters.

    ``kwargs`` go to :func:`gradcheck` (``directions``, ``seeds``, tolerances).
    """
    layer.astype(np.float64)
    x = np.array(x, dtype=np.float64)
    params = layer.parameters() if check_params else ()
    return gradcheck(layer_function(layer), [x], params=params, **kwargs)
