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
