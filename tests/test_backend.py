import numpy as np
import pytest

from minimaskrcnn import backend
from minimaskrcnn.backend import TierUnavailableError


def test_default_tier_for_numpy_is_numba(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.default_tier(np.zeros(3)) == "numba"


def test_env_var_forces_tier(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "numpy")
    assert backend.resolve_tier(None, np.zeros(3)) == "numpy"


def test_env_var_bad_value(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match="MINIMASKRCNN_TIER"):
        backend.resolve_tier(None, np.zeros(3))


def test_unknown_tier_name():
    with pytest.raises(ValueError, match="unknown tier 'opencl'"):
        backend.resolve_tier("opencl")


def test_numpy_and_numba_always_available():
    assert {"numpy", "numba"} <= set(backend.available_tiers())


@pytest.mark.skipif(backend.cuda_simulator_enabled(), reason="the simulator makes cuda available")
def test_unavailable_cuda_says_why():
    reason = backend.tier_unavailable_reason("cuda")
    if reason is None:
        pytest.skip("a real GPU is present")
    with pytest.raises(TierUnavailableError, match="no CUDA GPU"):
        backend.resolve_tier("cuda", np.zeros(3))


def test_unavailable_cupy_says_why():
    reason = backend.tier_unavailable_reason("cupy")
    if reason is None:
        pytest.skip("CuPy with a GPU is present")
    with pytest.raises(TierUnavailableError, match="CuPy"):
        backend.resolve_tier("cupy", np.zeros(3))


def test_missing_tier_module_is_clear():
    with pytest.raises(TierUnavailableError, match="has no 'numba' tier"):
        backend.implementation("minimaskrcnn.testing", "nothing", "numba", np.zeros(1))


def test_get_array_module_numpy():
    assert backend.get_array_module(np.zeros(2), 3.0) is np


def test_cli_help_and_tiers(capsys):
    from minimaskrcnn.cli import main

    assert main(["tiers"]) == 0
    out = capsys.readouterr().out
    assert "numpy  available" in out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_blas_threads_limits_and_restores():
    from threadpoolctl import threadpool_info

    def blas_counts():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    if not blas_counts():
        pytest.skip("no BLAS library visible to threadpoolctl")
    with backend.blas_threads(2):  # the session runs with 1 (conftest): start from 2
        assert set(blas_counts()) == {2}
        with backend.blas_threads(1):
            assert set(blas_counts()) == {1}
        assert set(blas_counts()) == {2}


def test_host_threads_follows_the_tier_and_the_environment(monkeypatch):
    x = np.zeros(3, np.float32)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv(backend.THREADS_ENV_VAR, "3")
    assert backend.host_threads(x) == 3
    monkeypatch.setenv(backend.ENV_VAR, "numpy")  # the reference stays serial
    assert backend.host_threads(x) == 1
    monkeypatch.delenv(backend.ENV_VAR)
    monkeypatch.delenv(backend.THREADS_ENV_VAR)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")  # what the MPI launcher sets: cores / ranks
    assert backend.host_threads(x) == 2
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert backend.host_threads(x) == 4  # the cores
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # mpiexec -n 2 on this machine: 2 each
    assert backend.host_threads(x) == 2
    monkeypatch.setenv("MPI_LOCALNRANKS", "8")
    assert backend.host_threads(x) == 1
    monkeypatch.delenv("MPI_LOCALNRANKS")
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(backend.THREADS_ENV_VAR, bad)
        with pytest.raises(ValueError, match=f"MINIMASKRCNN_THREADS='{bad}'"):
            backend.host_threads(x)


def test_map_chunks_slices_in_order_on_threads_with_one_blas_thread():
    import threading

    from threadpoolctl import threadpool_info

    def blas_counts():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    seen = []

    def fn(start, stop):
        seen.append((start, threading.get_ident(), blas_counts()))
        return list(range(start, stop))

    with backend.blas_threads(2):
        parts = backend.map_chunks(fn, 10, 3)
        after = blas_counts()
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]  # near-equal, contiguous, in order
    # the first slice in the calling thread, the others on the pool's threads
    assert {start: ident == threading.get_ident() for start, ident, _ in seen} == {
        0: True, 3: False, 6: False}
    if after:  # a BLAS visible to threadpoolctl: one thread inside, restored after
        assert all(counts == {1} for _, _, counts in seen) and after == {2}
    # serial: one call in the calling thread, for 1 thread or too few items
    seen.clear()
    assert backend.map_chunks(fn, 10, 1) == [list(range(10))]
    assert backend.map_chunks(fn, 10, 4, min_chunk=6) == [list(range(10))]
    assert backend.map_chunks(fn, 10, 4, min_chunk=5) == [list(range(5)), list(range(5, 10))]
    assert seen[0][1] == threading.get_ident() and seen[1][1] == threading.get_ident()


def test_map_chunks_raises_a_slice_error():
    def fn(start, stop):
        if start:
            raise ValueError(f"slice {start}:{stop} refused")
        return start

    with pytest.raises(ValueError, match="slice 5:10 refused"):
        backend.map_chunks(fn, 10, 2)


def test_map_chunks_inside_a_slice_runs_serially_in_that_slice():
    """A convolution inside the mask head's slice calls map_chunks again: the inner call is one
    slice in the worker's own thread (the pool is busy with the outer slices; waiting on it
    would deadlock), and the outer call still splits."""
    import threading

    def inner(start, stop):
        return (threading.get_ident(), list(range(start, stop)))

    def outer(start, stop):
        parts = backend.map_chunks(inner, 6, 2)
        return threading.get_ident(), parts

    caller = threading.get_ident()
    results = backend.map_chunks(outer, 4, 2)
    assert [ident == caller for ident, _ in results] == [True, False]  # first slice here
    for ident, parts in results:
        assert parts == [(ident, list(range(6)))]  # one inner slice, on the outer slice's thread
    # after the outer call, the caller splits again
    assert len(backend.map_chunks(inner, 6, 2)) == 2


def test_import_makes_openmp_threads_passive_unless_the_user_chose():
    """Numba's OpenMP threads must not spin beside the host threads that follow its kernels:
    importing the package sets OMP_WAIT_POLICY=PASSIVE, keeping a value already set."""
    import os
    import subprocess
    import sys

    code = "import os, minimaskrcnn; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "ACTIVE"
