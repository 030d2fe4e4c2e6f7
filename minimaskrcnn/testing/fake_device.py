"""A stand-in GPU for tests without one: arrays that behave like CuPy's where it matters for
device-generic code, and that record every host synchronisation.

:class:`DeviceArray` wraps a NumPy array and follows CuPy's rules:

- it refuses to become a NumPy array implicitly: ``np.asarray(x)``, ``np.concatenate([x])``,
  ``np.exp(x)``, ``host_array[x]``, ``host_array + x`` and ``host_array[...] = x`` raise
  :class:`HostArrayError` (CuPy raises ``TypeError`` for most of these; a few, such as
  ``np.concatenate``, it would dispatch to CuPy silently; either way model code must use
  ``xp = get_array_module(x)``);
- it refuses plain NumPy operands: ``x + host_array``, ``x[host_index]``,
  ``x[...] = host_array`` and ``xp.concatenate([x, host_array])`` raise too (scalars and 0-d
  arrays are fine; ``xp.asarray(host_array)`` is the one deliberate host -> device copy);
- everything that makes CuPy wait for the device is *recorded* in :data:`SYNCS` with the call
  site: ``x.get()`` (so ``backend.to_numpy``), ``float(x)``, ``int(x)``, ``bool(x)``,
  ``x.item()``, ``x.tolist()``, boolean-mask indexing, and ``xp.nonzero`` / ``flatnonzero`` /
  ``argwhere`` / ``unique`` (their output size lives on the device).

:func:`installed` puts the module in place of ``cupy`` (``sys.modules["cupy"]``), so that
:mod:`minimaskrcnn.backend` treats these arrays as CuPy arrays: ``get_array_module`` returns
this module, ``to_numpy`` calls ``.get()``, and every op dispatches to the ``"cupy"`` tier,
which is replaced by the op's Numba CPU function run on the unwrapped arrays (a device kernel
as far as the caller can tell: no synchronisation recorded inside). Reductions return 0-d
arrays, as CuPy's do, so ``float(loss)`` is a recorded synchronisation.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import operator
import sys
import traceback
import types
from pathlib import Path

import numpy as np

from minimaskrcnn import backend

SYNCS: list[tuple[str, str, str]] = []
"""``(model call site "file:function", innermost package call site, kind)`` per host sync."""


class HostArrayError(TypeError):
    """A device array met NumPy where CuPy would refuse it (or silently pull it to the host)."""


def _site() -> tuple[str, str]:
    """The innermost frame in ``minimaskrcnn/model/`` (else in the package), and the innermost
    frame in the package outside this module."""
    frames = [f for f in traceback.extract_stack()
              if "/minimaskrcnn/" in f.filename and not f.filename.endswith("fake_device.py")]

    def name(f):
        return f"{f.filename.split('/minimaskrcnn/')[-1]}:{f.name}"

    model = [f for f in frames if "/minimaskrcnn/model/" in f.filename]
    inner = name(frames[-1]) if frames else "?"
    return (name(model[-1]) if model else inner), inner


def record(kind: str) -> None:
    model, inner = _site()
    SYNCS.append((model, inner, kind))


def _unwrap(v, *, allow_host: bool = False, what: str = "operand"):
    if isinstance(v, DeviceArray):
        return v._a
    if isinstance(v, np.ndarray) and v.ndim > 0 and not allow_host:
        raise HostArrayError(f"a NumPy array {v.shape} {v.dtype} used as a device {what} "
                             "(copy it with xp.asarray first)")
    if isinstance(v, (list, tuple)) and not (isinstance(v, tuple) and hasattr(v, "_fields")):
        return type(v)(_unwrap(e, allow_host=allow_host, what=what) for e in v)
    if isinstance(v, dict):
        return {k: _unwrap(e, allow_host=allow_host, what=what) for k, e in v.items()}
    return v


def _wrap(v):
    if isinstance(v, np.ndarray):
        return DeviceArray(v)
    if isinstance(v, np.generic):
        return DeviceArray(np.asarray(v))
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(_wrap(e) for e in v)
    if isinstance(v, list):
        return [_wrap(e) for e in v]
    return v


def _index(key):
    """An index for the wrapped array; boolean device masks are recorded as a sync."""
    parts = key if isinstance(key, tuple) else (key,)
    for p in parts:
        if isinstance(p, DeviceArray) and p.dtype == bool:
            record("boolean-mask indexing")
    return _unwrap(key, what="index")


def _binary(op, reflected=False):
    def method(self, other):
        b = _unwrap(other)
        return _wrap(op(b, self._a) if reflected else op(self._a, b))
    return method


def _inplace(op):
    def method(self, other):
        op(self._a, _unwrap(other))
        return self
    return method


class DeviceArray:
    """A NumPy array pretending to live on a GPU (see the module docstring)."""

    __module__ = "cupy._fake"  # backend.is_cupy_array: the module name starts with "cupy"
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a

    # -- what CuPy refuses -------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise HostArrayError("implicit conversion of a device array to NumPy (np.asarray, an "
                             "np.* function, or indexing/assigning a NumPy array with it)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__" and not kwargs and any(isinstance(v, np.generic) for v in inputs):
            # ``np.float32(0.5) * x``: arithmetic with a NumPy scalar on the left (CuPy takes it)
            return _wrap(ufunc(*_unwrap(inputs)))
        raise HostArrayError(f"np.{ufunc.__name__} ({method}) called on a device array; use xp")

    def __array_function__(self, func, types_, args, kwargs):
        raise HostArrayError(f"np.{func.__name__} called on a device array; use xp")

    # -- synchronisations ----------------------------------------------------------------------
    def get(self):
        record("get (device -> host copy)")
        return self._a.copy()

    def item(self):
        record("item")
        return self._a.item()

    def tolist(self):
        record("tolist")
        return self._a.tolist()

    def __float__(self):
        record("float")
        return float(self._a)

    def __int__(self):
        record("int")
        return int(self._a)

    def __index__(self):
        record("index")
        return operator.index(self._a)

    def __bool__(self):
        record("bool")
        return bool(self._a)

    # -- plain array behaviour -------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _unwrap(value, what="value")

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ / __array_struct__: NumPy must not
            raise AttributeError(name)  # read the memory behind our back
        attr = getattr(self._a, name)
        if callable(attr):
            def method(*args, **kwargs):
                return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
            return method
        return _wrap(attr)

    __add__, __radd__ = _binary(operator.add), _binary(operator.add, True)
    __sub__, __rsub__ = _binary(operator.sub), _binary(operator.sub, True)
    __mul__, __rmul__ = _binary(operator.mul), _binary(operator.mul, True)
    __truediv__, __rtruediv__ = _binary(operator.truediv), _binary(operator.truediv, True)
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv), _binary(operator.floordiv, True)
    __mod__, __rmod__ = _binary(operator.mod), _binary(operator.mod, True)
    __pow__, __rpow__ = _binary(operator.pow), _binary(operator.pow, True)
    __matmul__, __rmatmul__ = _binary(operator.matmul), _binary(operator.matmul, True)
    __and__, __rand__ = _binary(operator.and_), _binary(operator.and_, True)
    __or__, __ror__ = _binary(operator.or_), _binary(operator.or_, True)
    __xor__, __rxor__ = _binary(operator.xor), _binary(operator.xor, True)
    __lshift__, __rshift__ = _binary(operator.lshift), _binary(operator.rshift)
    __lt__, __le__ = _binary(operator.lt), _binary(operator.le)
    __gt__, __ge__ = _binary(operator.gt), _binary(operator.ge)
    __eq__, __ne__ = _binary(operator.eq), _binary(operator.ne)
    __iadd__, __isub__ = _inplace(operator.iadd), _inplace(operator.isub)
    __imul__, __itruediv__ = _inplace(operator.imul), _inplace(operator.itruediv)
    __ior__, __iand__ = _inplace(operator.ior), _inplace(operator.iand)

    def __neg__(self):
        return DeviceArray(-self._a)

    def __pos__(self):
        return DeviceArray(+self._a)

    def __abs__(self):
        return DeviceArray(abs(self._a))

    def __invert__(self):
        return DeviceArray(~self._a)


# -- the module that stands in for cupy ------------------------------------------------------

_HOST_OK = {"asarray", "array", "ascontiguousarray"}  # the deliberate host -> device copies
_SYNCING = {"nonzero", "flatnonzero", "argwhere", "unique"}


def _function(name, fn):
    def call(*args, **kwargs):
        if name in _SYNCING:
            record(name)
        host_ok = name in _HOST_OK
        out = fn(*_unwrap(args, allow_host=host_ok), **_unwrap(kwargs, allow_host=host_ok))
        if host_ok and isinstance(out, np.ndarray):
            out = np.array(out, copy=True) if not any(
                isinstance(a, DeviceArray) for a in args[:1]) else out
        return _wrap(out)
    call.__name__ = name
    return call


class _FakeCupy(types.ModuleType):
    ndarray = DeviceArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type) and name not in ("errstate",):
            attr = _function(name, attr)
        setattr(self, name, attr)
        return attr

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def asnumpy(x):
        return x.get() if isinstance(x, DeviceArray) else np.asarray(x)

    @staticmethod
    def get_array_module(*arrays):
        return fake_cupy if any(isinstance(a, DeviceArray) for a in arrays) else np


fake_cupy = _FakeCupy("cupy")
fake_cupy.__file__ = __file__


@functools.cache
def cupy_tier_names(package: str) -> frozenset:
    """Names a ``<package>/cupy.py`` tier module defines or imports (read with ``ast``: the
    module imports CuPy, so it is not imported here); empty when there is no such module."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / "cupy.py" if spec and spec.origin else None
    if path is None or not path.exists():
        return frozenset()
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(names)


def _numba_instead_of_cupy(original):
    """``backend.implementation`` for device arrays: the op must have a ``"cupy"`` tier (the
    default for CuPy arrays; a missing one raises ``TierUnavailableError`` as on a GPU), and its
    Numba CPU function runs on the unwrapped arrays, results wrapped again (a kernel: nothing
    inside is recorded)."""
    def implementation(package, name, tier, *arrays):
        if not any(isinstance(a, DeviceArray) for a in arrays):
            return original(package, name, tier, *arrays)
        if (tier or "cupy") == "cupy" and name not in cupy_tier_names(package):
            raise backend.TierUnavailableError(
                f"{name} has no 'cupy' tier (missing in {package}.cupy): CuPy arrays cannot "
                "reach it with tier=None")
        fn = backend._lookup(package, name, "numba")

        def kernel(*args, **kwargs):
            return _wrap(fn(*_unwrap(args, allow_host=True), **_unwrap(kwargs, allow_host=True)))
        return kernel
    return implementation


@contextlib.contextmanager
def installed():
    """Install the fake ``cupy`` for the ``with`` block; :data:`SYNCS` is cleared on entry."""
    saved_module = sys.modules.get("cupy")
    saved_impl = backend.implementation
    sys.modules["cupy"] = fake_cupy
    backend.implementation = _numba_instead_of_cupy(saved_impl)
    backend._cupy_reason.cache_clear()
    SYNCS.clear()
    try:
        yield fake_cupy
    finally:
        backend.implementation = saved_impl
        if saved_module is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved_module
        backend._cupy_reason.cache_clear()
