"""The one dispatch point: which array module and which kernel tier run an op.

Tiers (fastest-available first for each array type):

=========  ======================================  ===========================================
tier       implementation                          runs on
=========  ======================================  ===========================================
"numpy"    ``<op>/reference.py``: readable loops    any machine (the specification)
"numba"    ``<op>/numba_cpu.py``: ``@njit``         any machine with Numba (default for NumPy)
"cuda"     ``<op>/numba_cuda.py``: ``@cuda.jit``    a CUDA GPU, or the simulator when the
                                                   environment has ``NUMBA_ENABLE_CUDASIM=1``
"cupy"     ``<op>/cupy.py``: ``cupy.RawKernel``     a real CUDA GPU with CuPy (default for CuPy)
=========  ======================================  ===========================================

Every public op takes a keyword ``tier=None``. ``None`` means: the value of the environment
variable ``MINIMASKRCNN_TIER`` if it is set, else the fastest tier available for the type of the
op's input arrays (``"numba"`` for NumPy arrays, ``"cupy"`` for CuPy arrays). A tier that cannot
run here raises :class:`TierUnavailableError` with one line that says why.

An op package (``minimaskrcnn/ops/nms/`` say) calls :func:`implementation` with its own package
name, the function name, the requested tier and its input arrays; the function with that name is
looked up in the tier's module, imported lazily so that ``import minimaskrcnn`` never imports
``numba.cuda`` or ``cupy``. Layers and models never import numba or cupy themselves.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from types import ModuleType

import numpy as np

TIERS: tuple[str, ...] = ("numpy", "numba", "cuda", "cupy")
"""All tier names, reference first."""

TIER_MODULES: dict[str, str] = {
    "numpy": "reference",
    "numba": "numba_cpu",
    "cuda": "numba_cuda",
    "cupy": "cupy",
}
"""Tier name -> module name inside an op package."""

ENV_VAR = "MINIMASKRCNN_TIER"
"""Environment variable that forces one tier for a whole run (e.g. ``MINIMASKRCNN_TIER=numpy``)."""


class TierUnavailableError(RuntimeError):
    """A requested kernel tier cannot run on this machine (the message says why)."""


# --------------------------------------------------------------------------------------------
# Array modules
# --------------------------------------------------------------------------------------------


def _cupy_module() -> ModuleType | None:
    try:
        import cupy  # noqa: PLC0415  (optional: only on a GPU machine)
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    return cupy


def is_cupy_array(x) -> bool:
    """True when ``x`` is a CuPy ndarray (checked without importing CuPy if it is not loaded)."""
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy`` (Chainer's helper).

    Layers are written once against ``xp = get_array_module(x)`` and run on both.
    """
    for a in arrays:
        if is_cupy_array(a):
            import cupy  # noqa: PLC0415  (optional: only on a GPU machine)

            return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """Copy a CuPy array to the host; return NumPy arrays (and array-likes) as ``np.ndarray``."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""Device names of :func:`device_module` (``--device`` of the CLI)."""


def device_module(name: str) -> ModuleType:
    """The array module of a device: ``"cpu"`` -> ``numpy``, ``"cuda"`` -> ``cupy``.

    The model, its optimiser state and each batch live in this module's arrays
    (``model.to(device_module(name))``, :func:`to_device`).

    Raises:
        ValueError: an unknown device name.
        TierUnavailableError: ``"cuda"`` without CuPy or without a visible CUDA GPU, with one
            line: ``--device cuda needs CuPy and a CUDA GPU: <reason>``.
    """
    if name == "cpu":
        return np
    if name != "cuda":
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(map(repr, DEVICES))}")
    reason = _cupy_reason()
    if reason is not None:
        raise TierUnavailableError(f"--device cuda needs CuPy and a CUDA GPU: {reason}")
    import cupy  # noqa: PLC0415  (optional: only on a GPU machine)

    return cupy


def device_name(xp: ModuleType) -> str:
    """``"cpu"`` for ``numpy``, ``"cuda"`` for ``cupy`` (the inverse of :func:`device_module`)."""
    return "cpu" if xp is np else "cuda"


def to_device(tree, xp: ModuleType):
    """``tree`` with every array moved to the array module ``xp``; dicts, lists and tuples are
    rebuilt, anything else (numbers, strings, ``None``) passes through.

    NumPy -> CuPy is one host-to-device copy per array (no host synchronisation); CuPy -> NumPy
    copies back (a synchronisation, see docs/kernels.md); an array already in ``xp`` is returned
    as it is (no copy). The training loop calls nothing of this itself: ``MaskRCNN`` copies
    each batch (images and targets) to its parameters' device once, in ``transform`` and
    ``check_targets``.
    """
    if isinstance(tree, dict):
        return {k: to_device(v, xp) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return type(tree)(*(to_device(v, xp) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, xp) for v in tree)
    if xp is np:
        return to_numpy(tree) if is_cupy_array(tree) else tree
    if isinstance(tree, np.ndarray):
        return xp.asarray(tree)
    return tree


def blas_threads(n: int | None):
    """Context manager limiting the BLAS library's threads (OpenBLAS, MKL) to ``n``.

    The layers' matrix products are many and small (32-256 rows): BLAS threads add overhead,
    and on a busy 2-core machine a 2-thread OpenBLAS spinning beside Numba's threads made a
    training iteration ~10x slower (docs/performance.md). The CLI runs every command under
    ``blas_threads(1)``; Numba kernels keep their own threads. ``None`` leaves BLAS as it is.
    Uses threadpoolctl (the library scikit-learn uses for the same purpose).
    """
    from threadpoolctl import threadpool_limits  # noqa: PLC0415  (loaded when limits are set)

    return threadpool_limits(limits=n, user_api="blas")


THREADS_ENV_VAR = "MINIMASKRCNN_THREADS"
"""Environment variable: how many host threads one image's work may use (see
:func:`host_threads`)."""


def host_threads(*arrays) -> int:
    """How many threads one image's work may be split across on the CPU (:func:`map_chunks`):
    the mask and keypoint heads' RoIs in ``predict``, a convolution forward's blocks, a large
    ``Linear`` forward's rows.

    1 when the op tier is the NumPy reference (``MINIMASKRCNN_TIER=numpy``: the specification
    stays plain and serial) and for CuPy arrays (the GPU parallelises itself). Otherwise
    ``$MINIMASKRCNN_THREADS`` if set, else ``$NUMBA_NUM_THREADS`` if set (the package's MPI
    launcher sets it to cores / ranks), else the cores this process may run on, divided by the
    ranks on this machine when an MPI launcher started it (``MPI_LOCALNRANKS``,
    ``OMPI_COMM_WORLD_LOCAL_SIZE``): ranks never oversubscribe the cores.

    Raises:
        ValueError: ``$MINIMASKRCNN_THREADS`` is not an integer >= 1.
    """
    if any(is_cupy_array(a) for a in arrays) or default_tier(*arrays) == "numpy":
        return 1
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV_VAR}={value!r} is not an integer >= 1")
        return int(value)
    numba_threads = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if numba_threads.isdigit() and int(numba_threads) >= 1:
        return int(numba_threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = [os.environ.get(v, "").strip() for v in ("MPI_LOCALNRANKS",
                                                      "OMPI_COMM_WORLD_LOCAL_SIZE")]
    ranks = max([int(v) for v in local if v.isdigit()] + [1])
    return max(1, (cores or 1) // ranks)


_worker = threading.local()  # .active is True in the pool's threads


def _mark_worker() -> None:
    _worker.active = True


@functools.cache
def _thread_pool(n: int):
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="minimaskrcnn",
                              initializer=_mark_worker)


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415  (loaded when limits are set)

    return ThreadpoolController()


def map_chunks(fn: Callable, n: int, threads: int, min_chunk: int = 1) -> list:
    """``[fn(0, b1), fn(b1, b2), ..., fn(bk, n)]``: ``fn`` on up to ``threads`` contiguous,
    near-equal slices ``[start, stop)`` of ``n`` items, run on a persistent thread pool with the
    BLAS library limited to one thread meanwhile (the products of a slice are too small for
    BLAS threads; the cores are the slices' instead). NumPy releases the GIL inside its BLAS
    calls and array loops, so slices of NumPy work run side by side.

    ``fn`` must only read shared state and write disjoint outputs (the layers' ``forward`` is
    such a function) and must not call Numba's parallel kernels (its default ``workqueue``
    threading layer is not thread-safe). With ``threads <= 1``, fewer than ``2 * min_chunk``
    items, or when called from inside a slice (a convolution inside the mask head's slice:
    the cores are already busy, and waiting on the same pool would deadlock), it is one call
    ``fn(0, n)`` in the calling thread. The results are in slice order; an exception in any
    slice is raised here. The first slice runs in the calling thread, the others on the pool.
    """
    k = max(1, min(int(threads), n // max(1, int(min_chunk))))
    if k == 1 or getattr(_worker, "active", False):
        return [fn(0, n)]
    bounds = [(i * n) // k for i in range(k + 1)]
    with _blas_controller().limit(limits=1, user_api="blas"):
        futures = [_thread_pool(k - 1).submit(fn, bounds[i], bounds[i + 1])
                   for i in range(1, k)]
        _worker.active = True  # the first slice runs here, as a slice (one handoff fewer)
        try:
            first = fn(bounds[0], bounds[1])
        finally:
            _worker.active = False
            wait(futures)  # every slice done before BLAS gets its threads back
    return [first] + [f.result() for f in futures]


# --------------------------------------------------------------------------------------------
# Tier availability
# --------------------------------------------------------------------------------------------


@functools.cache
def _numba_reason() -> str | None:
    try:
        import numba  # noqa: F401, PLC0415  (the probe: is Numba importable here)
    except Exception as e:  # pragma: no cover - numba is a dependency
        return f"Numba is not importable ({e})"
    return None


def cuda_simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.cache
def _cuda_reason() -> str | None:
    try:
        from numba import cuda  # noqa: PLC0415  (the probe: Numba's CUDA target, slow to import)
    except Exception as e:
        return f"numba.cuda is not importable ({e}); install numba-cuda"
    try:
        ok = cuda.is_available()
    except Exception as e:  # pragma: no cover - driver errors
        return f"the CUDA driver failed ({e})"
    if not ok:
        return (
            "no CUDA GPU was found (numba.cuda.is_available() is False); "
            "set NUMBA_ENABLE_CUDASIM=1 before starting Python to run this tier on the simulator"
        )
    return None


@functools.cache
def _cupy_reason() -> str | None:
    cupy = _cupy_module()
    if cupy is None:
        return "CuPy is not installed (pip install 'minimaskrcnn[gpu]')"
    try:
        ok = cupy.is_available()
    except Exception as e:  # pragma: no cover
        return f"CuPy is installed but CUDA failed ({e})"
    if not ok:
        return "CuPy is installed but no CUDA GPU is visible"
    return None


def tier_unavailable_reason(tier: str) -> str | None:
    """``None`` if ``tier`` can run here, else one line saying why not.

    Raises:
        ValueError: ``tier`` is not one of :data:`TIERS`.
    """
    _check_tier_name(tier)
    if tier == "numpy":
        return None
    if tier == "numba":
        return _numba_reason()
    if tier == "cuda":
        return _cuda_reason()
    return _cupy_reason()


def available_tiers() -> list[str]:
    """The tiers that can run on this machine, in :data:`TIERS` order."""
    return [t for t in TIERS if tier_unavailable_reason(t) is None]


def _check_tier_name(tier) -> None:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(map(repr, TIERS))}")


def default_tier(*arrays) -> str:
    """The tier used when ``tier=None``: ``$MINIMASKRCNN_TIER`` if set, else by array type.

    NumPy inputs -> ``"numba"`` (``"numpy"`` if Numba is missing); CuPy inputs -> ``"cupy"``.
    """
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        if forced not in TIERS:
            raise ValueError(
                f"{ENV_VAR}={forced!r} is not a tier; expected one of {', '.join(TIERS)}"
            )
        return forced
    if any(is_cupy_array(a) for a in arrays):
        return "cupy"
    return "numba" if _numba_reason() is None else "numpy"


def resolve_tier(tier: str | None, *arrays) -> str:
    """Turn a user's ``tier`` argument into a tier that can run, or raise.

    Raises:
        ValueError: unknown tier name.
        TierUnavailableError: the tier cannot run here (message says why), or CuPy arrays were
            given to a CPU tier.
    """
    if tier is None:
        tier = default_tier(*arrays)
    _check_tier_name(tier)
    reason = tier_unavailable_reason(tier)
    if reason is not None:
        raise TierUnavailableError(f"tier {tier!r} is unavailable: {reason}")
    if tier in ("numpy", "numba") and any(is_cupy_array(a) for a in arrays):
        raise TierUnavailableError(
            f"tier {tier!r} runs on the CPU but got CuPy arrays; pass NumPy arrays "
            "(cupy.asnumpy) or use tier='cuda' / 'cupy'"
        )
    return tier


def implementation(package: str, name: str, tier: str | None, *arrays) -> Callable:
    """Return the function ``name`` of ``package``'s module for the resolved tier.

    Args:
        package: the op package, e.g. ``"minimaskrcnn.ops.nms"`` (pass ``__name__``).
        name: the function's name inside the tier modules, e.g. ``"nms"``.
        tier: the user's ``tier`` argument (``None`` for the default).
        *arrays: the op's input arrays (used to pick the default and check placement).

    Raises:
        TierUnavailableError: the tier cannot run here, or the op has no such tier.
    """
    tier = resolve_tier(tier, *arrays)
    return _lookup(package, name, tier)


@functools.cache
def _lookup(package: str, name: str, tier: str) -> Callable:
    modname = f"{package}.{TIER_MODULES[tier]}"
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            raise TierUnavailableError(
                f"{package.rsplit('.', 1)[-1]}.{name} has no {tier!r} tier "
                f"(no module {modname})"
            ) from None
        raise
    fn = getattr(module, name, None)
    if fn is None:
        raise TierUnavailableError(f"{name} has no {tier!r} tier (missing in {modname})")
    return fn
