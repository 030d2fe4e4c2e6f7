"""Argument checks shared by every public op: clear errors that name the argument.

Each check raises before any kernel runs, so bad input never crashes deep inside Numba or CUDA
and never produces silent garbage. They accept NumPy and CuPy arrays alike.
"""

from __future__ import annotations

import numbers

import numpy as np

from minimaskrcnn.backend import get_array_module


def shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(name: str, x, *, ndim: int | None = None, last: int | None = None,
                float_only: bool = False, finite: bool = False, expected: str = ""):
    """Check rank, last dimension, dtype kind and finiteness of an array argument.

    Args:
        name: argument name used in the message (``"boxes"``).
        x: the array (NumPy or CuPy). Lists are refused: pass arrays.
        ndim: required rank, or ``None``.
        last: required size of the last axis, or ``None``.
        float_only: require a floating dtype (``TypeError`` otherwise).
        finite: refuse NaN and inf.
        expected: shape description for the message, e.g. ``"(N, 4)"``.

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: not an array, or not floating when ``float_only``.
        ValueError: wrong rank or last dimension, or non-finite values when ``finite``.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array{' of shape ' + expected if expected else ''}, "
                        f"got {type(x).__name__}")
    want = f" (expected {expected})" if expected else ""
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions{want}, got shape {shape_str(x.shape)}")
    if last is not None and (x.ndim == 0 or x.shape[-1] != last):
        raise ValueError(f"{name} must have last dimension {last}{want}, got shape {shape_str(x.shape)}")
    xp = get_array_module(x)
    if float_only and not xp.issubdtype(x.dtype, xp.floating):
        raise TypeError(f"{name} must be a floating-point array (float32 or float64), got {x.dtype}")
    if finite and x.size and xp.issubdtype(x.dtype, xp.floating) and not bool(xp.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_boxes(name: str, boxes, *, finite: bool = True):
    """``boxes`` must be a floating ``(N, 4)`` array ``[x1, y1, x2, y2]`` with finite values."""
    return check_array(name, boxes, ndim=2, last=4, float_only=True, finite=finite,
                       expected="(N, 4) float [x1, y1, x2, y2]")


def check_scalar(name: str, value, *, minimum=None, maximum=None, integer: bool = False):
    """A real number within ``[minimum, maximum]``; ``integer`` requires an integral value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def check_float_array(name: str, x, expected: str, ndim: int):
    """``x`` must be a finite float32/float64 array of ``ndim`` dimensions; returns it.

    Raises:
        TypeError: not an array, or another dtype. ValueError: wrong rank, NaN or inf.
    """
    check_array(name, x, ndim=ndim, float_only=True, finite=True, expected=expected)
    if np.dtype(x.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return x


def check_size(name: str, value) -> int:
    """``value`` must be an int >= 1 (a mask or heatmap side); returns it as ``int``.

    Raises:
        TypeError: not an int (bools refused). ValueError: below 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
