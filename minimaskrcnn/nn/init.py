"""Weight initialisers with PyTorch's formulas (``torch.nn.init``), drawing from a Generator.

Each function fills its argument in place and returns it. The argument is an array (NumPy or
CuPy) or a :class:`~minimaskrcnn.nn.Param` (its ``.data`` is filled). Values are drawn on the host
from the ``np.random.Generator`` given (float64) and cast to the array's dtype, so a seed gives the
same weights on CPU and GPU.

Fans follow ``torch.nn.init._calculate_fan_in_and_fan_out``: for a weight of shape
``(d0, d1, *k)``, ``fan_in = d1 * prod(k)`` and ``fan_out = d0 * prod(k)``. For a conv weight
``(out, in, kh, kw)`` that is ``in*kh*kw`` / ``out*kh*kw``; for a Linear weight ``(out, in)`` it is
``in`` / ``out``; for a ConvTranspose2d weight ``(in, out, kh, kw)`` torch (and we) use the same
positional rule, so its "fan_in" is ``out*kh*kw``.
"""

from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.backend import get_array_module


def _array(t):
    return t.data if hasattr(t, "grad") and hasattr(t, "data") else t


def _fill(t, values: np.ndarray):
    a = _array(t)
    xp = get_array_module(a)
    a[...] = xp.asarray(values.astype(a.dtype, copy=False))
    return t


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def calculate_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape (at least 2 dimensions), torch's rule.

    Raises:
        ValueError: fewer than 2 dimensions.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with >= 2 dimensions, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch's recommended gain: 1 (linear/conv/sigmoid), 5/3 (tanh), sqrt(2) (relu),
    sqrt(2 / (1 + a^2)) (leaky_relu, ``a = param``, default 0.01), 3/4 (selu).

    Raises:
        ValueError: unknown nonlinearity.
    """
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(t, rng: np.random.Generator, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    return _fill(t, _check_rng(rng).uniform(a, b, size=_array(t).shape))


def normal_(t, rng: np.random.Generator, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std^2)."""
    return _fill(t, _check_rng(rng).normal(mean, std, size=_array(t).shape))


def constant_(t, value: float):
    """Fill with ``value``."""
    _array(t)[...] = value
    return t


def zeros_(t):
    """Fill with 0."""
    return constant_(t, 0.0)


def ones_(t):
    """Fill with 1."""
    return constant_(t, 1.0)


def kaiming_uniform_(t, rng: np.random.Generator, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu"):
    """He et al. 2015 uniform: U(-bound, bound), ``bound = gain * sqrt(3 / fan)``.

    ``gain = calculate_gain(nonlinearity, a)``; torch's defaults (``a=0``, ``leaky_relu``) give
    gain sqrt(2). PyTorch's default layer init is ``kaiming_uniform_(w, a=sqrt(5))``, i.e.
    ``bound = 1 / sqrt(fan_in)``.
    """
    fan = _fan(_array(t).shape, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(t, rng, -bound, bound)


def kaiming_normal_(t, rng: np.random.Generator, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu"):
    """He et al. 2015 normal: N(0, std^2), ``std = gain / sqrt(fan)``."""
    fan = _fan(_array(t).shape, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(t, rng, 0.0, std)


def default_layer_init_(weight, bias, rng: np.random.Generator, fan_in: int | None = None):
    """PyTorch's default for Conv/Linear: ``kaiming_uniform_(w, a=sqrt(5))`` and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``bias`` may be ``None``)."""
    kaiming_uniform_(weight, rng, a=math.sqrt(5))
    if bias is not None:
        if fan_in is None:
            fan_in, _ = calculate_fan_in_and_fan_out(_array(weight).shape)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, rng, -bound, bound)


def make_rng(rng) -> np.random.Generator:
    """The layers' ``rng`` argument: a Generator is used as is; ``None`` -> a fresh
    ``np.random.default_rng()`` (OS entropy, like torch's unseeded default; pass a Generator
    for reproducible weights); an ``int`` seeds a new Generator."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    return _check_rng(rng)
