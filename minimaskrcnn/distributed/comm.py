"""The communicator: which process this is, how many there are, and how they talk (Detectron2's
``utils/comm.py``).

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

Spelling
--------
The methods are mpi4py's (``Allreduce``, ``Bcast``, ``allgather``, ``gather``, ``bcast``,
``barrier``): upper case for buffers (C-contiguous NumPy arrays, no pickling), lower case for
Python objects (pickled). ``Allreduce(sendbuf, recvbuf, op=SUM)`` takes :data:`IN_PLACE` as
mpi4py does (``comm.Allreduce(IN_PLACE, buf, op=SUM)`` sums ``buf`` over the ranks where it lies),
so code written against :class:`Comm` reads as mpi4py code; :data:`IN_PLACE` and :data:`SUM` are
this module's stand-ins for ``MPI.IN_PLACE`` and ``MPI.SUM`` (mpi4py's own are accepted by
:class:`MPIComm` too), so that one process needs no mpi4py.

Faults
------
A rank that raises must not leave the others waiting in a collective forever: run the work
inside :func:`abort_on_error` (or :func:`install_excepthook`), which prints ``[rank r] Error:
message`` on stderr and aborts the whole job (``MPI_Abort``).

Install the MPI extra with ``pip install 'minimaskrcnn[mpi]'`` (``mpi4py`` and the ``mpich``
wheel, which brings its own ``mpiexec``; no system MPI and no root flags needed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator

import numpy as np

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


class _Constant:
    """A named sentinel (``IN_PLACE``, ``SUM``) that prints as its name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``comm.Allreduce(IN_PLACE, buf, op=SUM)``: reduce ``buf`` in place (mpi4py's ``MPI.IN_PLACE``).
IN_PLACE = _Constant("IN_PLACE")
#: The reduction of :meth:`Comm.Allreduce` (mpi4py's ``MPI.SUM``; the only one needed here).
SUM = _Constant("SUM")


# --------------------------------------------------------------------------------------------
# Communicators
# --------------------------------------------------------------------------------------------


class Comm:
    """What the training and evaluation code needs of a communicator (the interface of both
    implementations; the method names and signatures are mpi4py's).

    Attributes:
        rank: this process's rank, ``0 <= rank < size``.
        size: the number of ranks W (1 for :class:`SingleProcessComm`).
        is_main: ``rank == 0``: the rank that writes logs, checkpoints, figures, metrics and
            shows the progress bar (Detectron2's ``comm.is_main_process()``).
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

    # The primitives below are what the collectives use; each implementation defines them.
    def Allreduce(self, sendbuf, recvbuf: np.ndarray, op=SUM) -> None:  # noqa: N802  (mpi4py's)
        """Element-wise sum of ``sendbuf`` over all ranks into ``recvbuf``, on every rank
        (``MPI_Allreduce``). ``sendbuf`` is :data:`IN_PLACE` (``recvbuf`` is summed where it lies:
        what this package uses) or a C-contiguous NumPy array of ``recvbuf``'s shape and dtype.

        Raises:
            ValueError: ``op`` is not :data:`SUM`.
        """
        raise NotImplementedError

    def Bcast(self, buf: np.ndarray, root: int = 0) -> None:  # noqa: N802  (mpi4py's spelling)
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

    def alltoall(self, objs: list) -> list:
        """Rank ``r`` sends ``objs[d]`` to rank ``d`` and gets ``[what rank 0 sent to r, what
        rank 1 sent to r, ...]`` (pickled; ``MPI_Alltoall``). ``len(objs)`` must be ``size``."""
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

    def Allreduce(self, sendbuf, recvbuf, op=SUM):  # noqa: N802
        if op is not SUM:
            raise ValueError(f"Allreduce: only op=SUM is supported, got {op!r}")
        if sendbuf is not IN_PLACE:
            recvbuf[...] = sendbuf

    def Bcast(self, buf, root=0):  # noqa: N802
        check_root(root, 1)

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root=0):
        check_root(root, 1)
        return [obj]

    def bcast(self, obj, root=0):
        check_root(root, 1)
        return obj

    def alltoall(self, objs):
        if len(objs) != 1:
            raise ValueError(f"alltoall: one object per rank (1), got {len(objs)}")
        return list(objs)

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
        from mpi4py import MPI  # noqa: PLC0415  (optional; only under MPI: no import cost otherwise)

        self._MPI = MPI
        self.mpi_comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi_comm.Get_rank()
        self.size = self.mpi_comm.Get_size()

    def Allreduce(self, sendbuf, recvbuf, op=SUM):  # noqa: N802
        if op is not SUM and op != self._MPI.SUM:
            raise ValueError(f"Allreduce: only op=SUM is supported, got {op!r}")
        send = self._MPI.IN_PLACE if sendbuf is IN_PLACE else sendbuf
        self.mpi_comm.Allreduce(send, recvbuf, op=self._MPI.SUM)

    def Bcast(self, buf, root=0):  # noqa: N802
        self.mpi_comm.Bcast(buf, root=root)

    def allgather(self, obj):
        return self.mpi_comm.allgather(obj)

    def gather(self, obj, root=0):
        return self.mpi_comm.gather(obj, root=root)

    def bcast(self, obj, root=0):
        return self.mpi_comm.bcast(obj, root=root)

    def alltoall(self, objs):
        return self.mpi_comm.alltoall(objs)

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


def check_root(root: int, size: int) -> None:
    """Raise ``ValueError`` unless ``0 <= root < size``."""
    if not 0 <= root < size:
        raise ValueError(f"root must be in [0, {size}), got {root}")


def launched_by_mpi(environ=None) -> bool:
    """True when an MPI launcher started this process (a variable of
    :data:`MPI_LAUNCHER_ENV_VARS` is set) or ``MINIMASKRCNN_MPI=1``; False for
    ``MINIMASKRCNN_MPI=0``. Reads ``os.environ`` unless ``environ`` is given; imports nothing.

    Raises:
        ValueError: ``MINIMASKRCNN_MPI`` is set to something other than 0 or 1.
    """
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


def resolve(comm: Comm | None) -> Comm:
    """``comm``, or the process's (:func:`get_comm`) when ``None``: what every function taking
    an optional ``comm`` does first."""
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
# Faults
# --------------------------------------------------------------------------------------------


def error_line(exc: BaseException, rank: int) -> str:
    """``"[rank r] ExcType: message"`` (every line of a multi-line message prefixed)."""
    msg = str(exc).strip() or "(no message)"
    text = f"{type(exc).__name__}: {msg}"
    return "\n".join(f"[rank {rank}] {line}" for line in text.splitlines())


INTERRUPTED_CODE = 130
"""The exit status of a job stopped by Ctrl-C (128 + SIGINT, what a shell reports)."""


def _is_clean_exit(exc: BaseException) -> bool:
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


@contextlib.contextmanager
def abort_on_error(comm: Comm | None = None, *, code: int = 1) -> Iterator[Comm]:
    """Run a block so that an exception on any one rank stops the whole MPI job, with no hang.

    Under MPI (W > 1), an exception escaping the block (including ``SystemExit`` with a
    non-zero code) prints :func:`error_line` (``[rank r] ExcType: message``, no traceback) to
    stderr and calls ``MPI_Abort(code)`` (``KeyboardInterrupt``, Ctrl-C: ``[rank r]
    interrupted`` and ``MPI_Abort(130)``, :data:`INTERRUPTED_CODE`): ``mpiexec`` kills every
    rank, including those blocked in a collective, and exits non-zero. Files written before
    (the last good checkpoint) stay as they are. One process: the exception propagates
    unchanged (with its traceback). Yields the communicator::

        with abort_on_error() as comm:
            train(...)
    """
    comm = resolve(comm)
    try:
        yield comm
    except BaseException as e:
        if not comm.is_distributed or _is_clean_exit(e):
            raise
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C: as one process says it, rc 130
            print(f"[rank {comm.rank}] interrupted", file=sys.stderr, flush=True)
            comm.abort(INTERRUPTED_CODE)
        print(error_line(e, comm.rank), file=sys.stderr, flush=True)
        comm.abort(code)
        raise  # not reached: abort() does not return


def install_excepthook(comm: Comm | None = None, *, code: int = 1) -> None:
    """Make an uncaught exception anywhere in this rank abort the whole job (as
    :func:`abort_on_error` does for a block). Does nothing for one process."""
    comm = resolve(comm)
    if not comm.is_distributed:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if _is_clean_exit(exc):
            return previous(exc_type, exc, tb)
        print(error_line(exc, comm.rank), file=sys.stderr, flush=True)
        comm.abort(code)

    sys.excepthook = hook
