"""Data-parallel training over MPI ranks: the communicator and its collectives.

The scheme (ChainerMN and Horovod work this way)
------------------------------------------------
``mpiexec -n W minimaskrcnn train ...`` starts W processes (*ranks*), on one machine or several.
Every rank holds the whole model. For every global batch of ``B`` images (``B % W == 0``):

1. rank ``r`` runs forward and backward on its own contiguous share of the batch, the positions
   :func:`split_batch` returns (``r*B/W .. (r+1)*B/W - 1``);
2. the loss normalisers that torchvision takes over the *whole* batch (sampled anchors, sampled
   RoIs, foreground RoIs for the mask loss) are each rank's counts summed with
   :func:`allreduce_sum` *before* dividing, so a rank's loss is its share of the one-process loss
   (its terms divided by the global counts), not a per-rank mean;
3. :func:`allreduce_gradients` sums the gradients of all ranks in one fused ``MPI_Allreduce``
   (one flat buffer, not one call per parameter; :func:`bind_gradient_buffer` makes the
   gradients views of that buffer, so no copy is needed). The sum of the shares' gradients is the
   gradient of the one-process loss, so there is **no division by W**;
4. every rank applies the same SGD step to the same parameters, so the ranks stay equal (checked
   with :func:`check_parameters_equal`; :func:`broadcast_parameters` makes them equal at start).

If the random streams are per image (image ``i`` of iteration ``t`` draws its crop, flip and
RPN/RoI samples from a stream that depends only on the seed, ``t`` and the image's position, not
on which rank runs it), W ranks see exactly what one process sees, and their parameters equal
one process's up to float summation order (the allreduce adds the shares in another order than
one process accumulates them).

Rank 0 (``comm.is_main``) alone writes logs, checkpoints, figures and metrics. Evaluation
:func:`shard` s the images (contiguous blocks) and :func:`gather_to_main` concatenates the
detections on rank 0 in global order, so pycocotools sees the one-process list.

A rank that raises must not leave the others waiting in a collective forever: run the work inside
:func:`abort_on_error` (or :func:`install_excepthook`), which prints ``[rank r] Error: message``
on stderr and aborts the whole job (``MPI_Abort``).

One process
-----------
:func:`get_comm` returns a :class:`SingleProcessComm` (rank 0 of 1; every collective is the
identity or a copy) **without importing mpi4py** unless the process was started by an MPI
launcher, detected through the environment variables in :data:`MPI_LAUNCHER_ENV_VARS`
(MPICH's hydra ``mpiexec`` sets ``PMI_RANK``, ``PMI_SIZE``, ``PMI_FD``, ``MPI_LOCALNRANKS``,
``MPI_LOCALRANKID``; Open MPI sets ``OMPI_COMM_WORLD_*`` and ``PMIX_RANK``). A plain
``python`` / ``minimaskrcnn`` run therefore has no MPI import or initialisation cost, and its
code path is the same as under MPI with W = 1. ``MINIMASKRCNN_MPI=0`` forces the single-process
stub, ``MINIMASKRCNN_MPI=1`` forces MPI (a singleton ``MPI_Init`` without a launcher).

Install the MPI extra with ``pip install 'minimaskrcnn[mpi]'`` (``mpi4py`` and the ``mpich``
wheel, which brings its own ``mpiexec``; no system MPI and no root flags needed).

Arrays
------
Parameters are :class:`~minimaskrcnn.nn.Param` objects (``.data``/``.grad``); the functions take
``model`` (anything with ``named_parameters()``), ``model.named_parameters()`` (``(name, Param)``
pairs), a ``{name: Param}`` dict, or a list of Params. The collectives run on host NumPy buffers;
CuPy parameters are copied through the host (correct, not fast: no CUDA-aware MPI is assumed).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np

from minimaskrcnn.backend import get_array_module, to_numpy

#: Environment variables whose presence means "started by an MPI launcher" (any one suffices).
#: MPICH hydra (checked with the ``mpich`` wheel's ``mpiexec``): PMI_RANK, PMI_SIZE, PMI_FD,
#: MPI_LOCALNRANKS, MPI_LOCALRANKID; Intel MPI and Slurm's PMI2 also set PMI_RANK/PMI_SIZE;
#: Open MPI: OMPI_COMM_WORLD_SIZE/RANK; PMIx launchers (Open MPI 5, srun --mpi=pmix): PMIX_RANK;
#: MVAPICH2: MV2_COMM_WORLD_SIZE.
MPI_LAUNCHER_ENV_VARS = (
    "PMI_SIZE", "PMI_RANK", "PMI_FD", "MPI_LOCALNRANKS", "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
)

#: ``MINIMASKRCNN_MPI=0`` forces the single-process stub, ``=1`` forces MPI.
FORCE_ENV_VAR = "MINIMASKRCNN_MPI"


#: Seconds a failing rank waits between printing its message and ``MPI_Abort`` (so that
#: mpiexec forwards the message before it tears the job down).
ABORT_GRACE_S = 0.2


class ParameterMismatchError(RuntimeError):
    """The ranks' parameters (or their names, shapes, dtypes) differ."""


# --------------------------------------------------------------------------------------------
# Communicators
# --------------------------------------------------------------------------------------------


class Comm:
    """What the training code needs of a communicator (the interface of both implementations).

    Attributes:
        rank: this process's rank, ``0 <= rank < size``.
        size: the number of ranks W (1 for :class:`SingleProcessComm`).
        is_main: ``rank == 0``: the rank that writes logs, checkpoints, figures, metrics and
            shows the progress bar.
        is_distributed: ``size > 1``.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    # The primitives below are what the module functions use; each implementation defines them.
    def Allreduce_inplace(self, buf: np.ndarray) -> None:  # noqa: N802  (MPI's spelling)
        """Sum the C-contiguous NumPy array ``buf`` over all ranks, in place, every rank."""
        raise NotImplementedError

    def Bcast(self, buf: np.ndarray, root: int = 0) -> None:  # noqa: N802
        """Overwrite the C-contiguous NumPy array ``buf`` with ``root``'s, in place."""
        raise NotImplementedError

    def allgather(self, obj) -> list:
        """Every rank gets ``[obj of rank 0, obj of rank 1, ...]`` (pickled)."""
        raise NotImplementedError

    def gather(self, obj, root: int = 0) -> list | None:
        """``root`` gets ``[obj of rank 0, ...]`` (pickled); the other ranks get ``None``."""
        raise NotImplementedError

    def bcast(self, obj, root: int = 0):
        """Every rank gets ``root``'s ``obj`` (pickled)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank is here."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """Stop every rank of the job with exit status ``code`` (``MPI_Abort``); no return."""
        raise NotImplementedError


class SingleProcessComm(Comm):
    """Rank 0 of 1, without MPI: every collective is the identity (or wraps ``obj`` in a list)."""

    rank = 0
    size = 1

    def Allreduce_inplace(self, buf):  # noqa: N802
        pass

    def Bcast(self, buf, root=0):  # noqa: N802
        _check_root(root, 1)

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root=0):
        _check_root(root, 1)
        return [obj]

    def bcast(self, obj, root=0):
        _check_root(root, 1)
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)


class MPIComm(Comm):
    """An ``mpi4py`` communicator (``MPI.COMM_WORLD`` by default) behind the :class:`Comm` API.

    Attributes:
        mpi_comm: the ``mpi4py.MPI.Comm`` itself, for anything not wrapped here.
    """

    def __init__(self, mpi_comm=None):
        from mpi4py import MPI  # noqa: PLC0415  (only under MPI: no import cost otherwise)

        self._MPI = MPI
        self.mpi_comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi_comm.Get_rank()
        self.size = self.mpi_comm.Get_size()

    def Allreduce_inplace(self, buf):  # noqa: N802
        self.mpi_comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)

    def Bcast(self, buf, root=0):  # noqa: N802
        self.mpi_comm.Bcast(buf, root=root)

    def allgather(self, obj):
        return self.mpi_comm.allgather(obj)

    def gather(self, obj, root=0):
        return self.mpi_comm.gather(obj, root=root)

    def bcast(self, obj, root=0):
        return self.mpi_comm.bcast(obj, root=root)

    def barrier(self):
        self.mpi_comm.Barrier()

    def abort(self, code=1):
        sys.stderr.flush()
        sys.stdout.flush()
        # mpiexec forwards a rank's stderr asynchronously and stops forwarding once it kills the
        # job: without a short pause the message printed just before was sometimes lost.
        time.sleep(ABORT_GRACE_S)
        try:
            self.mpi_comm.Abort(code)
        finally:
            # MPICH's MPI_Abort can return on the calling rank (after telling mpiexec, which
            # then kills every rank); leave now, before Python prints a traceback or exits
            # cleanly through MPI_Finalize.
            os._exit(code)


def _check_root(root: int, size: int) -> None:
    if not 0 <= root < size:
        raise ValueError(f"root must be in [0, {size}), got {root}")


def launched_by_mpi(environ=None) -> bool:
    """True when an MPI launcher started this process (a variable of
    :data:`MPI_LAUNCHER_ENV_VARS` is set) or ``MINIMASKRCNN_MPI=1``; False for
    ``MINIMASKRCNN_MPI=0``. Reads ``os.environ`` unless ``environ`` is given; imports nothing."""
    env = os.environ if environ is None else environ
    force = env.get(FORCE_ENV_VAR, "").strip()
    if force in ("0", "1"):
        return force == "1"
    if force:
        raise ValueError(f"{FORCE_ENV_VAR} must be 0 or 1 (or unset), got {force!r}")
    return any(v in env for v in MPI_LAUNCHER_ENV_VARS)


_COMM: Comm | None = None


def get_comm(mpi: bool | None = None) -> Comm:
    """The process's communicator, created on the first call and returned again afterwards.

    Args:
        mpi: ``None`` (default): MPI (:class:`MPIComm` over ``COMM_WORLD``) if
            :func:`launched_by_mpi`, else :class:`SingleProcessComm` without importing mpi4py.
            ``True``/``False`` force the choice on the first call.

    Raises:
        ImportError: MPI was asked for (launcher detected or forced) but mpi4py is not
            installed; the message says how to install the ``mpi`` extra.
        ValueError: a later call forces a different kind than the one already created, or
            ``MINIMASKRCNN_MPI`` is not 0/1.
    """
    global _COMM
    want_mpi = launched_by_mpi() if mpi is None else bool(mpi)
    if _COMM is not None:
        if mpi is not None and want_mpi != isinstance(_COMM, MPIComm):
            raise ValueError(f"get_comm(mpi={mpi}): this process already uses {_COMM!r}")
        return _COMM
    if want_mpi:
        try:
            _COMM = MPIComm()
        except ImportError as e:
            raise ImportError(
                "this process was started by an MPI launcher (or MINIMASKRCNN_MPI=1) but mpi4py "
                "is missing: pip install 'minimaskrcnn[mpi]' (mpi4py and the mpich wheel)") from e
    else:
        _COMM = SingleProcessComm()
    return _COMM


def _comm(comm: Comm | None) -> Comm:
    return get_comm() if comm is None else comm


# --------------------------------------------------------------------------------------------
# Rank-0-only work
# --------------------------------------------------------------------------------------------


def main_only(fn):
    """Decorator: run ``fn`` on rank 0 only (of :func:`get_comm`); other ranks return ``None``.

    For writes (logs, checkpoints, figures). Never put a collective inside ``fn``: the other
    ranks would not join it and rank 0 would wait forever.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if get_comm().is_main:
            return fn(*args, **kwargs)
        return None

    return wrapper


# --------------------------------------------------------------------------------------------
# Splitting work
# --------------------------------------------------------------------------------------------


def shard_range(n: int, rank: int, size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)`` when split over ``size`` ranks.

    The first ``n % size`` ranks get ``n // size + 1`` items, the others ``n // size``; the
    shares, in rank order, concatenate to ``range(n)`` (so gathering in rank order restores
    the global order). Deterministic: depends on ``(n, rank, size)`` only.

    Raises:
        ValueError: ``n < 0``, ``size < 1`` or ``rank`` not in ``[0, size)``.
    """
    n, rank, size = int(n), int(rank), int(size)
    if n < 0:
        raise ValueError(f"shard: the count must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"shard: size must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"shard: rank must be in [0, {size}), got {rank}")
    q, extra = divmod(n, size)
    start = rank * q + min(rank, extra)
    return range(start, start + q + (rank < extra))


def shard(sequence_or_count, comm: Comm | None = None):
    """This rank's contiguous share of a sequence (or of ``range(count)``), see
    :func:`shard_range` for the split.

    Args:
        sequence_or_count: an ``int`` n (returns a ``range`` of indices), a list, tuple, range,
            string or NumPy array (returns the slice, same type), or any other object with
            ``len()`` and integer ``[i]`` (a dataset: returns the list of its items).
        comm: defaults to :func:`get_comm`.

    Raises:
        ValueError: a negative count.
        TypeError: the argument has no ``len()``.
    """
    comm = _comm(comm)
    if isinstance(sequence_or_count, (int, np.integer)):
        return shard_range(int(sequence_or_count), comm.rank, comm.size)
    seq = sequence_or_count
    r = shard_range(len(seq), comm.rank, comm.size)
    if isinstance(seq, (list, tuple, range, str, np.ndarray)):
        return seq[r.start:r.stop]
    return [seq[i] for i in r]


def split_batch(global_batch_size: int, comm: Comm | None = None) -> list[int]:
    """This rank's positions in a global batch: ``[k for k in range(B) if r*B/W <= k <
    (r+1)*B/W]`` for rank ``r`` of ``W`` (contiguous blocks of ``B/W`` positions).

    Raises:
        ValueError: ``B < 1``, or ``B % W != 0`` (the message names B and W and the valid
            batch sizes nearest to B).
    """
    comm = _comm(comm)
    b, w = int(global_batch_size), comm.size
    if b < 1:
        raise ValueError(f"the global batch size must be >= 1, got {b}")
    if b % w:
        lower = (b // w) * w
        options = ", ".join(str(x) for x in (lower, lower + w) if x > 0)
        raise ValueError(
            f"the global batch size {b} is not divisible by the number of MPI ranks {w}: every "
            f"rank must run the same number of images (use a batch size of {options}, or "
            f"another number of ranks)")
    per = b // w
    return list(range(comm.rank * per, (comm.rank + 1) * per))


# --------------------------------------------------------------------------------------------
# Parameters and gradients
# --------------------------------------------------------------------------------------------


def _named(params) -> list[tuple[str, object]]:
    """``[(name, Param)]`` from a module, a ``{name: Param}`` dict, (name, Param) pairs or
    Params (named by position)."""
    if hasattr(params, "named_parameters"):
        params = params.named_parameters()
    elif isinstance(params, dict):
        params = params.items()
    out = []
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) else (str(i), item)
        if not hasattr(p, "data") or not hasattr(p, "grad"):
            raise TypeError(f"parameter {name} is a {type(p).__name__}, not a Param "
                            "(an object with .data and .grad)")
        out.append((str(name), p))
    return out


def _groups(arrays: list) -> dict[np.dtype, list[int]]:
    """Indices of ``arrays`` grouped by dtype, in first-seen order (one fused buffer each)."""
    groups: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(np.dtype(a.dtype), []).append(i)
    return groups


def _flat_buffer(comm: Comm, purpose: str, dtype: np.dtype, n: int) -> np.ndarray:
    """A preallocated contiguous buffer of ``n`` elements kept on ``comm`` and reused."""
    cache = comm.__dict__.setdefault("_flat_buffers", {})
    key = (purpose, dtype.str, n)
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = np.empty(n, dtype=dtype)
    return buf


def _is_view_at(a, buf: np.ndarray, offset: int) -> bool:
    """``a`` is the C-contiguous view of ``buf`` starting at element ``offset``."""
    return (isinstance(a, np.ndarray) and a.base is buf and a.flags.c_contiguous
            and a.__array_interface__["data"][0] == buf.ctypes.data + offset * buf.itemsize)


def _fused(comm: Comm, purpose: str, arrays: list, op) -> None:
    """Copy ``arrays`` into one flat buffer per dtype, apply ``op(buf)`` in place, copy back.
    Arrays that already are views of the buffer at their offsets (:func:`bind_gradient_buffer`)
    are reduced where they lie, without the copies."""
    for dtype, idx in _groups(arrays).items():
        sizes = [int(arrays[i].size) for i in idx]
        buf = _flat_buffer(comm, purpose, dtype, sum(sizes))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        if all(_is_view_at(arrays[i], buf, o) for i, o in zip(idx, offsets, strict=True)):
            op(buf)  # bound: the arrays are the buffer
            continue
        if any(isinstance(arrays[i], np.ndarray) and arrays[i].base is buf for i in idx):
            buf = np.empty_like(buf)  # some arrays view the buffer elsewhere: do not overwrite
        o = 0
        for i, n in zip(idx, sizes, strict=True):
            buf[o:o + n] = to_numpy(arrays[i]).reshape(-1)
            o += n
        op(buf)
        o = 0
        for i, n in zip(idx, sizes, strict=True):
            a = arrays[i]
            a[...] = get_array_module(a).asarray(buf[o:o + n].reshape(a.shape))
            o += n


def _layout(named) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(p.data.shape), np.dtype(p.data.dtype).str) for name, p in named]


def _check_same_layout(named, comm: Comm, what: str) -> None:
    """Raise the same ParameterMismatchError on every rank if the ranks' parameter lists
    (names, shapes, dtypes) differ; nothing is raised on some ranks only (no hang)."""
    layouts = comm.allgather(_layout(named))
    ref = layouts[0]
    for r, lay in enumerate(layouts[1:], start=1):
        if lay == ref:
            continue
        for k, (a, b) in enumerate(zip(ref, lay, strict=False)):
            if a != b:
                raise ParameterMismatchError(
                    f"{what}: parameter {k} is {a[0]} {a[1]} {a[2]} on rank 0 but {b[0]} "
                    f"{b[1]} {b[2]} on rank {r}: the ranks did not build the same model")
        raise ParameterMismatchError(
            f"{what}: rank 0 has {len(ref)} parameters, rank {r} has {len(lay)}: the ranks did "
            "not build the same model")


def broadcast_parameters(named_params, comm: Comm | None = None, root: int = 0) -> None:
    """Overwrite every rank's parameter values with ``root``'s, in place (``p.data`` keeps its
    array object; gradients are untouched). One fused ``MPI_Bcast`` per dtype.

    Call once after building (or loading) the model, before the first iteration. Collective:
    every rank must call it with the same parameter list.

    Raises:
        ParameterMismatchError: the ranks' names/shapes/dtypes differ (raised on every rank).
        ValueError: ``root`` is not a rank.
    """
    comm = _comm(comm)
    _check_root(root, comm.size)
    if not comm.is_distributed:
        return
    named = _named(named_params)
    _check_same_layout(named, comm, "broadcast_parameters")
    _fused(comm, "bcast", [p.data for _, p in named], lambda buf: comm.Bcast(buf, root=root))


def _digest(name: str, a) -> str:
    a = np.ascontiguousarray(to_numpy(a))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{a.shape}|{a.dtype.str}|".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def parameter_digests(named_params) -> list[tuple[str, str]]:
    """``[(name, hex digest)]``: a 128-bit BLAKE2b of each parameter's name, shape, dtype and
    exact bytes (``p.data``; NaN payloads and -0.0 count as different values)."""
    return [(name, _digest(name, p.data)) for name, p in _named(named_params)]


def parameter_checksum(named_params) -> str:
    """One hex digest (BLAKE2b, 128 bits) of all parameters' names, shapes, dtypes and exact
    bytes, in order: equal on two ranks iff (up to hash collisions) their parameters are
    bit-identical. Local: no communication."""
    h = hashlib.blake2b(digest_size=16)
    for name, d in parameter_digests(named_params):
        h.update(f"{name}={d};".encode())
    return h.hexdigest()


def check_parameters_equal(named_params, comm: Comm | None = None) -> str:
    """Check that every rank holds bit-identical parameters; returns the checksum.

    Collective (one small pickled allgather of per-parameter digests); every rank reaches the
    same verdict, so on a mismatch every rank raises the same error (no rank is left waiting).

    Raises:
        ParameterMismatchError: names the first differing parameter (in
            ``named_parameters()`` order), the ranks that differ from rank 0 and how many
            parameters differ in all.
    """
    comm = _comm(comm)
    digests = parameter_digests(named_params)
    if not comm.is_distributed:
        return parameter_checksum(named_params)
    everyone = comm.allgather(digests)
    ref = everyone[0]
    bad_ranks = [r for r, d in enumerate(everyone) if d != ref]
    if bad_ranks:
        for r in bad_ranks:
            if [n for n, _ in everyone[r]] != [n for n, _ in ref]:
                raise ParameterMismatchError(
                    f"parameters differ across ranks: rank {r} has a different parameter list "
                    f"({len(everyone[r])} parameters) than rank 0 ({len(ref)})")
        differing = [k for k in range(len(ref)) if any(everyone[r][k] != ref[k]
                                                         for r in bad_ranks)]
        k = differing[0]
        ranks_k = [r for r in bad_ranks if everyone[r][k] != ref[k]]
        raise ParameterMismatchError(
            f"parameters differ across ranks: first differing parameter {ref[k][0]!r} (rank(s) "
            f"{', '.join(map(str, ranks_k))} differ from rank 0); {len(differing)} of {len(ref)} "
            "parameters differ. Broadcast the parameters from rank 0 at start "
            "(broadcast_parameters) and apply the same update on every rank")
    return parameter_checksum(named_params)


def allreduce_gradients(named_params, comm: Comm | None = None) -> None:
    """Sum every parameter's gradient over all ranks, in place (``p.grad`` keeps its array).

    One fused ``MPI_Allreduce(SUM)`` per call (per dtype; a float32 model makes exactly one):
    the gradients are copied into a flat, C-contiguous buffer of their dtype (preallocated on
    the first call and reused while the total size is the same), reduced in place, and copied
    back; after :func:`bind_gradient_buffer` the gradients are views of that buffer and the
    copies are skipped. No averaging: with loss normalisers summed across ranks (see the module docstring)
    the sum is the one-process gradient. Collective: every rank must call it with the same
    parameter list (same names, shapes, dtypes, order; not checked here, for speed: use
    :func:`check_parameters_equal` at start). A no-op for one process.
    """
    comm = _comm(comm)
    if not comm.is_distributed:
        return
    _fused(comm, "grad", [p.grad for _, p in _named(named_params)], comm.Allreduce_inplace)


def bind_gradient_buffer(named_params, comm: Comm | None = None) -> list[np.ndarray]:
    """Make every NumPy ``p.grad`` a view into the flat buffer :func:`allreduce_gradients`
    reduces (one buffer per dtype, parameters in order), keeping the gradients' values; then
    :func:`allreduce_gradients` reduces in place without copying in and out (on 2 ranks of the
    2-core machine the copies of nuclei-mini's 9.9 MB took longer than the allreduce itself).

    Call once after the model is built (and after any ``Module.astype``/``to``, which rebind
    ``p.grad``). Safe to skip: unbound (or later rebound) gradients are copied, with the same
    result. ``Param.zero_grad`` and the layers' ``grad +=`` keep the views. CuPy gradients are
    left as they are. Local (no communication); a no-op for one process.

    Returns:
        the flat buffers (views' owners), one per dtype; ``[]`` for one process.
    """
    comm = _comm(comm)
    if not comm.is_distributed:
        return []
    grads = [p for _, p in _named(named_params) if isinstance(p.grad, np.ndarray)]
    out = []
    for dtype, idx in _groups([p.grad for p in grads]).items():
        sizes = [int(grads[i].grad.size) for i in idx]
        values = [grads[i].grad.copy() for i in idx]  # the old grads may view an old buffer
        buf = _flat_buffer(comm, "grad", dtype, sum(sizes))
        o = 0
        for i, n, v in zip(idx, sizes, values, strict=True):
            view = buf[o:o + n].reshape(v.shape)
            view[...] = v
            grads[i].grad = view
            o += n
        out.append(buf)
    return out


def allreduce_sum(values, comm: Comm | None = None):
    """Sum small things over all ranks (loss sums, normaliser counts) in one allreduce.

    Args:
        values: a number (returns the sum as a Python ``int``/``float``; bools count as ints),
            a list/tuple of numbers or a NumPy array (returns a new ``np.ndarray`` of the same
            shape: ``int64`` for integer input, ``float64`` for float lists, the array's own
            dtype for a float array), or a ``{key: number}`` dict (returns a dict of sums, ``int``
            where the value was an int, else ``float``). Integer counts sum exactly (below
            2**53 in a dict mixing ints and floats, which is reduced as float64).
        comm: defaults to :func:`get_comm`.

    Raises:
        TypeError: non-numeric values.
    """
    comm = _comm(comm)
    if isinstance(values, dict):
        keys = list(values)
        sums = allreduce_sum([values[k] for k in keys], comm)
        return {k: (int(s) if isinstance(values[k], (int, np.integer)) else s)
                for k, s in zip(keys, sums.tolist(), strict=True)}
    scalar = np.ndim(values) == 0 and not isinstance(values, np.ndarray)
    a = np.asarray(to_numpy(values))
    if a.dtype.kind in "biu":
        a = a.astype(np.int64)
    elif a.dtype.kind == "f":
        if not isinstance(values, np.ndarray):
            a = a.astype(np.float64)
    else:
        raise TypeError(f"allreduce_sum: values must be numbers, got dtype {a.dtype}")
    buf = np.ascontiguousarray(a).copy()
    comm.Allreduce_inplace(buf.reshape(-1))
    return buf.item() if scalar else buf


def gather_to_main(items: Iterable, comm: Comm | None = None) -> list | None:
    """Concatenate the ranks' lists on rank 0, in rank order (pickled ``MPI_Gather``).

    With :func:`shard`'s contiguous shares, rank 0 gets the items in global order: e.g. each
    rank's detections for its shard of the images become the one-process detection list.

    Returns:
        rank 0: ``list`` (rank 0's items, then rank 1's, ...); other ranks: ``None``. One
        process: ``list(items)``.
    """
    comm = _comm(comm)
    mine = list(items)
    parts = comm.gather(mine, root=0)
    if not comm.is_main:
        return None
    return [x for part in parts for x in part]


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def error_line(exc: BaseException, rank: int) -> str:
    """``"[rank r] ExcType: message"`` (every line of a multi-line message prefixed)."""
    msg = str(exc).strip() or "(no message)"
    text = f"{type(exc).__name__}: {msg}"
    return "\n".join(f"[rank {rank}] {line}" for line in text.splitlines())


def _is_clean_exit(exc: BaseException) -> bool:
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


@contextlib.contextmanager
def abort_on_error(comm: Comm | None = None, *, code: int = 1) -> Iterator[Comm]:
    """Run a block so that an exception on any one rank stops the whole MPI job, with no hang.

    Under MPI (W > 1), an exception escaping the block (including ``KeyboardInterrupt`` and
    ``SystemExit`` with a non-zero code) prints :func:`error_line` (``[rank r] ExcType:
    message``, no traceback) to stderr and calls ``MPI_Abort(code)``: ``mpiexec`` kills every
    rank, including those blocked in a collective, and exits non-zero. Files written before
    (the last good checkpoint) stay as they are. One process: the exception propagates
    unchanged (today's behaviour, with its traceback). Yields the communicator::

        with abort_on_error() as comm:
            train(...)
    """
    comm = _comm(comm)
    try:
        yield comm
    except BaseException as e:
        if not comm.is_distributed or _is_clean_exit(e):
            raise
        print(error_line(e, comm.rank), file=sys.stderr, flush=True)
        comm.abort(code)
        raise  # not reached: abort() does not return


def install_excepthook(comm: Comm | None = None, *, code: int = 1) -> None:
    """Make an uncaught exception anywhere in this rank abort the whole job (as
    :func:`abort_on_error` does for a block). Does nothing for one process."""
    comm = _comm(comm)
    if not comm.is_distributed:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if _is_clean_exit(exc):
            return previous(exc_type, exc, tb)
        print(error_line(exc, comm.rank), file=sys.stderr, flush=True)
        comm.abort(code)

    sys.excepthook = hook


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth_bits_per_s: float,
                           latency_s: float = 25e-6) -> float:
    """Time of one ring allreduce of ``nbytes`` over ``ranks`` ranks (Patarasuk & Yuan 2009):
    ``2 (W-1)/W * nbytes * 8 / bandwidth + 2 (W-1) * latency`` (a reduce-scatter then an
    allgather, each W-1 steps of nbytes/W per link). 0 for one rank.

    Args:
        nbytes: bytes reduced (float32 gradients: 4 per parameter).
        ranks: W >= 1.
        bandwidth_bits_per_s: per-link bandwidth, e.g. ``10e9`` for 10 Gb/s Ethernet.
        latency_s: per-step latency (default 25 us, TCP over a data-centre Ethernet).

    Raises:
        ValueError: ``ranks < 1``, ``nbytes < 0``, bandwidth <= 0 or latency < 0.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if nbytes < 0 or not bandwidth_bits_per_s > 0 or latency_s < 0:
        raise ValueError(f"need nbytes >= 0, bandwidth > 0, latency >= 0; got {nbytes}, "
                         f"{bandwidth_bits_per_s}, {latency_s}")
    w = ranks
    return 2 * (w - 1) / w * nbytes * 8 / bandwidth_bits_per_s + 2 * (w - 1) * latency_s


__all__ = [
    "MPI_LAUNCHER_ENV_VARS", "FORCE_ENV_VAR", "ParameterMismatchError", "Comm",
    "SingleProcessComm", "MPIComm", "launched_by_mpi", "get_comm", "main_only", "shard_range",
    "shard", "split_batch", "broadcast_parameters", "parameter_digests", "parameter_checksum",
    "check_parameters_equal", "allreduce_gradients", "bind_gradient_buffer", "allreduce_sum",
    "gather_to_main", "error_line", "abort_on_error", "install_excepthook", "ring_allreduce_seconds",
]
