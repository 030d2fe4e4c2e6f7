"""Fixtures of the model tests."""

import pytest

from minimaskrcnn.backend import blas_threads


@pytest.fixture
def single_thread():
    """Run the test with one BLAS thread and one Numba thread, then restore both.

    The overfit test multiplies tiny matrices thousands of times: threads only add overhead,
    and on a shared 2-core machine a multi-threaded OpenBLAS made it ~30x slower (165 s instead
    of ~6 s).
    """
    import numba  # noqa: PLC0415  (tests may; the package never imports numba outside tiers)

    old_numba = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with blas_threads(1):
            yield
    finally:
        numba.set_num_threads(old_numba)
