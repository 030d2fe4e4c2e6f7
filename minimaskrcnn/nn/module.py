"""The layer protocol: :class:`Param`, :class:`Module`, :class:`Sequential` and :func:`add`.

Every layer is a :class:`Module` with two methods::

    y, cache = layer.forward(x)      # cache: exactly what backward needs, nothing kept on self
    dx = layer.backward(dy, cache)   # returns dL/dx; adds dL/dparam into each param.grad (+=)

Parameters are :class:`Param` objects (``.data``, ``.grad`` of the same shape and dtype,
``.name``). Gradients accumulate with ``+=`` and are zeroed explicitly with
:meth:`Module.zero_grad` (micrograd's rule), so a parameter used twice in one graph gets the sum
of both contributions and two forwards may precede their two backwards.

Children are found by walking a module's attributes in assignment order, as ``torch.nn.Module``
registers them: an attribute holding a :class:`Param` is a parameter, one holding a
:class:`Module` is a child, and a ``list``/``tuple`` of modules is a list of children named
``attr.0``, ``attr.1``, ... . :meth:`Module.named_parameters` therefore yields torch-style dotted
names (``layer1.0.conv1.weight``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from minimaskrcnn._validate import shape_str
from minimaskrcnn.backend import device_module, get_array_module, to_numpy


class Param:
    """A trainable array and its gradient.

    Attributes:
        data: the value, any shape, float32 by default (NumPy or CuPy).
        grad: ``dL/ddata``, same shape/dtype/array module as ``data``; starts at zeros and
            accumulates with ``+=`` until :meth:`zero_grad`.
        name: a human-readable name (set by the owning layer, e.g. ``"weight"``).
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name: str = ""):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self) -> None:
        """Set the gradient to zero in place (the array object is kept)."""
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Param({self.name or '?'}, shape={shape_str(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and every composite model part.

    Subclasses implement ``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> dx``. A
    composite module calls its children's ``forward`` in its own ``forward``, keeps their caches
    in its own cache, and calls their ``backward`` in reverse order (see the package docstring
    of :mod:`minimaskrcnn.nn` for a worked residual-block example).
    """

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy, cache):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward")

    # -- traversal ------------------------------------------------------------------------

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct children in attribute-assignment order; lists of modules as ``name.i``."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, Module) for v in value
            ):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def _own_params(self) -> Iterator[tuple[str, Param]]:
        for name, value in vars(self).items():
            if isinstance(value, Param):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Param]]:
        """Yield ``(dotted_name, Param)`` for this module's parameters, then its children's.

        A parameter shared by two modules is yielded once (first name wins), as in torch.
        """
        seen: set[int] = set()
        for name, p in self._walk(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _walk(self, prefix: str) -> Iterator[tuple[str, Param]]:
        dot = f"{prefix}." if prefix else ""
        for name, p in self._own_params():
            yield dot + name, p
        for name, child in self.named_children():
            yield from child._walk(dot + name)

    def parameters(self) -> list[Param]:
        """All parameters (each once), in :meth:`named_parameters` order."""
        return [p for _, p in self.named_parameters()]

    params = parameters  # the guide's name for the same thing

    def zero_grad(self) -> None:
        """Zero every parameter's gradient in place."""
        for p in self.parameters():
            p.zero_grad()

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        """``{dotted_name: data}`` (the arrays themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters (shapes must match; dtype of the parameter is kept).

        Raises:
            KeyError: ``strict`` and a name is missing or unexpected (the message lists them).
            ValueError: a shape differs (names the parameter and both shapes).
        """
        params = dict(self.named_parameters())
        if strict:
            missing = sorted(set(params) - set(state))
            unexpected = sorted(set(state) - set(params))
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {shape_str(p.shape)}, "
                                 f"the state has {shape_str(value.shape)}")
            xp = get_array_module(p.data)
            if xp is np:  # a CuPy value (a model moved to the GPU) is copied to the host
                value = to_numpy(value)
            p.data[...] = xp.asarray(value, dtype=p.data.dtype)

    def astype(self, dtype) -> Module:
        """Convert every parameter (data and grad) to ``dtype`` in place; returns ``self``.

        Layers refuse inputs whose dtype differs from their parameters' (no silent upcast), so
        a float64 gradient check first calls ``layer.astype(np.float64)``.
        """
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        return self

    def to(self, xp) -> Module:
        """Move every parameter (data and grad) to the array module ``xp`` (``numpy`` or
        ``cupy``), or to a device by name (``"cpu"``, ``"cuda"``:
        :func:`minimaskrcnn.backend.device_module`); returns self."""
        if isinstance(xp, str):
            xp = device_module(xp)
        for p in self.parameters():
            if xp is np:
                p.data, p.grad = to_numpy(p.data), to_numpy(p.grad)
            else:
                p.data, p.grad = xp.asarray(p.data), xp.asarray(p.grad)
        return self

    def __call__(self, x):
        """``layer(x)`` is ``layer.forward(x)``: returns ``(y, cache)``."""
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, child in children:
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"

    # -- helpers for layers -----------------------------------------------------------------

    def _check_input(self, x, ndim: int, channels: int | None, expected: str, weight=None):
        """Raise a clear error naming this layer when ``x`` has the wrong rank/channels/dtype."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{self!r}: input must be an array {expected}, got {type(x).__name__}")
        if x.ndim != ndim or (channels is not None and x.shape[1] != channels):
            raise ValueError(f"{self!r}: input must have shape {expected}, "
                             f"got {shape_str(x.shape)}")
        if weight is not None and x.dtype != weight.dtype:
            raise TypeError(f"{self!r}: input dtype {x.dtype} differs from the parameters' "
                            f"{weight.dtype} (convert one explicitly; no silent upcast)")


class Sequential(Module):
    """Children applied in order; the cache is the tuple of the children's caches.

    Parameter names are ``"0.weight"``, ``"1.bias"``, ... as in ``torch.nn.Sequential``.
    """

    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, tuple(caches)

    def backward(self, dy, cache):
        for layer, c in zip(reversed(self.layers), reversed(cache), strict=True):
            dy = layer.backward(dy, c)
        return dy


class Identity(Module):
    """``y = x`` (a shortcut branch with no projection)."""

    def forward(self, x):
        return x, None

    def backward(self, dy, cache):
        return dy


def add(a, b):
    """Sum two branches: ``y = a + b`` (same shape). Its backward sends ``dy`` to both.

    Returns:
        ``(y, None)``; there is nothing to cache: the gradient of each operand is ``dy`` itself.
    """
    if a.shape != b.shape:
        raise ValueError(f"add: branch shapes differ: {shape_str(a.shape)} vs {shape_str(b.shape)}")
    return a + b, None
