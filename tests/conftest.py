import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minimaskrcnn.backend import blas_threads
from minimaskrcnn.testing.tiers import tier_params

# The first Numba call compiles; hypothesis must not time it.
settings.register_profile(
    "ci", deadline=None, max_examples=40, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "cudasim", deadline=None, max_examples=8, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("cudasim" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "ci")


@pytest.fixture(params=tier_params())
def tier(request):
    """Every kernel tier; unavailable ones are skipped with the backend's reason."""
    return request.param


@pytest.fixture(params=tier_params(("numba", "cuda", "cupy")))
def fast_tier(request):
    """The non-reference tiers, to compare against the NumPy reference."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """One BLAS thread for the whole run: the tests' matrix products are tiny, and a 2-thread
    OpenBLAS beside Numba's threads on a 2-core machine slowed some tests ~30x."""
    with blas_threads(1):
        yield


@pytest.fixture
def deadline():
    """A hang fails the test (SIGALRM after 300 s) instead of stalling CI: for the tests that
    feed hostile files to pycocotools or run whole trainings."""
    import signal

    def on_alarm(signum, frame):
        raise TimeoutError("test still running after 300 s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
