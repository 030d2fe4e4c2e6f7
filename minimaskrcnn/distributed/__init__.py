"""Data-parallel processes over MPI: the communicator, the collectives, the consistency checks
and the launcher (Detectron2's ``utils/comm.py`` and ``engine/launch.py``).

    comm.py         Comm (mpi4py's spelling), SingleProcessComm, MPIComm, get_comm,
                    launched_by_mpi, main_only; abort_on_error / install_excepthook / error_line
    collectives.py  shard_range, shard, split_batch, balance_batch / assign_by_cost (splitting
                    the work; a batch by its crops' instances), RoIExchange /
                    plan_roi_transfers (the mask head's RoIs evened out); allreduce_gradients,
                    bind_gradient_buffer (one fused MPI_Allreduce); allreduce_sum,
                    gather_to_main, broadcast_parameters
    consistency.py  parameter_digests / parameter_checksum / check_parameters_equal,
                    ParameterMismatchError; first_disagreement, file_fingerprint (the ranks
                    started alike, on the same data)
    launch.py       usable_cores, find_mpiexec, choose_workers, relaunch_under_mpi

``mpiexec -n W minimaskrcnn train ...`` starts W ranks; each holds the whole model, runs its
share of every batch, and the gradients are summed (the scheme: :mod:`.collectives`). One
process (no launcher) gets :class:`SingleProcessComm` and never imports mpi4py. The floor just
above the backend: imports only :mod:`minimaskrcnn.backend`, NumPy and the standard library
(mpi4py on first use under MPI).
"""

from __future__ import annotations

from minimaskrcnn.distributed.collectives import (
    IMAGE_COST_IN_INSTANCES,
    RoIExchange,
    allreduce_gradients,
    allreduce_sum,
    assign_by_cost,
    balance_batch,
    bind_gradient_buffer,
    broadcast_parameters,
    gather_to_main,
    plan_roi_transfers,
    shard,
    shard_range,
    split_batch,
)
from minimaskrcnn.distributed.comm import (
    FORCE_ENV_VAR,
    IN_PLACE,
    MPI_LAUNCHER_ENV_VARS,
    SUM,
    Comm,
    MPIComm,
    SingleProcessComm,
    abort_on_error,
    error_line,
    get_comm,
    install_excepthook,
    launched_by_mpi,
    main_only,
)
from minimaskrcnn.distributed.consistency import (
    ParameterMismatchError,
    check_parameters_equal,
    file_fingerprint,
    first_disagreement,
    parameter_checksum,
    parameter_digests,
)
from minimaskrcnn.distributed.launch import (
    choose_workers,
    find_mpiexec,
    relaunch_under_mpi,
    usable_cores,
)

__all__ = [
    "FORCE_ENV_VAR", "IMAGE_COST_IN_INSTANCES", "IN_PLACE", "MPI_LAUNCHER_ENV_VARS", "SUM", "Comm",
    "MPIComm", "ParameterMismatchError", "RoIExchange", "SingleProcessComm", "abort_on_error",
    "allreduce_gradients", "allreduce_sum", "assign_by_cost", "balance_batch",
    "bind_gradient_buffer", "broadcast_parameters", "check_parameters_equal", "choose_workers",
    "error_line", "file_fingerprint", "find_mpiexec", "first_disagreement", "gather_to_main",
    "get_comm", "install_excepthook", "launched_by_mpi", "main_only", "parameter_checksum",
    "parameter_digests", "plan_roi_transfers", "relaunch_under_mpi", "shard", "shard_range",
    "split_batch", "usable_cores",
]
