"""Starting the ranks: find ``mpiexec``, choose how many processes, and start a command again
under ``mpiexec`` (Detectron2's ``engine/launch.py``, for MPI instead of ``torch.multiprocessing``).

``minimaskrcnn demo`` uses these to run on every core of the machine without the user typing
``mpiexec``: it picks :func:`choose_workers` processes for :func:`usable_cores`, and when
:func:`find_mpiexec` finds one, :func:`relaunch_under_mpi` runs the same command line under
``mpiexec -n W`` (each rank then finds itself started by MPI,
:func:`~minimaskrcnn.distributed.comm.launched_by_mpi`, and does not start again). Nothing here
imports mpi4py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux, else ``os.cpu_count``;
    at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def find_mpiexec() -> str | None:
    """The ``mpiexec`` of this Python's environment (the ``mpich`` wheel puts it beside the
    interpreter), else the one on ``PATH``; ``None`` without one or without mpi4py (looked up,
    not imported)."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.access(local, os.X_OK) else shutil.which("mpiexec")


def choose_workers(requested: int | None, batch_size: int, cores: int) -> int:
    """How many data-parallel processes to run: ``requested``, or (``None``) the most that the
    ``cores`` allow and that divide ``batch_size`` (:func:`~minimaskrcnn.distributed.split_batch`
    checks it; the loop then deals each batch by its crops' instances,
    :func:`~minimaskrcnn.distributed.balance_batch`).

    Raises:
        ValueError: a requested number < 1 or one that does not divide the batch size.
    """
    if requested is not None:
        if requested < 1 or batch_size % requested:
            raise ValueError(f"the number of workers must divide the batch size {batch_size} "
                             f"(each rank runs an equal share of every batch), got {requested}")
        return requested
    return max(w for w in range(1, batch_size + 1) if batch_size % w == 0 and w <= max(cores, 1))


def relaunch_under_mpi(argv: list[str], workers: int, cores: int, *,
                       module: str = "minimaskrcnn") -> int:
    """Run ``python -m module *argv`` under ``mpiexec -n workers`` and wait for it; the Numba
    threads are split among the ranks (``NUMBA_NUM_THREADS = max(1, cores // workers)``).

    Args:
        argv: the command's arguments (without the program name), e.g. this process's.
        workers: the number of ranks W >= 1.
        cores: the cores to share among them (:func:`usable_cores`).
        module: the module ``python -m`` runs.

    Returns:
        mpiexec's exit status.

    Raises:
        FileNotFoundError: no ``mpiexec`` (:func:`find_mpiexec`).
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError("no mpiexec: pip install 'minimaskrcnn[mpi]' (mpi4py and the "
                                "mpich wheel)")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(1, cores // workers)))
    cmd = [mpiexec, "-n", str(workers), sys.executable, "-m", module, *argv]
    return subprocess.run(cmd, env=env, check=False).returncode
